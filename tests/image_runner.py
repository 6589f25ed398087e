"""Run a built image's container the way a kubelet runs a pod's, without a container runtime.

``mounted_image`` gives a buildah working container's rootfs (vfs storage: a plain directory) and the
image's config. ``start_container`` runs one pod container on it: in a private mount namespace
(``unshare --mount``) the rootfs is bind-mounted READ-ONLY, /dev is a fresh tmpfs with the usual
device nodes, /proc and /sys are the host's, the pod's volumes are mounted at their mountPaths
(emptyDir: tmpfs; ConfigMap/PVC/token: a host directory, read-only where the pod says so), then
``chroot --userspec=65532:65532`` drops to the pod's uid/gid with no supplementary groups and execs
the container's command (or the image's ENTRYPOINT/CMD) with only the image's and the pod's env.
The network is the host's: a port the pod would own is passed in as an env override.

Images are built by ``make images`` (scripts/images.sh). ``require_image`` skips with the reason when
an image is missing, and fails instead when KUBETUNE_REQUIRE_IMAGES=1 (CI builds them first).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

BUILDAH = ["buildah", "--storage-driver", "vfs"]
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
VERSION = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
# scripts/images.sh's default tags (its OPERATOR_IMAGE / TRAINER_IMAGE); other tags via these variables.
OPERATOR_IMAGE = os.environ.get("KUBETUNE_TEST_OPERATOR_IMAGE", f"localhost/kubetune-operator:{VERSION}")
TRAINER_IMAGE = os.environ.get("KUBETUNE_TEST_TRAINER_IMAGE", f"localhost/kubetune-trainer:{VERSION}")
POD_UID = POD_GID = 65532  # what the chart's and the builders' securityContext ask for
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True)
class Image:
    name: str
    rootfs: Path
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    workdir: str


@dataclass(frozen=True)
class Mount:
    """One volumeMount: ``source`` None is an emptyDir (tmpfs)."""

    target: str
    source: Path | None = None
    read_only: bool = False


def image_exists(name: str) -> bool:
    found = subprocess.run([*BUILDAH, "inspect", "--type", "image", name], capture_output=True, check=False)
    return found.returncode == 0


def require_image(name: str) -> None:
    """Skip (locally) or fail (CI: KUBETUNE_REQUIRE_IMAGES=1) when the image was not built."""
    from shutil import which

    missing = None
    if which("buildah") is None:
        missing = "buildah is not installed (apt-get install buildah debootstrap)"
    elif not image_exists(name):
        missing = f"image {name} not built: run `make images`"
    if missing is None:
        return
    if os.environ.get("KUBETUNE_REQUIRE_IMAGES") == "1":
        pytest.fail(f"KUBETUNE_REQUIRE_IMAGES=1 but {missing}")
    pytest.skip(missing)


@contextmanager
def mounted_image(name: str) -> Iterator[Image]:
    """A fresh working container of ``name`` (its own copy of the rootfs), removed afterwards."""
    ctr = subprocess.run(
        [*BUILDAH, "from", "--pull-never", "--quiet", name], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        root = subprocess.run(
            [*BUILDAH, "mount", ctr], check=True, capture_output=True, text=True
        ).stdout.strip()
        config = json.loads(
            subprocess.run(
                [*BUILDAH, "inspect", "--type", "image", name], check=True, capture_output=True, text=True
            ).stdout
        )["OCIv1"]["config"]
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        yield Image(
            name,
            Path(root),
            config.get("Entrypoint") or [],
            config.get("Cmd") or [],
            env,
            config.get("WorkingDir") or "/",
        )
    finally:
        subprocess.run([*BUILDAH, "rm", ctr], check=False, capture_output=True)


def pod_mounts(
    container: Mapping[str, Any], volumes: Sequence[Mapping[str, Any]], sources: Mapping[str, Path]
) -> list[Mount]:
    """The container's volumeMounts as Mounts: ``sources`` maps a volume name to the host directory
    holding its files (ConfigMap, PVC); emptyDirs become tmpfs. A volume with neither is an error."""
    kinds = {v["name"]: v for v in volumes}
    mounts = []
    for m in container.get("volumeMounts", []):
        volume = kinds[m["name"]]
        if "emptyDir" in volume:
            mounts.append(Mount(m["mountPath"]))
            continue
        if m["name"] not in sources:
            raise KeyError(f"volume {m['name']!r} ({volume}) has no host directory in sources")
        read_only = bool(m.get("readOnly")) or "configMap" in volume or "secret" in volume
        mounts.append(Mount(m["mountPath"], sources[m["name"]], read_only))
    return mounts


def plain_env(container: Mapping[str, Any], field_refs: Mapping[str, str] | None = None) -> dict[str, str]:
    """The container's env values; ``valueFrom.fieldRef`` is resolved from ``field_refs`` (by path)."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = (field_refs or {})[path]
    return env


