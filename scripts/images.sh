#!/usr/bin/env bash
# `make images`: build the Dockerfile's operator and trainer targets with buildah (no daemon, root,
# chroot isolation, vfs storage: works inside an unprivileged CI container).
#
# The base: $PYTHON_IMAGE when given; else the Dockerfile's official python image when a registry
# answers; else (offline) Debian bookworm from debootstrap (python3 3.11, python3-venv,
# ca-certificates, python -> python3), imported as a local image. Its rootfs tarball is cached
# under .tools/, so debootstrap runs once per machine.
# During the build only: the host's CA bundle and pip cache are mounted (read-only / read-write), so
# pip trusts a proxy's CA and reuses wheels `make install` already downloaded; neither is in a layer.
#
# Env: TARGETS ("operator trainer"), OPERATOR_IMAGE, TRAINER_IMAGE, PYTHON_IMAGE, CA_BUNDLE_FILE,
# PIP_CACHE_HOST, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, TORCH_PIP_ARGS, DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
TARGETS=${TARGETS:-operator trainer}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-localhost/kubetune-operator:${VERSION}}
TRAINER_IMAGE=${TRAINER_IMAGE:-localhost/kubetune-trainer:${VERSION}}
CA_BUNDLE_FILE=${CA_BUNDLE_FILE:-/etc/ssl/certs/ca-certificates.crt}
PIP_CACHE_HOST=${PIP_CACHE_HOST:-${HOME}/.cache/pip}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
OFFLINE_BASE=localhost/kubetune-python:3.11-bookworm
ROOTFS_TAR=.tools/debian-bookworm-python3.tar
BUILDAH=(buildah --storage-driver vfs)

log() { echo "images: $*" >&2; }

# The rootfs of a minimal Debian with Python 3.11, built once and kept as a tarball.
debootstrap_rootfs() {
  [ -f "${ROOTFS_TAR}" ] && return
  local root
  root=$(mktemp -d /var/tmp/kubetune-rootfs.XXXXXX)
  trap "rm -rf '${root}'" EXIT  # a failed debootstrap leaves nothing behind
  log "debootstrap bookworm (python3, python3-venv, ca-certificates) from ${DEBIAN_MIRROR}"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "${root}" "${DEBIAN_MIRROR}" >/dev/null
  ln -sf python3 "${root}/usr/bin/python"
  rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/var/log/*
  mkdir -p .tools
  tar -C "${root}" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "${ROOTFS_TAR}.part" .
  mv "${ROOTFS_TAR}.part" "${ROOTFS_TAR}"
  rm -rf "${root}"
  trap - EXIT
}

offline_base() {
  if ! "${BUILDAH[@]}" inspect --type image "${OFFLINE_BASE}" >/dev/null 2>&1; then
    debootstrap_rootfs
    local ctr
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "${ctr}" "${ROOTFS_TAR}" / >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd python3 "${ctr}"
    "${BUILDAH[@]}" commit --rm --quiet "${ctr}" "${OFFLINE_BASE}" >/dev/null
  fi
  echo "${OFFLINE_BASE}"
}

# The base image for --build-arg PYTHON_IMAGE.
base_image() {
  if [ -n "${PYTHON_IMAGE:-}" ]; then
    echo "${PYTHON_IMAGE}"
    return
  fi
  local official
  official=docker.io/library/$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
  # Docker Hub answers 401 to an anonymous /v2/ when it is reachable at all.
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 https://registry-1.docker.io/v2/ || true)" = 401 ] \
    && "${BUILDAH[@]}" pull --quiet "${official}" >/dev/null 2>&1; then
    echo "${official}"
  else
    log "no registry reachable: Debian bookworm base from debootstrap"
    offline_base
  fi
}

# Free space where the layers go, in GiB.
free_gib() {
  local root
  root=$("${BUILDAH[@]}" info --format '{{.store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers)
  while [ ! -d "${root}" ]; do root=$(dirname "${root}"); done
  df -Pk "${root}" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'
}

# vfs keeps every layer as a whole copy of the rootfs, and committing the trainer's one big RUN holds
# the working container, the layer blob and the new layer at once (~3 x 6.3 GB: 23.2 GiB measured).
# The previous image under the same tag, and working containers a killed build or test run left of it,
# would come on top of that: they go first (the rebuild replaces them anyway; --layers is off).
clear_previous() {
  local tag=$1 id image
  while read -r id image; do
    if [ "${image}" = "${tag}" ]; then "${BUILDAH[@]}" rm "${id}" >/dev/null 2>&1 || true; fi
  done < <("${BUILDAH[@]}" containers --format '{{.ContainerID}} {{.ImageName}}' 2>/dev/null || true)
  "${BUILDAH[@]}" rmi "${tag}" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
}

build() {
  local target=$1 tag=$2 base=$3 start=${SECONDS}
  clear_previous "${tag}"
  local need=2 free
  if [ "${target}" = trainer ]; then need=24; fi
  free=$(free_gib)
  if [ "${free}" -lt "${need}" ]; then
    log "warning: ${target} needs ~${need} GiB free for its layers (vfs), ${free} GiB left"
  fi
  local args=(--build-arg "PYTHON_IMAGE=${base}" --build-arg "VERSION=${VERSION}")
  if [ -f "${CA_BUNDLE_FILE}" ]; then
    args+=(-v "${CA_BUNDLE_FILE}:/run/kubetune-ca.crt:ro" --build-arg CA_BUNDLE=/run/kubetune-ca.crt)
  fi
  mkdir -p "${PIP_CACHE_HOST}"
  args+=(-v "${PIP_CACHE_HOST}:/var/cache/pip" --build-arg PIP_CACHE_DIR=/var/cache/pip)
  local name
  for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST TORCH_PIP_ARGS; do
    if [ -n "${!name:-}" ]; then args+=(--build-arg "${name}=${!name}"); fi
  done
  log "building ${target} -> ${tag} (base ${base})"
  # Optional ARGs left unset are meant (pip must not see an empty index URL): drop buildah's warning.
  if ! "${BUILDAH[@]}" bud --isolation chroot --quiet --target "${target}" --tag "${tag}" "${args[@]}" \
    --file Dockerfile . 2> >(grep -v 'build argument. Try adding' >&2) >/dev/null; then
    log "building ${target} failed after $((SECONDS - start)) s ($(free_gib) GiB free now)"
    return 1
  fi
  log "built ${tag} in $((SECONDS - start)) s ($(free_gib) GiB free after)"
}

main() {
  local base start=${SECONDS} target
  base=$(base_image)
  for target in ${TARGETS}; do
    case "${target}" in
      operator) build operator "${OPERATOR_IMAGE}" "${base}" ;;
      trainer) build trainer "${TRAINER_IMAGE}" "${base}" ;;
      *) log "unknown target ${target} (operator, trainer)"; exit 2 ;;
    esac
  done
  # Dangling intermediate images would double the vfs disk use on every rebuild.
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
  log "all images in $((SECONDS - start)) s"
  "${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' >&2
}

main "$@"
