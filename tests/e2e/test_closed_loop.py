"""The closed loop, end to end on this machine: real operator, real trainer, real server, real Prometheus.

FineTuneJob (MiniLM, small budget) trains for real -> AdapterDeployment with monitoring + retraining
serves it -> in-distribution traffic: no retrain -> tickets about a product the model never saw
(tests/e2e/data/drifted_tickets.jsonl, an EV-charging subscription) with feedback labels -> drift and
accuracy cross their thresholds in Prometheus -> the operator creates a retraining FineTuneJob on the
fresh data -> it trains for real -> the gate promotes it -> the server rolls to the new version ->
accuracy on the drifted tickets it got feedback for rises, and held-out drifted tickets don't
get worse (beyond one ticket of noise).

On the real control plane: the real Job controller makes the training pods and ends the Jobs, the real
deployment controller makes and rolls the serving pods, the real scheduler binds them to kwok's nodes.
The test plays only the kubelet (tests/e2e/kubelet.py): it runs each bound pod's container as a local
process, reports its log, readiness and end through the API, and points Prometheus at the servers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from controlplane import Cluster
from integration.ftj_helpers import bind_claims, job_condition
from kubelet import Kubelet, copy_tree, scrape_kubelet_targets
from operator_process import Operator
from promserver import Prometheus

from kubetune.api.telemetry import ACCURACY, DRIFT_SCORE, DRIFT_WINDOW

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
ADAPTER = "support-intents"
DRIFT_KIND = "embedding_cosine"
DRIFT_THRESHOLD = 0.05
ACCURACY_THRESHOLD = 0.8
MIN_SAMPLES = 40
# Real training on 2 CPU cores shared with other work (measured 2-5 min per run); a trainer that fails
# ends the wait at once through the kubelet's errors, so a long bound masks nothing.
TRAINING_TIMEOUT = 900

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed"),
]


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def world(
    cluster: Cluster, operator: Operator, tmp_path: Path
) -> Iterator[tuple[Operator, Kubelet, Prometheus]]:
    """The claims the pods mount (bound by the real PV controller; their contents are local folders),
    the test's kubelet, and a Prometheus scraping whatever server pods exist."""
    bind_claims(cluster)
    pvc = tmp_path / "pvc"
    copy_tree(ROOT / "examples" / "data", pvc / "kubetune-data")
    (pvc / "kubetune-output").mkdir(parents=True)
    kubelet = Kubelet(cluster, tmp_path / "kubelet", pvc).start()
    try:
        with Prometheus(tmp_path / "prometheus", []) as prom:
            scrape_kubelet_targets(prom, kubelet)
            yield operator, kubelet, prom
    finally:
        kubelet.stop()


def wait(cluster: Cluster, kubelet: Kubelet, op: Operator, predicate: Any, what: str, timeout: float) -> Any:
    def check() -> Any:
        assert not kubelet.errors, kubelet.errors
        return predicate()

    try:
        return cluster.wait_for(check, timeout=timeout, interval=0.5, message=what)
    except AssertionError:
        print(op.logs()[-6000:])
        print(kubelet.server_log(f"{ADAPTER}-server")[-3000:])
        raise


def adep(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get("adep", cluster.ns, ADAPTER) or {}).get("status", {})


def rolled_out(cluster: Cluster, name: str) -> bool:
    """`kubectl rollout status`: the real deployment controller has replaced every old pod."""
    dep = cluster.get("deployments.apps", cluster.ns, name)
    if dep is None:
        return False
    status, want = dep.get("status", {}), dep["spec"]["replicas"]
    return (
        status.get("observedGeneration") == dep["metadata"]["generation"]
        and status.get("updatedReplicas") == want
        and status.get("replicas") == want
        and status.get("availableReplicas") == want
    )


def only_endpoint(kubelet: Kubelet) -> str | None:
    """The Service's one ready endpoint (one replica, no rollout in flight), as a client reaches it."""
    urls = kubelet.service_urls(ADAPTER)
    return urls[0] if len(urls) == 1 else None


