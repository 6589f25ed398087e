"""Chart hardening, rendered by the real helm: probes on Kopf's /healthz, resources, images pinned by
digest, ServiceAccount tokens only where needed, and the optional NetworkPolicies.

The NetworkPolicies are checked twice: against the Kubernetes schemas, and by asking a small
evaluator of NetworkPolicy semantics (below) who may talk to whom. The serving pods it asks about
are the ones the operator's own builder makes, so a label change there breaks this test rather
than silently leaving serving pods unprotected. When the `checkov` security scanner is on PATH
(not a project dependency: `pip install checkov` into a venv of its own) the rendered chart must
pass it apart from the findings listed with their reasons.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubetune_operator.adapter_status import resolve_adapter
from kubetune_operator.builders.serving import ResolvedAdapter, build_deployment, build_serve_config_map
from test_chart import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    WATCHED,
    of_kind,
    one,
    pod_specs,
    render,
    run_helm,
)

from kubetune.api.adapterdeployment import AdapterDeployment

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32
MONITORING = "monitoring"

Obj = dict[str, Any]


def operator_container(objs: list[Obj]) -> Obj:
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def helm_test_pod(objs: list[Obj]) -> Obj:
    (pod,) = [o for o in of_kind(objs, "Pod") if o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    return pod


# --- probes ----------------------------------------------------------------------------------------


def test_all_probes_ask_kopf_healthz_and_liveness_tolerates_a_busy_operator(tmp_path: Path) -> None:
    container = operator_container(render(tmp_path))
    healthz = {p["name"]: p["containerPort"] for p in container["ports"]}["healthz"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_LIVENESS_PORT"] == str(healthz)  # the probes ask where Kopf listens
    probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for name, probe in probes.items():
        assert probe["httpGet"] == {"path": "/healthz", "port": "healthz"}, name

    def budget(probe: Obj) -> int:
        """Seconds of consecutive failures before the kubelet acts."""
        return int(probe["periodSeconds"]) * int(probe["failureThreshold"])

    liveness = probes["livenessProbe"]
    assert budget(liveness) >= 120 and liveness["timeoutSeconds"] >= 10 and liveness["failureThreshold"] >= 3
    # Out of rotation well before a restart; a slow login is the startup probe's, not liveness'.
    assert budget(probes["readinessProbe"]) < budget(liveness)
    assert budget(probes["startupProbe"]) >= 240
    assert "initialDelaySeconds" not in liveness  # the startup probe holds liveness back


def test_probe_values_reach_the_pod_and_the_handler_stays_the_charts(tmp_path: Path) -> None:
    timing = {"periodSeconds": 60, "timeoutSeconds": 20, "failureThreshold": 10}
    container = operator_container(render(tmp_path, {"operator": {"livenessProbe": timing}}))
    assert container["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "healthz"}, **timing}
    assert container["readinessProbe"]["periodSeconds"] == 10


# --- resources -------------------------------------------------------------------------------------


def test_operator_has_requests_and_a_memory_limit_but_no_cpu_limit(tmp_path: Path) -> None:
    resources = operator_container(render(tmp_path))["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    # No CPU limit on purpose (values.yaml: CFS throttling stalls Kopf's single event loop).
    assert set(resources["limits"]) == {"memory"}
    limited = operator_container(render(tmp_path, {"operator": {"resources": {"limits": {"cpu": "1"}}}}))
    assert limited["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}


def test_helm_test_pod_is_restricted_and_limited(tmp_path: Path) -> None:
    pod = helm_test_pod(render(tmp_path))
    (container,) = pod["spec"]["containers"]
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod["spec"]  # the namespace default, which gets no token here


# --- images by digest ------------------------------------------------------------------------------


def test_every_image_can_be_pinned_by_digest(tmp_path: Path) -> None:
    other = "sha256:" + "cd" * 32
    objs = render(
        tmp_path,
        {
            "operator": {"image": {"repository": "reg.local/op", "tag": "ignored", "digest": DIGEST}},
            "trainer": {"image": {"repository": "reg.local/tr", "tag": "ignored", "digest": DIGEST}},
            "server": {"image": {"repository": "reg.local/srv", "digest": other}},
        },
    )
    container = operator_container(objs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == f"reg.local/op@{DIGEST}"
    assert env["KUBETUNE_TRAINER_IMAGE"] == f"reg.local/tr@{DIGEST}"
    assert env["KUBETUNE_SERVER_IMAGE"] == f"reg.local/srv@{other}"
    (check,) = helm_test_pod(objs)["spec"]["containers"]
    assert check["image"] == f"reg.local/op@{DIGEST}"


def test_server_image_defaults_to_the_pinned_trainer_image(tmp_path: Path) -> None:
    objs = render(tmp_path, {"trainer": {"image": {"repository": "reg.local/tr", "digest": DIGEST}}})
    env = {e["name"]: e.get("value") for e in operator_container(objs)["env"]}
    assert env["KUBETUNE_SERVER_IMAGE"] == env["KUBETUNE_TRAINER_IMAGE"] == f"reg.local/tr@{DIGEST}"


# --- ServiceAccount tokens -------------------------------------------------------------------------


def test_only_the_operator_pod_mounts_a_token(tmp_path: Path) -> None:
    objs = render(tmp_path, {"watchNamespaces": WATCHED})
    deployment = one(objs, "Deployment")
    operator_sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    for name, pod in pod_specs(objs):
        assert pod["automountServiceAccountToken"] is (name == f"Deployment/{deployment['metadata']['name']}")
    # The ServiceAccount objects mount nothing themselves: a pod naming the operator's account by
    # mistake does not get its rights.
    for sa in of_kind(objs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]
    assert operator_sa in {sa["metadata"]["name"] for sa in of_kind(objs, "ServiceAccount")}


# --- NetworkPolicy: a small evaluator of its semantics ---------------------------------------------


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector; an empty one selects everything."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


class Peer:
    """One end of a connection: a pod (namespace, labels, named ports) or a bare address."""

    def __init__(
        self, namespace: str | None = None, labels: dict[str, str] | None = None, ip: str = "10.244.0.9"
    ) -> None:
        self.namespace, self.labels, self.ip = namespace, labels or {}, ip
        self.ports: dict[str, int] = {}

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def peer_matches(peer: Obj, policy_namespace: str, other: Peer) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]

        def inside(cidr: str) -> bool:
            net = ipaddress.ip_network(cidr)
            return net.version == address.version and address in net

        return inside(block["cidr"]) and not any(inside(c) for c in block.get("except", []))
    if other.namespace is None:
        return False  # selectors match pods only
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), other.labels)


def port_matches(rule: Obj, port: int, protocol: str, named: dict[str, int]) -> bool:
    if "ports" not in rule:
        return True
    for p in rule["ports"]:
        number = named.get(p["port"]) if isinstance(p["port"], str) else p["port"]
        if number == port and p.get("protocol", "TCP") == protocol:
            return True
    return False


def allowed(policies: list[Obj], source: Peer, target: Peer, port: int, protocol: str = "TCP") -> bool:
    """Would the policies let `source` open `port` on `target` (both directions checked)?"""

    def admitted(direction: str, pod: Peer, other: Peer) -> bool:
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        relevant = [
            p
            for p in policies
            if pod.namespace == p["metadata"]["namespace"]
            and selects(p["spec"]["podSelector"], pod.labels)
            and direction in p["spec"]["policyTypes"]
        ]
        if not relevant:
            return True  # a pod no policy selects is open in that direction
        return any(
            port_matches(rule, port, protocol, target.ports)
            and (
                peers_key not in rule
                or any(peer_matches(peer, p["metadata"]["namespace"], other) for peer in rule[peers_key])
            )
            for p in relevant
            for rule in p["spec"].get(key, [])
        )

    egress_ok = source.namespace is None or admitted("Egress", source, target)
    ingress_ok = target.namespace is None or admitted("Ingress", target, source)
    return egress_ok and ingress_ok


def pod_of(template_owner: Obj, namespace: str) -> Peer:
    """The Peer a Deployment's (or Pod's) pods would be."""
    if template_owner["kind"] == "Pod":
        metadata, spec = template_owner["metadata"], template_owner["spec"]
    else:
        metadata, spec = (
            template_owner["spec"]["template"]["metadata"],
            template_owner["spec"]["template"]["spec"],
        )
    pod = Peer(namespace, metadata["labels"])
    pod.ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    return pod


def serving_deployment(namespace: str) -> Obj:
    """The serving Deployment the operator's builder makes for the shipped example."""
    doc = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
    doc["metadata"].update(namespace=namespace, uid="u-1", generation=1)
    ad = AdapterDeployment.model_validate(doc)
    ftj = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
    ftj["status"] = {
        "phase": "Succeeded",
        "result": {"adapterUri": "pvc://kubetune-output/support-intents", "digest": DIGEST},
    }
    resolved = resolve_adapter(ad, ftj, [])
    assert isinstance(resolved, ResolvedAdapter)
    config_map = build_serve_config_map(ad, doc, resolved)
    return build_deployment(ad, doc, resolved, config_map, "img:1", "IfNotPresent", "kubetune-trainer")


