"""What the e2e loop tests share: the first training run, waiting with the kubelet's and operator's
output on failure, and a client's view of the Service (classify, feedback, accuracy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import yaml
from controlplane import Cluster
from integration.ftj_helpers import job_condition
from kubelet import Kubelet
from kubetune_operator.paired_difference import PairedDifference
from kubetune_operator.retraining import verdict
from operator_process import Operator
from promserver import Prometheus

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = "support-intents"
SERVER = f"{ADAPTER}-server"
# Real training on 2 CPU cores shared with other work (measured 2-5 min per run); a trainer that fails
# ends the wait at once through the kubelet's errors, so a long bound masks nothing.
TRAINING_TIMEOUT = 900


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait(cluster: Cluster, kubelet: Kubelet, op: Operator, predicate: Any, what: str, timeout: float) -> Any:
    def check() -> Any:
        assert not kubelet.errors, kubelet.errors
        return predicate()

    try:
        return cluster.wait_for(check, timeout=timeout, interval=0.5, message=what)
    except AssertionError:
        print(op.logs()[-6000:])
        print(kubelet.server_log(SERVER)[-3000:])
        raise


def adep(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get("adep", cluster.ns, ADAPTER) or {}).get("status", {})


def train_example_job(cluster: Cluster, w: Any) -> None:
    """The example FineTuneJob trains for real on a small budget, in a Job the real controller ran."""
    ftj = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
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


def serving_only(cluster: Cluster, kubelet: Kubelet, version: str) -> str | None:
    """The Service's endpoint once the rollout is done and it serves ``version`` only."""
    if not rolled_out(cluster, SERVER) or (endpoint := only_endpoint(kubelet)) is None:
        return None
    try:
        models = httpx.get(f"{endpoint}/v1/models", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return endpoint if any(m["version"] == version for m in models) else None


def replica_versions(cluster: Cluster) -> dict[str, int]:
    """Desired pods per adapter version across the server's ReplicaSets (the deployment controller's)."""
    versions: dict[str, int] = {}
    for rs in cluster.list(
        "replicasets.apps", cluster.ns, label_selector="app.kubernetes.io/component=server"
    ):
        version = rs["spec"]["template"]["metadata"]["annotations"]["kubetune.dev/adapter-version"]
        versions[version] = versions.get(version, 0) + rs["spec"]["replicas"]
    return versions


def classify(url: str, texts: list[str]) -> list[tuple[str, str]]:
    """(request id, predicted label) per text, one request each (the way clients send tickets)."""
    return [(rid, item["label"]) for rid, item in classify_full(url, texts)]


def classify_full(url: str, texts: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(request id, the server's whole answer for the text: label, probabilities, margin, novelty)."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for text in texts:
            r = client.post("/v1/classify", json={"model": ADAPTER, "input": text})
            r.raise_for_status()
            out.append((r.headers["x-request-id"], r.json()["data"][0]))
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


def serve(cluster: Cluster, kubelet: Kubelet, w: Any, manifest: str) -> tuple[str, str]:
    """Apply the AdapterDeployment (and what comes with it); (champion version, the Service's endpoint)
    once it is Available and rolled out."""
    cluster.kubectl("apply", "-f", "-", input=manifest)
    champion = w(lambda: (adep(cluster).get("activeAdapter") or {}).get("version"), "adapter active", 60)
    w(lambda: adep(cluster).get("phase") == "Available" and rolled_out(cluster, SERVER), "Available", 180)
    return champion, w(lambda: only_endpoint(kubelet), "the Service's ready endpoint", 30)


def retrain_judged(w: Any, cluster: Cluster) -> dict[str, Any]:
    """The first retrain record once the gate has judged it (Promoted, Rejected, Inconclusive,
    WaitingForLabels, Failed)."""
    return dict(
        w(
            lambda: (
                (r := (adep(cluster).get("retrains") or [{}])[0]).get("outcome")
                in ("Promoted", "Rejected", "Inconclusive", "WaitingForLabels", "Failed")
                and r
            ),
            "retrain judged",
            TRAINING_TIMEOUT,
        )
    )


def follow_verdict(
    w: Any, cluster: Cluster, kubelet: Kubelet, champion: str, result: dict[str, Any], retraining: Any
) -> tuple[str, str] | None:
    """The loop's answer to a judged retrain, checked against its own numbers (issues 26, 23): the
    verdict is the one the gate gives for the recorded n and paired interval under ``retraining`` (a
    RetrainingSpec); Promoted rolls to the new version (-> (version, endpoint)); Inconclusive (the
    interval straddles minImprovement) and WaitingForLabels (fewer rows than gate.minRows) keep the
    champion serving (-> None). A retrain that failed or lost is an error here."""
    assert result["outcome"] in ("Promoted", "Inconclusive", "WaitingForLabels"), result
    n, low, high = result.get("rows"), result.get("lowerBound"), result.get("upperBound")
    assert n and result.get("challenger") is not None and result.get("champion") is not None, result
    assert low is not None and high is not None and low <= result["difference"] <= high, result
    recorded = PairedDifference(n, result["difference"], low, high)
    assert result["outcome"] == verdict(recorded, retraining), result
    if result["outcome"] == "Promoted":
        return rolled_to_new(w, cluster, kubelet, champion)
    assert (adep(cluster).get("activeAdapter") or {}).get("version") == champion, adep(cluster)
    return None


def rolled_to_new(w: Any, cluster: Cluster, kubelet: Kubelet, champion: str) -> tuple[str, str]:
    """(new version, the Service's endpoint) once the rollout replaced the champion."""
    new = w(
        lambda: (v := (adep(cluster).get("activeAdapter") or {}).get("version")) != champion and v,
        "new version active",
        60,
    )
    return new, w(lambda: serving_only(cluster, kubelet, new), f"the Service serving {new} only", 180)


def waiter(cluster: Cluster, kubelet: Kubelet, op: Operator) -> Any:
    """``wait`` bound to this test's world: w(predicate, what, timeout)."""
    return lambda predicate, what, timeout: wait(cluster, kubelet, op, predicate, what, timeout)
