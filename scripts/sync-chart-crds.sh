#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, from `kubetune crds`) into the Helm chart, which renders
# them as templates (charts/kubetune/templates/crds.yaml). Run after `kubetune crds`;
# tests/integration/test_chart.py fails while the two copies differ.
#   scripts/sync-chart-crds.sh           # sync
#   scripts/sync-chart-crds.sh --check   # exit 1 if out of sync, change nothing
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${root}/crds"
dst="${root}/charts/kubetune/files/crds"

if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r "${src}" "${dst}" >/dev/null; then
    echo "charts/kubetune/files/crds differs from crds/ (run scripts/sync-chart-crds.sh)" >&2
    exit 1
  fi
  exit 0
fi

mkdir -p "${dst}"
# Remove copies of CRDs that no longer exist, then copy the current set.
find "${dst}" -maxdepth 1 -name '*.yaml' -delete
cp "${src}"/*.yaml "${dst}/"
echo "synced $(ls "${src}"/*.yaml | wc -l) CRDs into ${dst#"${root}"/}"