def test_network_policies_are_off_by_default(tmp_path: Path) -> None:
    assert not of_kind(render(tmp_path), "NetworkPolicy")
    assert not of_kind(render(tmp_path, {"networkPolicy": {"serving": {"enabled": True}}}), "NetworkPolicy")


@pytest.fixture(scope="module")
def fenced(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    values = {
        "watchNamespaces": WATCHED,
        "networkPolicy": {"enabled": True, "ingressNamespaces": [MONITORING]},
    }
    return render(tmp_path_factory.mktemp("netpol"), values)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_network_policies_are_valid(fenced: list[Obj], version: str) -> None:
    policies = of_kind(fenced, "NetworkPolicy")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in policies) == sorted(
        [
            (NAMESPACE, f"{RELEASE}-kubetune-operator"),
            (NAMESPACE, f"{RELEASE}-kubetune-test"),
            *((ns, f"{RELEASE}-kubetune-serving") for ns in [NAMESPACE, *WATCHED]),
        ]
    )
    for policy in policies:
        kubernetes_validate.validate(policy, version, strict=True)


def test_operator_pods_take_only_scrapes_and_probes(fenced: list[Obj]) -> None:
    policies = of_kind(fenced, "NetworkPolicy")
    operator = pod_of(one(fenced, "Deployment"), NAMESPACE)
    metrics, healthz = operator.ports["metrics"], operator.ports["healthz"]
    tester = pod_of(helm_test_pod(fenced), NAMESPACE)
    prometheus = Peer(MONITORING, {"app.kubernetes.io/name": "prometheus"})
    assert allowed(policies, tester, operator, metrics)  # `helm test` passes with the policies on
    assert allowed(policies, prometheus, operator, metrics)
    assert allowed(policies, prometheus, operator, healthz)
    assert not allowed(policies, prometheus, operator, 9999)
    assert not allowed(policies, Peer(WATCHED[0], {"app": "curious"}), operator, metrics)
    assert not allowed(policies, Peer(None, ip="203.0.113.7"), operator, metrics)
    # The test pod itself reaches nothing but the operator (and DNS).
    assert not allowed(policies, tester, Peer(WATCHED[0], {"app": "db"}), 5432)
    assert not allowed(policies, tester, Peer(None, ip="203.0.113.7"), 443)


