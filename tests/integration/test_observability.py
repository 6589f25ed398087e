"""The Grafana dashboard and the alert rules against a real Prometheus, and how the chart ships them.

Two prometheus_client exporters play the scrape targets: the serving pods (every series the
telemetry contract names, labelled by adapter/version, with the PodMonitor's namespace/pod as target
labels) and the operator (its real metric objects from kubetune_operator.metrics, scraped with
honor_labels like a ServiceMonitor must). They play an incident: adapter support-intents v1 drifted,
its accuracy fell, a retrain failed, one was rejected, one was promoted, a FineTuneJob hangs. Every
panel query, annotation, variable query and alert expression must then return data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubetune_operator import metrics as operator_metrics
from kubetune_trainer.serve.metrics import LATENCY_BUCKETS
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from promserver import Prometheus, free_port
from test_chart import CHART, NAMESPACE, RELEASE, of_kind, one, render, run_helm

from kubetune.api import telemetry

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/kubetune/files/rules/kubetune-alerts.yaml"
DASHBOARD = ROOT / "charts/kubetune/files/dashboards/kubetune.json"
PROMTOOL = shutil.which("promtool")

TEAM_NS, ADAPTER = "ml-team-a", "support-intents"
# What a user picks in the dashboard's variables; Grafana's own macros get typical values.
VARIABLES = {
    "namespace": TEAM_NS,
    "adapter": ADAPTER,
    "version": "v1",
    "drift_threshold": "0.2",
    "accuracy_threshold": "0.85",
    "__rate_interval": "1m",
    "__range": "1h",
    "__interval": "15s",
}
DRIFT = {
    "label_psi": 0.27,
    "length_psi": 0.08,
    "confidence_drop": 0.12,
    "embedding_cosine": 0.34,
    "embedding_mmd": 0.05,
}
TIMEOUT = 30.0


def load_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def load_dashboard() -> dict[str, Any]:
    model: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return model


def substitute(expr: str) -> str:
    """Replace $var / ${var} the way Grafana does for single-valued variables."""
    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: VARIABLES[m.group(1) or m.group(2)], expr)
    assert "$" not in out, out
    return out


def panel_queries() -> list[tuple[str, str]]:
    """(panel title / refId, query) for every panel target, annotation and variable query."""
    model = load_dashboard()
    out = [
        (f"panel {p['title']!r} target {t['refId']}", t["expr"])
        for p in model["panels"]
        for t in p.get("targets", [])
    ]
    out += [(f"annotation {a['name']!r}", a["expr"]) for a in model["annotations"]["list"] if "expr" in a]
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable, PromQL equivalent of its label_values(), the value the test picks)."""
    out = []
    for var in load_dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"])
        assert match, f"variable {var['name']}: only label_values(selector, label) is supported here"
        selector, label = match.groups()
        out.append((var["name"], f"count by ({label}) ({selector})", VARIABLES[var["name"]]))
    return out


# --- exporters ------------------------------------------------------------------------------------


