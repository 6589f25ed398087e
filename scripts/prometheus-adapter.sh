#!/usr/bin/env bash
# Builds prometheus-adapter (sigs.k8s.io/prometheus-adapter, pinned in tools/prometheus-adapter/go.mod)
# from its Go module: the custom-metrics API server (custom.metrics.k8s.io) through which the test
# control plane's HorizontalPodAutoscaler reads the serving pods' queue metric from a real Prometheus
# (tests/controlplane/metrics_adapter.py). Nothing is downloaded from a release site. Prints the folder.
#
# The binary goes to .tools/prometheus-adapter-<version>/adapter (outside git). A stamp of go.mod +
# go.sum + this script makes a second run a no-op; a cold build takes a few minutes on 2 cores.
#
# Usage: scripts/prometheus-adapter.sh     # prints /abs/path/.tools/prometheus-adapter-v0.12.0
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="${root}/tools/prometheus-adapter"
version="$(sed -n 's|^\(require\)\{0,1\}[[:space:]]*sigs\.k8s\.io/prometheus-adapter \(v[^ ]*\).*|\2|p' "${mod}/go.mod")"
[[ -n "${version}" ]] || { echo "prometheus-adapter.sh: no sigs.k8s.io/prometheus-adapter in ${mod}/go.mod" >&2; exit 1; }
out="${root}/.tools/prometheus-adapter-${version}"
stamp="${out}/.stamp"
want="$(cat "${mod}/go.mod" "${mod}/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"

if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" && -x "${out}/adapter" ]]; then
  echo "${out}"
  exit 0
fi

command -v go >/dev/null || export PATH="/usr/local/go/bin:${PATH}"
command -v go >/dev/null || { echo "prometheus-adapter.sh: Go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }
mkdir -p "${out}"
start=$(date +%s)
tmp="$(mktemp -d "${out}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
(
  cd "${mod}"
  echo "prometheus-adapter.sh: building prometheus-adapter ${version} into ${out} (cold: a few minutes)" >&2
  go build -trimpath -ldflags "-s -w" -o "${tmp}/" sigs.k8s.io/prometheus-adapter/cmd/adapter
)
mv -f "${tmp}/adapter" "${out}/adapter"
echo "${want}" > "${stamp}"
echo "prometheus-adapter.sh: built in $(( $(date +%s) - start )) s" >&2
echo "${out}"
