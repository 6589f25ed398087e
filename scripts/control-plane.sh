#!/usr/bin/env bash
# Builds the real Kubernetes control plane the integration tests run against, from Go modules
# (nothing is downloaded from a release site): kube-apiserver, kube-controller-manager and
# kube-scheduler of the k8s.io/kubernetes release pinned in tools/k8s/go.mod, etcd of the version
# that release is tested with, and kwok (tools/kwok/go.mod) for fake nodes; plus kwok's Logs and
# PortForward CRDs (pod logs and kubectl port-forward through the real kubelet API) and Argo CD's
# CRDs (manifests only). Prints the folder.
#
# Binaries go to .tools/k8s-<version>/ (outside git). A stamp of go.mod + go.sum + this script makes
# a second run a no-op; the Go build cache (~/.cache/go-build) makes a rebuild after a bump cheap.
#
# Usage: scripts/control-plane.sh          # prints /abs/path/.tools/k8s-v1.34.4
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="${root}/tools/k8s"
kwok_mod="${root}/tools/kwok"
version="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "${mod}/go.mod")"
minor="$(echo "${version}" | cut -d. -f2)"
out="${root}/.tools/k8s-${version}"
stamp="${out}/.stamp"
want="$(cat "${mod}/go.mod" "${mod}/go.sum" "${kwok_mod}/go.mod" "${kwok_mod}/go.sum" "${BASH_SOURCE[0]}" \
  | sha256sum | cut -c1-16)"
argocd_version="v3.2.0"
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

have_all() { for b in "${bins[@]}"; do [[ -x "${out}/${b}" ]] || return 1; done; }
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]] && have_all; then
  echo "${out}"
  exit 0
fi

command -v go >/dev/null || export PATH="/usr/local/go/bin:${PATH}"
command -v go >/dev/null || { echo "control-plane.sh: Go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }
mkdir -p "${out}"
start=$(date +%s)
# The version the binaries report (kubectl version, helm's kubeVersion check, /version) is set
# the way the Kubernetes release build sets it.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
  ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done
tmp="$(mktemp -d "${out}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
(
  cd "${mod}"
  echo "control-plane.sh: building Kubernetes ${version} control plane into ${out} (cold: ~20 min on 2 cores)" >&2
  go build -trimpath -ldflags "${ldflags}" -o "${tmp}/" \
    go.etcd.io/etcd/server/v3 \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  # etcd's main package is the module root go.etcd.io/etcd/server/v3, so go names it "server".
  mv "${tmp}/server" "${tmp}/etcd"
)
(
  # kwok pins its own k8s.io libraries (older than the control plane's): a module of its own.
  cd "${kwok_mod}"
  go build -trimpath -ldflags "-s -w" -o "${tmp}/" sigs.k8s.io/kwok/cmd/kwok
  kwok_dir="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  mkdir -p "${tmp}/kwok-crds"
  cp "${kwok_dir}/kustomize/crd/bases/kwok.x-k8s.io_logs.yaml" \
    "${kwok_dir}/kustomize/crd/bases/kwok.x-k8s.io_portforwards.yaml" "${tmp}/kwok-crds/"
)
(
  # Argo CD's Application/AppProject CRDs, so the examples/argocd manifests meet a real schema.
  # Only manifests are taken from the module (go mod download verifies its checksum); nothing is built.
  argocd_dir="$(go mod download -json "github.com/argoproj/argo-cd/v3@${argocd_version}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "${tmp}/argocd-crds"
  cp "${argocd_dir}/manifests/crds/application-crd.yaml" "${argocd_dir}/manifests/crds/appproject-crd.yaml" \
    "${tmp}/argocd-crds/"
)
for b in "${bins[@]}"; do mv -f "${tmp}/${b}" "${out}/${b}"; done
rm -rf "${out}/argocd-crds" && mv "${tmp}/argocd-crds" "${out}/argocd-crds"
rm -rf "${out}/kwok-crds" && mv "${tmp}/kwok-crds" "${out}/kwok-crds"
echo "${want}" > "${stamp}"
echo "control-plane.sh: built in $(( $(date +%s) - start )) s" >&2
echo "${out}"