class ServingPod:
    """A serving pod's /metrics with every telemetry series; ``tick()`` is some traffic."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = list(telemetry.LABELS)

        def counter(name: str) -> Counter:
            return Counter(name.removesuffix("_total"), name, labels, registry=r)

        self.requests = counter(telemetry.REQUESTS_TOTAL)
        self.errors = counter(telemetry.ERRORS_TOTAL)
        self.tokens = counter(telemetry.TOKENS_TOTAL)
        self.feedback = counter(telemetry.FEEDBACK_TOTAL)
        self.feedback_correct = counter(telemetry.FEEDBACK_CORRECT_TOTAL)
        self.latency = Histogram(
            telemetry.REQUEST_LATENCY, "latency", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge(telemetry.IN_FLIGHT, "in flight", labels, registry=r)
        self.accuracy = Gauge(telemetry.ACCURACY, "accuracy", labels, registry=r)
        self.estimated = Gauge(telemetry.ACCURACY_ESTIMATED, "estimated accuracy", labels, registry=r)
        self.window = Gauge(telemetry.DRIFT_WINDOW, "window", labels, registry=r)
        self.drift = Gauge(telemetry.DRIFT_SCORE, "drift", [*labels, "kind"], registry=r)
        self.queue = Gauge(telemetry.QUEUE_LENGTH, "requests waiting or computing", registry=r)
        self.queue.set(9)  # above the HPA's target of 4 per pod: the autoscaler is at its max
        runtime = Gauge(telemetry.RUNTIME_INFO, "engine", ["adapter", "engine"], registry=r)
        runtime.labels(ADAPTER, "vllm").set(1)  # spec.runtime.engine vllm: the front names its engine
        # v1: the drifted champion; v2: the canary of a promoted retrain, healthy.
        for kind, score in DRIFT.items():
            self.drift.labels(ADAPTER, "v1", kind).set(score)
            self.drift.labels(ADAPTER, "v2", kind).set(score / 5)
        self.window.labels(ADAPTER, "v1").set(500)
        self.window.labels(ADAPTER, "v2").set(180)
        self.accuracy.labels(ADAPTER, "v1").set(0.71)
        self.accuracy.labels(ADAPTER, "v2").set(0.93)
        self.estimated.labels(ADAPTER, "v1").set(0.78)  # the drifted champion's confidence fell too
        self.estimated.labels(ADAPTER, "v2").set(0.94)
        self.feedback.labels(ADAPTER, "v1").inc(140)
        self.feedback_correct.labels(ADAPTER, "v1").inc(100)
        self.in_flight.labels(ADAPTER, "v1").set(3)
        self.in_flight.labels(ADAPTER, "v2").set(1)

    def tick(self) -> None:
        for version, slow, failed in (("v1", 2, 2), ("v2", 0, 0)):
            self.requests.labels(ADAPTER, version).inc(20)
            self.errors.labels(ADAPTER, version).inc(failed)
            self.tokens.labels(ADAPTER, version).inc(20 * 48)
            for _ in range(20 - slow):
                self.latency.labels(ADAPTER, version).observe(0.04)
            for _ in range(slow):
                self.latency.labels(ADAPTER, version).observe(3.2)  # CPU-bound tail of the drifted version
        self.feedback.labels(ADAPTER, "v1").inc(4)
        self.feedback_correct.labels(ADAPTER, "v1").inc(3)
        self.feedback.labels(ADAPTER, "v2").inc(2)
        self.feedback_correct.labels(ADAPTER, "v2").inc(2)


class OperatorPod:
    """The operator's /metrics: its real metric objects (global registry), driven like the handlers."""

    def __init__(self) -> None:
        m = operator_metrics
        m.record_finetunejob(TEAM_NS, ADAPTER, "Succeeded", "120/120", 0.21)
        m.record_finetunejob(TEAM_NS, f"{ADAPTER}-retrain-2", "Failed", "40/120", 0.88)
        m.record_finetunejob(TEAM_NS, f"{ADAPTER}-retrain-4", "Running", "30/120", 0.64)  # hangs
        self.jobs = [ADAPTER, f"{ADAPTER}-retrain-2", f"{ADAPTER}-retrain-4", "support-triage"]
        self.step = 10
        for outcome in ("Triggered", "Promoted", "Rejected", "Failed"):
            m.RETRAINS.labels(TEAM_NS, ADAPTER, outcome).inc(0)  # exported at 0 before the first scrape

    def tick(self) -> None:
        m = operator_metrics
        self.step = min(self.step + 1, 200)
        m.record_finetunejob(TEAM_NS, "support-triage", "Running", f"{self.step}/200", 2.0 / self.step)
        m.RECONCILES.labels(result="ok").inc(3)
        m.RECONCILES.labels(result="error").inc(1)

    def retrain_events(self) -> None:
        """The loop's history, after Prometheus saw the counters at 0 (so increase() sees it)."""
        for outcome in ("Triggered", "Rejected", "Triggered", "Failed", "Triggered", "Promoted"):
            operator_metrics.RETRAINS.labels(TEAM_NS, ADAPTER, outcome).inc()

    def close(self) -> None:
        for name in self.jobs:
            operator_metrics.forget_finetunejob(TEAM_NS, name)