def in_root(root: Path, path: str) -> Path:
    """``path`` as the container sees it, resolved inside ``root``: an absolute symlink in the image
    (Debian's /var/run -> /run) must never lead a mount point out to the host's directory."""
    current = root
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for _ in range(64):  # symlink hops
        if not parts:
            return current
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            current = root if link.startswith("/") else current
            continue
        current = candidate
    raise ValueError(f"{path}: too many symlinks inside {root}")


def _script(image: Image, mounts: Sequence[Mount], termination_log: Path | None) -> str:
    """The shell run inside the new mount namespace: mount everything, make the root read-only."""
    root = shlex.quote(str(image.rootfs))
    lines = [
        "set -eu",
        f"R={root}",
        'mount --bind "$R" "$R"',
        'mount -t tmpfs -o nosuid,mode=755 tmpfs "$R/dev"',
        *[f'touch "$R/dev/{d}" && mount --bind /dev/{d} "$R/dev/{d}"' for d in DEVICES],
        'mkdir -p "$R/dev/shm" && mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$R/dev/shm"',
        'mount --rbind /proc "$R/proc"',
        'mount --rbind /sys "$R/sys"',
    ]
    if termination_log is not None:
        lines.append(
            f'touch "$R/dev/termination-log" && mount --bind {shlex.quote(str(termination_log))} '
            '"$R/dev/termination-log"'
        )
    # The host's resolver files, as a kubelet mounts the pod's (host network here).
    for name in ("hosts", "resolv.conf"):
        if Path("/etc", name).is_file():
            lines.append(f'[ -e "$R/etc/{name}" ] || touch "$R/etc/{name}"')
            lines.append(f'mount --bind -o ro /etc/{name} "$R/etc/{name}"')
    for m in mounts:
        target = shlex.quote(str(in_root(image.rootfs, m.target)))
        # Mount points are created in the container's own copy, as a runtime does before it starts.
        lines.append(f"mkdir -p {target}")
        if m.source is None:
            lines.append(f"mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs {target}")
        else:
            lines.append(f"mount --bind {shlex.quote(str(m.source))} {target}")
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {target}")
    lines.append('mount -o remount,bind,ro "$R"')
    return "\n".join(lines)


def start_container(
    image: Image,
    *,
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[Mount] = (),
    termination_log: Path | None = None,
    stdout: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start one container: Kubernetes semantics for command/args (command replaces ENTRYPOINT and
    drops CMD; args replace CMD)."""
    argv = [*(command if command is not None else image.entrypoint)]
    argv += list(args if args is not None else ([] if command is not None else image.cmd))
    full_env = {**image.env, **(env or {})}
    # The pod's HOSTNAME would be the pod name; some libraries read it.
    full_env.setdefault("HOSTNAME", "kubetune-test-pod")
    env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items())
    # chroot (the host's) drops to uid/gid 65532 and no supplementary groups; env is the image's.
    exec_line = (
        f'exec env -i /usr/sbin/chroot --userspec={POD_UID}:{POD_GID} "$R" '
        f"env --chdir={shlex.quote(image.workdir)} {env_words} {' '.join(shlex.quote(a) for a in argv)}"
    )
    script = _script(image, mounts, termination_log) + "\n" + exec_line
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", "sh", "-c", script],
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_container(image: Image, timeout: float, **kwargs: Any) -> tuple[int, str]:
    """Run to completion: (exit code, output)."""
    proc = start_container(image, **kwargs)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"container did not finish in {timeout} s:\n{out.decode()[-4000:]}") from None
    return proc.returncode, out.decode(errors="replace")


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM to the container's process group (as a kubelet), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