def classify(url: str, texts: list[str]) -> list[tuple[str, str]]:
    """(request id, predicted label) per text, one request each (the way clients send tickets)."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for text in texts:
            r = client.post("/v1/classify", json={"model": ADAPTER, "input": text})
            r.raise_for_status()
            out.append((r.headers["x-request-id"], r.json()["data"][0]["label"]))
    return out


def send_feedback(url: str, answered: list[tuple[str, str]], truth: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for (rid, _), label in zip(answered, truth, strict=True):
            client.post("/v1/feedback", json={"requestId": rid, "label": label}).raise_for_status()


def accuracy(url: str, tickets: list[dict[str, str]]) -> float:
    predicted = classify(url, [t["text"] for t in tickets])
    return sum(p == t["label"] for (_, p), t in zip(predicted, tickets, strict=True)) / len(tickets)


def prom_value(prom: Prometheus, promql: str) -> float | None:
    result = prom.query(promql)
    return float(result[0]["value"][1]) if result else None


def test_drift_retrains_promotes_and_recovers_accuracy(
    cluster: Cluster, world: tuple[Operator, Kubelet, Prometheus]
) -> None:
    op, kubelet, prom = world
    w = lambda predicate, what, timeout: wait(cluster, kubelet, op, predicate, what, timeout)  # noqa: E731

    # 1. The FineTuneJob trains for real (small budget: 1 epoch).
    ftj = yaml.safe_load((ROOT / "examples/finetunejob-support-intents.yaml").read_text())
    # 2 cores shared: a few steps on top of the linear-probe head init (LP-FT) are enough here.
    training = {k: v for k, v in ftj["spec"]["training"].items() if k != "epochs"}
    ftj["spec"]["training"] = {**training, "maxSteps": 40, "checkpointEvery": 1000}
    ftj["spec"]["evaluation"]["minAccuracy"] = 0.7
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(ftj))
    done = w(
        lambda: (
            (s := (cluster.get("ftj", cluster.ns, ADAPTER) or {}).get("status", {})).get("phase")
            in ("Succeeded", "Failed")
            and s
        ),
        "FineTuneJob trained",
        TRAINING_TIMEOUT,
    )
    assert done["phase"] == "Succeeded", done
    # The real Job controller ran it: the training pod sat on a GPU node and the Job completed.
    (train_pod,) = cluster.pods_of(f"{ADAPTER}-train")
    assert train_pod["spec"]["nodeName"].startswith("kwok-gpu-"), train_pod["spec"]["nodeName"]
    assert job_condition(cluster.get("jobs.batch", cluster.ns, f"{ADAPTER}-train"), "Complete")

    # 2. The AdapterDeployment serves it, watched by Prometheus, retraining on.
    ad = yaml.safe_load((ROOT / "examples/adapterdeployment-support-intents.yaml").read_text())
    ad["spec"]["replicas"] = 1
    ad["spec"]["monitoring"] = {
        "prometheusUrl": prom.url,
        "intervalSeconds": 5,
        "windowSize": 100,
        "minSamples": MIN_SAMPLES,
        "drift": {"kind": DRIFT_KIND, "threshold": DRIFT_THRESHOLD, "forSeconds": 3},
        "accuracy": {"threshold": ACCURACY_THRESHOLD, "forSeconds": 3},
        "freshData": {"uri": "pvc://kubetune-data/fresh", "maxRows": 1000},
    }
    ad["spec"]["retraining"] = {
        "enabled": True,
        "cooldownSeconds": 3600,
        "maxPerDay": 2,
        "minImprovement": 0.0,
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(ad))
    champion = w(lambda: (adep(cluster).get("activeAdapter") or {}).get("version"), "adapter active", 60)
    server = f"{ADAPTER}-server"
    w(lambda: adep(cluster).get("phase") == "Available" and rolled_out(cluster, server), "Available", 180)
    url = w(lambda: only_endpoint(kubelet), "the Service's ready endpoint", 30)

    # 3. In-distribution traffic (the validation tickets): evaluated, no breach, no retrain.
    calm = rows(ROOT / "examples/data/support-intents/validation.jsonl")
    answered = classify(url, [t["text"] for t in calm])
    send_feedback(url, answered[:MIN_SAMPLES], [t["label"] for t in calm[:MIN_SAMPLES]])
    selector = f'{{adapter="{ADAPTER}",version="{champion}"}}'
    w(lambda: (prom_value(prom, f"{DRIFT_WINDOW}{selector}") or 0) >= MIN_SAMPLES, "window in Prometheus", 30)
    calm_drift = {
        kind: prom_value(prom, f'{DRIFT_SCORE}{{adapter="{ADAPTER}",version="{champion}",kind="{kind}"}}')
        for kind in ("label_psi", "length_psi", "confidence_drop", "embedding_cosine", "embedding_mmd")
    }
    calm_status = w(
        lambda: (s := adep(cluster)).get("drift") is not None and s.get("accuracy") is not None and s,
        "evaluated",
        30,
    )
    w(lambda: adep(cluster).get("lastEvaluated") != calm_status["lastEvaluated"], "evaluated again", 30)
    print("calm drift", calm_drift, "status", calm_status.get("drift"), calm_status.get("accuracy"))
    assert calm_status["accuracy"] >= ACCURACY_THRESHOLD
    assert calm_drift[DRIFT_KIND] is not None and calm_drift[DRIFT_KIND] < DRIFT_THRESHOLD
    assert not adep(cluster).get("retrains"), adep(cluster)

    # 4. Drifted traffic with feedback labels: three quarters as traffic, one quarter held out.
    drifted = rows(DATA / "drifted_tickets.jsonl")
    traffic, held_out = [t for i, t in enumerate(drifted) if i % 4], drifted[::4]
    before = accuracy(url, held_out)
    answered = classify(url, [t["text"] for t in traffic])
    seen_before = sum(p == t["label"] for (_, p), t in zip(answered, traffic, strict=True)) / len(traffic)
    send_feedback(url, answered, [t["label"] for t in traffic])
    drift_now = w(
        lambda: (
            (
                v := prom_value(
                    prom, f'{DRIFT_SCORE}{{adapter="{ADAPTER}",version="{champion}",kind="{DRIFT_KIND}"}}'
                )
            )
            and v > DRIFT_THRESHOLD
            and v
        ),
        "drift above threshold in Prometheus",
        30,
    )
    # These tickets are hard for routing words ("charger", "RFID tag") but not hopeless: rolling accuracy
    # falls (measured 0.92-0.96 vs ~1.0 calm) without crossing 0.8; the drift trigger is the one that fires.
    # Wait for a scrape taken after the feedback (the drift gauge moves first, during classification).
    acc_now = w(
        lambda: (
            (v := prom_value(prom, f"{ACCURACY}{selector}")) is not None and v < calm_status["accuracy"] and v
        ),
        "rolling accuracy below the calm value in Prometheus",
        30,
    )
    print("drifted: drift", drift_now, "accuracy", acc_now, "held-out before", before)
    fresh = kubelet.pvc_root / "kubetune-data" / "fresh" / ADAPTER
    fresh_rows = rows(fresh / "train.jsonl") + rows(fresh / "holdout.jsonl")
    labelled = calm[:MIN_SAMPLES] + traffic  # every input with feedback, calm ones too
    assert len(fresh_rows) == len(labelled) and {r["text"] for r in fresh_rows} == {
        t["text"] for t in labelled
    }

    # 5. One retraining FineTuneJob, trained for real on the fresh data, judged against the champion.
    record = w(lambda: (adep(cluster).get("retrains") or [None])[0], "retraining FineTuneJob", 60)
    retrain = cluster.get("ftj", cluster.ns, record["fineTuneJob"])
    assert retrain is not None
    extra = retrain["spec"]["dataset"]["extra"]
    assert extra[-1]["uri"] == f"pvc://kubetune-data/fresh/{ADAPTER}/train.jsonl"
    result = w(
        lambda: (
            (r := (adep(cluster).get("retrains") or [{}])[0]).get("outcome")
            in ("Promoted", "Rejected", "Failed")
            and r
        ),
        "retrain judged",
        TRAINING_TIMEOUT,
    )
    assert result["outcome"] == "Promoted", (result, cluster.get("ftj", cluster.ns, record["fineTuneJob"]))
    assert len(adep(cluster)["retrains"]) == 1

    # 6. The real deployment controller rolls to the new version (a new ReplicaSet; the old pod goes
    # only once the new one is ready); accuracy on held-out drifted tickets recovers.
    new = w(
        lambda: (v := (adep(cluster).get("activeAdapter") or {}).get("version")) != champion and v,
        "new version active",
        60,
    )

    def serving_new() -> str | None:
        if not rolled_out(cluster, server) or (endpoint := only_endpoint(kubelet)) is None:
            return None
        try:
            models = httpx.get(f"{endpoint}/v1/models", timeout=5).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return endpoint if any(m["version"] == new for m in models) else None

    url = w(serving_new, f"the Service serving {new} only", 180)
    versions: dict[str, int] = {}
    for rs in cluster.list(
        "replicasets.apps", cluster.ns, label_selector="app.kubernetes.io/component=server"
    ):
        version = rs["spec"]["template"]["metadata"]["annotations"]["kubetune.dev/adapter-version"]
        versions[version] = versions.get(version, 0) + rs["spec"]["replicas"]
    assert versions.get(new) == 1 and versions.get(champion) == 0, versions
    after = accuracy(url, held_out)
    seen_after = accuracy(url, traffic)
    print(
        "drifted accuracy, labelled traffic:", seen_before, "->", seen_after, "held out:", before, "->", after
    )
    # The fresh feedback reached the new model: it answers the new product's tickets it was shown
    # (most of them trained on, the server's holdout share not) better than the champion did.
    assert seen_after > seen_before
    # On the 31 never-seen drifted tickets one ticket is 3 points: measured 0.839 -> 0.871, 0.839 -> 0.839
    # and 0.839 -> 0.806 across runs and trainer versions, so only a loss of more than one ticket fails.
    assert after >= before - 1 / len(held_out) - 1e-9