class KubeStateMetrics:
    """kube-state-metrics' HPA series for the AdapterDeployment's autoscaler, pinned at maxReplicas."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        hpa = ["namespace", "horizontalpodautoscaler"]
        ids = (TEAM_NS, ADAPTER)
        for name, value in (
            ("kube_horizontalpodautoscaler_status_current_replicas", 8),
            ("kube_horizontalpodautoscaler_status_desired_replicas", 11),
            ("kube_horizontalpodautoscaler_spec_max_replicas", 8),
        ):
            Gauge(name, name, hpa, registry=r).labels(*ids).set(value)
        target = Gauge(
            "kube_horizontalpodautoscaler_spec_target_metric",
            "target",
            [*hpa, "metric_name", "metric_target_type"],
            registry=r,
        )
        target.labels(*ids, telemetry.QUEUE_LENGTH, "average").set(4)
        info = Gauge(
            "kube_horizontalpodautoscaler_info",
            "info",
            [*hpa, "scaletargetref_api_version", "scaletargetref_kind", "scaletargetref_name"],
            registry=r,
        )
        info.labels(*ids, "kubetune.dev/v1alpha1", "AdapterDeployment", ADAPTER).set(1)


class LabelledPrometheus(Prometheus):
    """Prometheus scraping the server with the PodMonitor's target labels and the operator with
    honor_labels (so its FineTuneJob series keep the CR's namespace), like a ServiceMonitor should."""

    def __init__(self, workdir: Path, server: str, operator: str, kube_state: str) -> None:
        super().__init__(workdir, [])
        self.server, self.operator, self.kube_state = server, operator, kube_state

    def __enter__(self) -> LabelledPrometheus:
        super().__enter__()
        interval = self.scrape_interval
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "kubetune-server",
                    "static_configs": [
                        {
                            "targets": [self.server],
                            "labels": {
                                "namespace": TEAM_NS,
                                "pod": f"{ADAPTER}-server-7d9f4-x2x8q",
                                # the PodMonitor's podTargetLabels
                                "kubetune_dev_adapterdeployment": ADAPTER,
                                "kubetune_dev_track": "stable",
                            },
                        }
                    ],
                },
                {
                    "job_name": "kubetune-operator",
                    "honor_labels": True,
                    "static_configs": [
                        {
                            "targets": [self.operator],
                            "labels": {"namespace": "kubetune-system", "pod": "kt-kubetune-6c5d-abcde"},
                        }
                    ],
                },
                {
                    "job_name": "kube-state-metrics",
                    "honor_labels": True,
                    "static_configs": [{"targets": [self.kube_state]}],
                },
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        return self


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.skip("Debian prometheus not installed")
    serving, operator = ServingPod(), OperatorPod()
    server_port, operator_port, kube_state_port = free_port(), free_port(), free_port()
    http = [
        start_http_server(server_port, addr="127.0.0.1", registry=serving.registry),
        start_http_server(operator_port, addr="127.0.0.1", registry=REGISTRY),
        start_http_server(kube_state_port, addr="127.0.0.1", registry=KubeStateMetrics().registry),
    ]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.25):
            serving.tick()
            operator.tick()

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    workdir = tmp_path_factory.mktemp("prometheus")
    try:
        targets = (f"127.0.0.1:{port}" for port in (server_port, operator_port, kube_state_port))
        with LabelledPrometheus(workdir, *targets) as prom:
            # The retrain counters must be scraped at 0 before the loop's events, as in a cluster.
            wait_for(
                "the retrain counters scraped at 0",
                lambda: bool(prom.query(f'kubetune_retrains_total{{namespace="{TEAM_NS}"}}')),
            )
            operator.retrain_events()
            yield prom
    finally:
        stop.set()
        thread.join()
        for server, _ in http:
            server.shutdown()
        operator.close()


def wait_for_data(prom: Prometheus, name: str, promql: str) -> list[dict[str, Any]]:
    """The query's result once it is non-empty; fails naming the panel/alert after TIMEOUT."""
    result: list[dict[str, Any]] = []

    def has_data() -> bool:
        nonlocal result
        result = prom.query(promql)
        return bool(result)

    try:
        wait_for(name, has_data)
    except AssertionError:
        pytest.fail(f"{name}: no data from Prometheus for\n  {promql}")
    return result


# --- every query returns data ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expr"), panel_queries(), ids=[n for n, _ in panel_queries()])
def test_every_dashboard_query_returns_data(prometheus: Prometheus, name: str, expr: str) -> None:
    wait_for_data(prometheus, name, substitute(expr))


@pytest.mark.parametrize(
    ("var", "promql", "pick"), variable_queries(), ids=[v for v, _, _ in variable_queries()]
)
def test_every_dashboard_variable_offers_the_value_we_pick(
    prometheus: Prometheus, var: str, promql: str, pick: str
) -> None:
    label = re.search(r"count by \((\w+)\)", promql)
    assert label is not None
    result = wait_for_data(prometheus, f"variable {var}", substitute(promql))
    values = {r["metric"].get(label.group(1)) for r in result}
    assert pick in values, f"variable {var}: offers {sorted(v for v in values if v)}, not {pick!r}"