def test_operator_pods_reach_only_api_server_dns_and_prometheus(fenced: list[Obj], tmp_path: Path) -> None:
    policies = of_kind(fenced, "NetworkPolicy")
    operator = pod_of(one(fenced, "Deployment"), NAMESPACE)
    dns = Peer("kube-system", {"k8s-app": "kube-dns"})
    prometheus = Peer(MONITORING, {"app.kubernetes.io/name": "prometheus"})
    api_server = Peer(None, ip="172.18.0.2")
    assert allowed(policies, operator, api_server, 6443)
    assert allowed(policies, operator, Peer(None, ip="fd00::1"), 443)  # IPv6 control planes too
    assert allowed(policies, operator, dns, 53, "UDP") and allowed(policies, operator, dns, 53, "TCP")
    assert allowed(policies, operator, prometheus, 9090)
    assert not allowed(policies, operator, dns, 80)
    assert not allowed(policies, operator, api_server, 5432)
    assert not allowed(policies, operator, Peer(WATCHED[0], {"app": "db"}), 5432)

    narrowed = of_kind(
        render(tmp_path, {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["172.18.0.0/24"]}}}),
        "NetworkPolicy",
    )
    assert allowed(narrowed, operator, api_server, 6443)
    assert not allowed(narrowed, operator, Peer(None, ip="203.0.113.7"), 443)


def test_serving_pods_the_operator_builds_take_only_their_http_port(fenced: list[Obj]) -> None:
    policies = of_kind(fenced, "NetworkPolicy")
    team = WATCHED[0]
    server = pod_of(serving_deployment(team), team)
    http = server.ports["http"]
    assert allowed(policies, Peer(team, {"app": "client"}), server, http)
    assert allowed(policies, Peer(MONITORING, {"app.kubernetes.io/name": "prometheus"}), server, http)
    assert not allowed(policies, Peer(WATCHED[1], {"app": "client"}), server, http)
    assert not allowed(policies, Peer(team, {"app": "client"}), server, http + 1)
    # Each policy selects the pods it is named for and no others.
    operator = pod_of(one(fenced, "Deployment"), NAMESPACE)
    release_server = pod_of(serving_deployment(NAMESPACE), NAMESPACE)
    for policy in of_kind(fenced, "NetworkPolicy"):
        name, selector = policy["metadata"]["name"], policy["spec"]["podSelector"]
        assert selects(selector, operator.labels) is name.endswith("-operator"), name
        assert selects(selector, release_server.labels) is name.endswith("-serving"), name


