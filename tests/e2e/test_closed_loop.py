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

import shutil
from pathlib import Path

import pytest
import yaml
from controlplane import Cluster
from kubelet import Kubelet
from loop_helpers import (
    ADAPTER,
    ROOT,
    accuracy,
    adep,
    classify,
    follow_verdict,
    prom_value,
    replica_versions,
    retrain_judged,
    rows,
    send_feedback,
    serve,
    train_example_job,
    waiter,
)
from operator_process import Operator
from promserver import Prometheus

from kubetune.api.adapterdeployment import RetrainingSpec
from kubetune.api.telemetry import ACCURACY, DRIFT_SCORE, DRIFT_WINDOW

DATA = Path(__file__).parent / "data"
DRIFT_KIND = "embedding_cosine"
DRIFT_THRESHOLD = 0.05
ACCURACY_THRESHOLD = 0.8
MIN_SAMPLES = 40

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed"),
]


def test_drift_retrains_promotes_and_recovers_accuracy(
    cluster: Cluster, world: tuple[Operator, Kubelet, Prometheus]
) -> None:
    op, kubelet, prom = world
    w = waiter(cluster, kubelet, op)

    # 1. The FineTuneJob trains for real (small budget).
    train_example_job(cluster, w)

    # 2. The AdapterDeployment serves it, watched by Prometheus, retraining on.
    ad = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
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
    champion, url = serve(cluster, kubelet, w, yaml.safe_dump(ad))

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
    result = retrain_judged(w, cluster)
    assert len(adep(cluster)["retrains"]) == 1
    # The gate compares both adapters row by row on the recipe's 120 validation tickets plus the
    # retrain's fresh hold-out (~30 rows; issue 23): a retrain that moves a ticket or two is within
    # the interval and the champion keeps serving (Inconclusive); a clear win rolls out.
    judged_on = ("outcome", "rows", "challenger", "champion", "difference", "lowerBound", "upperBound")
    print("retrain verdict", {k: result.get(k) for k in judged_on})
    assert result["rows"] >= RetrainingSpec().gate.min_rows  # the union clears the gate's minimum
    followed = follow_verdict(w, cluster, kubelet, champion, result, RetrainingSpec(min_improvement=0.0))
    if followed is None:
        assert replica_versions(cluster).get(champion) == 1, replica_versions(cluster)
        return

    # 6. The real deployment controller rolls to the new version (a new ReplicaSet; the old pod goes
    # only once the new one is ready); accuracy on held-out drifted tickets recovers.
    new, url = followed
    versions = replica_versions(cluster)
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
