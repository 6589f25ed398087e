"""The resources the emulated API server serves: built-in kinds plus the CRDs from ``crds/``.

A real API server knows every resource's kind, scope, short names, verbs and subresources and
publishes them through discovery; kmock guesses them from the objects it holds. Here they are
declared once, so discovery, routing, status handling and admission read the same table.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

import yaml

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceDef:
    """One served resource (one group/version/plural)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # openAPIV3Schema of a custom resource; None = no admission (built-ins are stored as sent).
    schema: dict[str, Any] | None = None
    printer_columns: tuple[dict[str, Any], ...] = ()

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)


def _core(plural: str, kind: str, **kwargs: Any) -> ResourceDef:
    return ResourceDef("", "v1", plural, kind, **kwargs)


BUILTINS: tuple[ResourceDef, ...] = (
    _core("namespaces", "Namespace", namespaced=False, short_names=("ns",), subresources=("status",)),
    _core("configmaps", "ConfigMap", short_names=("cm",)),
    _core("secrets", "Secret"),
    _core("services", "Service", short_names=("svc",), categories=("all",), subresources=("status",)),
    _core("pods", "Pod", short_names=("po",), categories=("all",), subresources=("status", "log")),
    _core("events", "Event", short_names=("ev",)),
    _core("serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _core("persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",), subresources=("status",)),
    ResourceDef("batch", "v1", "jobs", "Job", categories=("all",), subresources=("status",)),
    ResourceDef(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        categories=("all",),
        subresources=("status",),
    ),
    ResourceDef(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        short_names=("pdb",),
        subresources=("status",),
    ),
    ResourceDef("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    ResourceDef("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceDef("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
    ResourceDef("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
    ResourceDef(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        subresources=("status",),
    ),
)

CRD_RESOURCE = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def defs_from_crd(crd: dict[str, Any]) -> list[ResourceDef]:
    """The served versions of a CustomResourceDefinition object, as resource definitions."""
    spec = crd["spec"]
    names = spec["names"]
    defs = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = tuple(sorted(version.get("subresources") or {}))
        defs.append(
            ResourceDef(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=subresources,
                schema=(version.get("schema") or {}).get("openAPIV3Schema")
                or {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            )
        )
    return defs


def load_crd_files(directory: pathlib.Path) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition document in ``directory/*.yaml``."""
    crds = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


@dataclass
class Registry:
    """Resource definitions by (group, version, plural), with lookups kubectl-style."""

    defs: dict[tuple[str, str, str], ResourceDef] = field(default_factory=dict)

    @classmethod
    def with_builtins(cls) -> Registry:
        registry = cls()
        for rdef in BUILTINS:
            registry.add(rdef)
        return registry

    def add(self, rdef: ResourceDef) -> None:
        self.defs[rdef.key] = rdef

    def add_crd(self, crd: dict[str, Any]) -> None:
        """Serve (or re-serve after an update) the versions of a CRD, as the real server does."""
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for key in [k for k in self.defs if k[0] == group and k[2] == plural]:
            del self.defs[key]
        for rdef in defs_from_crd(crd):
            self.add(rdef)

    def remove_crd(self, crd: dict[str, Any]) -> None:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for key in [k for k in self.defs if k[0] == group and k[2] == plural]:
            del self.defs[key]

    def get(self, group: str, version: str, plural: str) -> ResourceDef | None:
        return self.defs.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceDef | None:
        group, _, version = api_version.rpartition("/")
        for rdef in self.defs.values():
            if (rdef.group, rdef.version, rdef.kind) == (group, version, kind):
                return rdef
        return None

    def groups(self) -> dict[str, list[str]]:
        """Group name -> served versions (core group is ``""``), in a stable order."""
        result: dict[str, list[str]] = {}
        for group, version, _ in self.defs:
            versions = result.setdefault(group, [])
            if version not in versions:
                versions.append(version)
        return result

    def in_group_version(self, group: str, version: str) -> list[ResourceDef]:
        return [r for r in self.defs.values() if (r.group, r.version) == (group, version)]
