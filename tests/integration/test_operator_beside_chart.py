"""A second `kubetune operator` beside the chart's, on the real control plane.

The chart's operator (rendered by real `helm template` with `watchNamespaces: [<ns>]`: its KopfPeering
and Deployment applied, one replica run as a process with the Deployment's environment) is active.
`--standalone` refuses to start and names the way out; `--peering <chart's> --priority <takeover>`
joins the chart's peering, the chart's replica pauses, and the images given by flag that differ from
the Deployment's are warned about; once the chart's operator is gone, `--standalone` starts and
reconciles.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from controlplane import Cluster
from fleet_helpers import burst_manifest
from kubetune_operator.settings import TAKEOVER_PRIORITY
from operator_process import ROOT, Operator
from test_chaos_operator import PEERING_CRDS, peering_state

from tools import helm

CHART_TRAINER = "registry.example/chart-trainer:v9"
TIMEOUT = 90


def render_chart(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """kind -> object of the chart watching only the test's namespace, installed there."""
    result = subprocess.run(
        [
            helm(),
            "template",
            "kubetune",
            str(ROOT / "charts" / "kubetune"),
            "-n",
            cluster.ns,
            "--set",
            f"watchNamespaces={{{cluster.ns}}}",
            "--set",
            "trainer.image.repository=registry.example/chart-trainer",
            "--set",
            "trainer.image.tag=v9",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return {
        d["kind"]: d
        for d in yaml.safe_load_all(result.stdout)
        if d and d["kind"] in ("KopfPeering", "Deployment")
    }


def operator_env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_standalone_refuses_beside_the_charts_operator_and_a_takeover_pauses_it(
    cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    cluster.plane.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
    cluster.plane.wait_established()
    chart = render_chart(cluster)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(chart.values()))
    env = operator_env(chart["Deployment"])
    peering = env["KUBETUNE_PEERING_NAME"]
    assert env["KUBETUNE_TRAINER_IMAGE"] == env["KUBETUNE_SERVER_IMAGE"] == CHART_TRAINER

    def peers() -> dict[str, Any]:
        return (cluster.get("kopfpeerings.kopf.dev", cluster.ns, peering) or {}).get("status") or {}

    def wait(predicate: Any, message: str, *ops: Operator) -> None:
        try:
            cluster.wait_for(predicate, timeout=TIMEOUT, interval=0.3, message=message)
        except AssertionError:
            for op in ops:
                print(op.log_path.name, op.logs()[-4000:])
            raise

    charts = Operator(
        operator_kubeconfig,
        cluster.ns,
        tmp_path / "chart.log",
        {"POD_ID": "kubetune-chart-0", **env, "KUBETUNE_METRICS_PORT": "0", "KUBETUNE_LIVENESS_PORT": "0"},
        standalone=False,
    )
    dev = Operator(
        operator_kubeconfig,
        cluster.ns,
        tmp_path / "dev.log",
        {"POD_ID": "dev"},
        standalone=False,
        args=(
            f"--peering={peering}",
            f"--priority={TAKEOVER_PRIORITY}",
            "--trainer-image=registry.example/dev-trainer:0",
            f"--server-image={CHART_TRAINER}",
        ),
    )
    try:
        charts.start()
        wait(
            lambda: "kubetune-chart-0" in peers() and peering_state(charts) == "active",
            "the chart's replica active",
            charts,
        )

        refused = subprocess.run(
            [sys.executable, "-m", "kubetune.cli", "operator", "--standalone", "-n", cluster.ns],
            env={**os.environ, "KUBECONFIG": str(operator_kubeconfig), "KUBETUNE_METRICS_PORT": "0"},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert refused.returncode == 2, refused.stderr
        assert (
            f"KopfPeering {peering!r} in namespace {cluster.ns}: live peers kubetune-chart-0"
            in refused.stderr
        )
        join = f"--namespace={cluster.ns} --peering={peering} --priority={TAKEOVER_PRIORITY}"
        images = f"--trainer-image={CHART_TRAINER} --server-image={CHART_TRAINER}"  # it runs the defaults
        assert f"kubetune operator {join} {images}\n" in refused.stderr
        assert f"kubectl scale deployment {peering} -n {cluster.ns} --replicas=0" in refused.stderr

        dev.start()
        wait(
            lambda: peering_state(dev) == "active" and peering_state(charts) == "paused",
            "the chart's replica paused for the takeover",
            dev,
            charts,
        )
        assert {"kubetune-chart-0", "dev"} <= set(peers())
        warning = dev.logs()
        assert f"IMAGES DIFFER from the chart's operator Deployment {cluster.ns}/{peering}" in warning
        assert "trainer_image: this operator 'registry.example/dev-trainer:0'" in warning
        assert f"--trainer-image={CHART_TRAINER}" in warning
        assert "server_image:" not in warning  # the same as the chart's
        dev.stop()
        wait(lambda: peering_state(charts) == "active", "the chart's replica resuming", charts)
    finally:
        dev.stop()
        charts.stop()

    # The chart's replica said goodbye (lifetime 0): nothing is active, a standalone operator starts.
    alone = Operator(
        operator_kubeconfig,
        cluster.ns,
        tmp_path / "alone.log",
        {"KUBETUNE_TRAINER_IMAGE": CHART_TRAINER, "KUBETUNE_SERVER_IMAGE": CHART_TRAINER},
    )
    alone.start()
    try:
        cluster.kubectl("apply", "-f", "-", input=burst_manifest(["alone"]))
        wait(
            lambda: "created the data-validation Job" in alone.logs(), "the standalone one reconciling", alone
        )
        assert f"no other kubetune operator is active for {cluster.ns}" in alone.logs()
        assert "IMAGES DIFFER" not in alone.logs()
    finally:
        alone.stop()
    for op in (charts, dev, alone):
        assert "Traceback" not in op.logs(), op.logs()[-4000:]