def test_serving_policy_is_optional_and_admits_extra_peers(tmp_path: Path) -> None:
    only_operator = render(tmp_path, {"networkPolicy": {"enabled": True, "serving": {"enabled": False}}})
    assert {p["metadata"]["name"] for p in of_kind(only_operator, "NetworkPolicy")} == {
        f"{RELEASE}-kubetune-operator",
        f"{RELEASE}-kubetune-test",
    }
    ingress_nginx = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    objs = render(
        tmp_path,
        {"networkPolicy": {"enabled": True, "serving": {"ingressFrom": [ingress_nginx]}}},
    )
    server = pod_of(serving_deployment(NAMESPACE), NAMESPACE)
    policies = of_kind(objs, "NetworkPolicy")
    assert allowed(policies, Peer("ingress-nginx", {"app": "controller"}), server, server.ports["http"])
    assert not allowed(policies, Peer("elsewhere", {"app": "controller"}), server, server.ports["http"])


def test_evaluator_control_an_unselected_pod_is_open(fenced: list[Obj]) -> None:
    """Control: the evaluator does not deny by default; only the policies above do."""
    policies = of_kind(fenced, "NetworkPolicy")
    assert allowed(policies, Peer("other", {"a": "b"}), Peer("other", {"c": "d"}), 5432)


# --- values the schema must reject -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"resources": {"limits": {"memory": None}}}}, "/operator/resources/limits"),
        ({"operator": {"resources": {"requests": None}}}, "/operator/resources"),
        ({"operator": {"readinessProbe": None}}, "missing property 'readinessProbe'"),
        (
            {"operator": {"livenessProbe": {"failureThreshold": 0}}},
            "/operator/livenessProbe/failureThreshold",
        ),
        ({"operator": {"readinessProbe": {"httpGet": {"path": "/"}}}}, "additional properties 'httpGet'"),
        ({"operator": {"startupProbe": {"periodSeconds": "5s"}}}, "/operator/startupProbe/periodSeconds"),
        ({"trainer": {"image": {"repository": "x", "digest": "sha256:abc"}}}, "/trainer/image/digest"),
        ({"server": {"image": {"digest": "latest"}}}, "/server/image/digest"),
        ({"server": {"image": {"digest": DIGEST}}}, "server.image.tag/digest need server.image.repository"),
        ({"server": {"image": {"tag": "1.0"}}}, "server.image.tag/digest need server.image.repository"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
        ({"networkPolicy": {"ingressNamespaces": ["Monitoring"]}}, "/networkPolicy/ingressNamespaces/0"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "/networkPolicy/apiServer/cidrs/0"),
        ({"networkPolicy": {"apiServer": {"cidrs": []}}}, "/networkPolicy/apiServer/cidrs"),
        ({"networkPolicy": {"apiServer": {"ports": [0]}}}, "/networkPolicy/apiServer/ports/0"),
        ({"networkPolicy": {"dns": {"to": [{"namespace": "kube-system"}]}}}, "/networkPolicy/dns/to/0"),
        ({"networkPolicy": {"ingressFrom": [{}]}}, "/networkPolicy/ingressFrom/0"),
        ({"networkPolicy": {"serving": {"port": 8000}}}, "additional properties 'port'"),
        ({"networkPolicy": {"egress": []}}, "additional properties 'egress'"),
    ],
)
def test_bad_hardening_values_are_rejected(tmp_path: Path, values: Obj, message: str) -> None:
    values_file = tmp_path / "bad.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(values_file))
    assert result.returncode != 0, f"accepted {values}"
    assert message in result.stderr, result.stderr


# --- a security scanner, where one is installed ----------------------------------------------------

# checkov findings the chart accepts, each for a reason.
ACCEPTED_FINDINGS = {
    # values.yaml: a CPU limit throttles Kopf's single event loop (probes included); set one if needed.
    ("CKV_K8S_11", "Deployment"),
    # The operator logs in with its ServiceAccount token; no other pod mounts one.
    ("CKV_K8S_38", "Deployment"),
    # A run-once `helm test` pod: readiness/liveness probes mean nothing there.
    ("CKV_K8S_8", "Pod"),
    ("CKV_K8S_9", "Pod"),
}


def test_checkov_finds_nothing_unexpected_with_hardening_on(tmp_path: Path) -> None:
    checkov = shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov not on PATH (pip install checkov into a venv of its own)")
    values = {
        "networkPolicy": {"enabled": True},
        "operator": {"image": {"repository": "reg.local/op", "digest": DIGEST}},
        "trainer": {"image": {"repository": "reg.local/tr", "digest": DIGEST}},
    }
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(render(tmp_path, values)))
    result = subprocess.run(
        [checkov, "-f", str(rendered), "--framework", "kubernetes", "--output", "json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    failed = {(c["check_id"], c["resource"].split(".")[0]) for c in report["results"]["failed_checks"]}
    assert report["summary"]["passed"] > 100
    assert failed - ACCEPTED_FINDINGS == set(), failed
