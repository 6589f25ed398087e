#!/usr/bin/env bash
# Copies the Argo CD Lua scripts (integrations/argocd/**/*.lua: health checks, action discovery and
# actions) into the Helm chart, which renders them into argocd-cm keys
# (charts/kubetune/templates/argocd-cm.yaml). Test fixtures stay out of the chart.
# tests/integration/test_chart_argocd.py fails while the two copies differ.
#   scripts/sync-chart-argocd.sh           # sync
#   scripts/sync-chart-argocd.sh --check   # exit 1 if out of sync, change nothing
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${root}/integrations/argocd"
dst="${root}/charts/kubetune/files/argocd"

list() { (cd "$1" && find . -type f -name '*.lua' | LC_ALL=C sort); }

if [[ "${1:-}" == "--check" ]]; then
  if [[ ! -d "${dst}" ]] || [[ "$(list "${src}")" != "$(list "${dst}")" ]]; then
    echo "charts/kubetune/files/argocd lists other scripts than integrations/argocd (run scripts/sync-chart-argocd.sh)" >&2
    exit 1
  fi
  while read -r file; do
    if ! cmp -s "${src}/${file}" "${dst}/${file}"; then
      echo "charts/kubetune/files/argocd/${file#./} differs from integrations/argocd (run scripts/sync-chart-argocd.sh)" >&2
      exit 1
    fi
  done < <(list "${src}")
  exit 0
fi

rm -rf "${dst}"
while read -r file; do
  mkdir -p "$(dirname "${dst}/${file}")"
  cp "${src}/${file}" "${dst}/${file}"
done < <(list "${src}")
echo "synced $(list "${src}" | wc -l) Argo CD scripts into ${dst#"${root}"/}"
