# syntax=docker/dockerfile:1
# Two images from one file; the operator image has no torch.
#   docker build --target operator -t ghcr.io/kubetune/operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/kubetune/trainer:0.1.0 .   # trains and serves
# Both run as the numeric non-root user 65532 (PSS "restricted" needs runAsNonRoot to be checkable)
# with ENTRYPOINT ["kubetune"]; pods pass the subcommand as args.
#
# The trainer uses the same pinned Python base, not a CUDA base image: the Linux x86_64 torch
# wheel from pip's default index is the CUDA build and brings its own CUDA runtime, cuDNN and NCCL
# as nvidia-* wheels, matched to that torch. A CUDA base would add a second, possibly mismatched,
# copy of those libraries. The node only needs the NVIDIA driver (injected by the container toolkit
# when the device plugin allocates a GPU). Another CUDA build: --build-arg TORCH_PIP_ARGS="--index-url <PyTorch cuXXX index>".

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A passwd entry for 65532 so getpass/home lookups work; the pods still set runAsUser themselves.
RUN groupadd --gid 65532 kubetune \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/kubetune --shell /usr/sbin/nologin kubetune

# Build stages: install into a venv at /opt/kubetune, copied whole into the runtime stages so no
# build context or pip state reaches the images.
FROM base AS build-operator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubetune/ kubetune/
COPY operator/ operator/
COPY trainer/ trainer/
RUN python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --no-cache-dir ".[operator]"

FROM base AS build-trainer
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubetune/ kubetune/
COPY operator/ operator/
COPY trainer/ trainer/
# torch first, pinned; the constraint keeps the resolver from swapping it for another build.
# TORCH_PIP_ARGS is deliberately unquoted: it holds zero or more pip options.
# hadolint ignore=SC2086
RUN python -m venv /opt/kubetune \
 && echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt \
 && /opt/kubetune/bin/pip install --no-cache-dir ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}" \
 && /opt/kubetune/bin/pip install --no-cache-dir --constraint /tmp/torch-constraint.txt ".[trainer]" \
 && rm /tmp/torch-constraint.txt

FROM base AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="kubetune Kopf operator for FineTuneJob and AdapterDeployment (no torch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-operator /opt/kubetune /opt/kubetune
ENV PATH=/opt/kubetune/bin:${PATH} \
    HOME=/home/kubetune
WORKDIR /home/kubetune
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kubetune"]
CMD ["operator", "--all-namespaces"]

FROM base AS trainer
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="kubetune trainer and adapter server (CUDA torch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-trainer /opt/kubetune /opt/kubetune
ENV PATH=/opt/kubetune/bin:${PATH} \
    HOME=/home/kubetune \
    HF_HOME=/home/kubetune/.cache/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/kubetune
USER 65532:65532
ENTRYPOINT ["kubetune"]
CMD ["--help"]