@pytest.mark.parametrize("rule", load_rules(), ids=[r["alert"] for r in load_rules()])
def test_every_alert_expression_returns_data(prometheus: Prometheus, rule: dict[str, Any]) -> None:
    """The incident the exporters play breaches every alert's condition (`for` aside)."""
    result = wait_for_data(prometheus, f"alert {rule['alert']}", rule["expr"])
    for sample in result:
        # Real label values, never a series that lost its namespace to a missing target label.
        assert sample["metric"].get("namespace"), f"alert {rule['alert']}: {sample['metric']}"


def test_dashboard_queries_notice_a_missing_metric(prometheus: Prometheus) -> None:
    """Control: a misspelt metric really comes back empty (the checks above could fail)."""
    assert (
        prometheus.query(substitute('sum(rate(kubetune_request_total{namespace=~"$namespace"}[1m]))')) == []
    )


# --- dashboard model ------------------------------------------------------------------------------


def test_dashboard_model() -> None:
    model = load_dashboard()
    assert model["schemaVersion"] >= 36
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "adapter", "version"} <= set(variables)
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert rows == ["Serving", "Drift & accuracy", "Loop", "Training", "Autoscaling"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in model["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    drift_panels = [p for p in model["panels"] if p["title"].startswith("Drift:")]
    kinds = {re.findall(r'kind="(\w+)"', p["targets"][0]["expr"])[0] for p in drift_panels}
    assert kinds == set(telemetry.DRIFT_KINDS)
    assert all(p["targets"][1]["expr"] == "vector($drift_threshold)" for p in drift_panels)
    (runtime,) = (
        p for p in model["panels"] if any(telemetry.RUNTIME_INFO in t["expr"] for t in p.get("targets", []))
    )
    assert runtime["type"] == "table" and "engine" in runtime["targets"][0]["expr"]


# --- the chart ships them -------------------------------------------------------------------------


def test_chart_switches_off_render_neither(tmp_path: Path) -> None:
    objs = render(tmp_path, None)
    assert of_kind(objs, "PrometheusRule") == []
    assert [
        o for o in of_kind(objs, "ConfigMap") if "grafana_dashboard" in o["metadata"].get("labels", {})
    ] == []


@pytest.fixture(scope="module")
def switched_on(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    values = {
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "monitoring",
            "annotations": {"grafana_folder": "kubetune"},
        },
    }
    return render(tmp_path_factory.mktemp("observability"), values)


def test_chart_renders_the_rule_file_as_a_prometheus_rule(
    switched_on: list[dict[str, Any]], tmp_path: Path
) -> None:
    rule = one(switched_on, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["name"] == f"{RELEASE}-kubetune-alerts"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "spec must be the rule file unchanged"
    rendered = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert [(r["alert"], r["expr"]) for r in rendered] == [(r["alert"], r["expr"]) for r in load_rules()]
    if PROMTOOL is not None:  # what the Prometheus Operator hands Prometheus must load
        spec_file = tmp_path / "rendered-rules.yaml"
        spec_file.write_text(yaml.safe_dump(rule["spec"]))
        check = subprocess.run([PROMTOOL, "check", "rules", str(spec_file)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_chart_renders_the_dashboard_configmap_for_the_sidecar(switched_on: list[dict[str, Any]]) -> None:
    maps = [
        o
        for o in of_kind(switched_on, "ConfigMap")
        if o["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert len(maps) == 1
    cm = maps[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "kubetune"}
    assert cm["data"]["kubetune.json"] == DASHBOARD.read_text(), (
        "dashboard must be byte-identical to the file"
    )
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(cm, version, strict=True)
    assert len(json.dumps(cm)) < 256 * 1024, "ConfigMap too big for kubectl apply's last-applied annotation"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prometheusRule": {"enabled": True, "extra": 1}}, "/prometheusRule"),
        ({"grafanaDashboard": {"enabled": True, "namespace": "Monitoring"}}, "/grafanaDashboard/namespace"),
        ({"grafanaDashboard": {"labels": {"team": 1}}}, "/grafanaDashboard/labels/team"),
    ],
)
def test_chart_rejects_bad_observability_values(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    values_file = tmp_path / "bad.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(values_file))
    assert result.returncode != 0, f"accepted {values}"
    assert message in result.stderr, result.stderr
