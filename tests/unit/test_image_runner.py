"""tests/image_runner.py: mount points stay inside the image, and a missing image fails in CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_runner import Mount, in_root, plain_env, pod_mounts, require_image


def test_absolute_symlinks_resolve_inside_the_image_root(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # Debian's layout: absolute, would escape to the host
    (root / "opt").mkdir()
    (root / "opt" / "current").symlink_to("../var/run")
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert in_root(root, sa) == root / "run" / "secrets" / "kubernetes.io" / "serviceaccount"
    assert in_root(root, "/opt/current/x") == root / "run" / "x"
    assert in_root(root, "/../../etc") == root / "etc"


def test_pod_volumes_become_mounts(tmp_path: Path) -> None:
    container = {
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
        ],
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/kubetune", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "out", "mountPath": "/mnt/out"},
        ],
    }
    volumes = [{"name": "cfg", "configMap": {}}, {"name": "tmp", "emptyDir": {}}, {"name": "out", "pvc": {}}]
    mounts = pod_mounts(container, volumes, {"cfg": tmp_path / "c", "out": tmp_path / "o"})
    assert mounts == [
        Mount("/etc/kubetune", tmp_path / "c", True),
        Mount("/tmp"),
        Mount("/mnt/out", tmp_path / "o", False),
    ]
    assert plain_env(container, {"x": "pod-1"}) == {"HOME": "/tmp", "POD": "pod-1"}
    with pytest.raises(KeyError, match="out"):
        pod_mounts(container, volumes, {"cfg": tmp_path})


def test_a_missing_image_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETUNE_REQUIRE_IMAGES", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"make images|buildah"):
        require_image("localhost/kubetune-no-such-image:0")
    monkeypatch.setenv("KUBETUNE_REQUIRE_IMAGES", "1")
    with pytest.raises(pytest.fail.Exception, match="KUBETUNE_REQUIRE_IMAGES=1"):
        require_image("localhost/kubetune-no-such-image:0")
