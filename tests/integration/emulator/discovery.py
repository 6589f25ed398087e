"""API discovery and OpenAPI documents, generated from the registry.

A real server publishes group/version resource lists with kinds, scope, verbs, short names,
categories and subresources; kmock guesses kinds by capitalising plurals and has no short names
(so ``kubectl get ftj`` fails). kubectl also reads ``/openapi/v2`` (it must parse as protobuf: an
empty document does) and ``/openapi/v3``: a PATCH operation that accepts the ``fieldValidation``
query parameter tells kubectl the server validates fields itself, so ``kubectl apply`` needs no
``--validate=false``; the CRD schemas in ``components`` feed ``kubectl explain``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .registry import VERBS, Registry, ResourceDef

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubetune-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"]}


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups = [_group(name, versions) for name, versions in registry.groups().items() if name]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.groups().get(name)
    if not name or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def _resource_entries(rdef: ResourceDef) -> list[dict[str, Any]]:
    entries = [
        {
            "name": rdef.plural,
            "singularName": rdef.singular,
            "namespaced": rdef.namespaced,
            "kind": rdef.kind,
            "verbs": list(VERBS),
            "shortNames": list(rdef.short_names),
            "categories": list(rdef.categories),
            "storageVersionHash": hashlib.sha256(
                rdef.api_version.encode() + rdef.plural.encode()
            ).hexdigest()[:12],
        }
    ]
    for sub in rdef.subresources:
        entries.append(
            {
                "name": f"{rdef.plural}/{sub}",
                "singularName": "",
                "namespaced": rdef.namespaced,
                "kind": rdef.kind,
                "verbs": SUBRESOURCE_VERBS.get(sub, ["get"]),
            }
        )
    return entries


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    defs = registry.in_group_version(group, version)
    if not defs and group:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [entry for rdef in defs for entry in _resource_entries(rdef)],
    }


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_index(registry: Registry) -> dict[str, Any]:
    paths = {}
    for group, versions in registry.groups().items():
        for version in versions:
            doc = json.dumps(openapi_v3_group_version(registry, group, version), sort_keys=True)
            digest = hashlib.sha512(doc.encode()).hexdigest()[:32].upper()
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def _schema_name(rdef: ResourceDef) -> str:
    reversed_group = ".".join(reversed(rdef.group.split("."))) if rdef.group else "io.k8s.api.core"
    return f"{reversed_group}.{rdef.version}.{rdef.kind}"


def openapi_v3_group_version(registry: Registry, group: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rdef in registry.in_group_version(group, version):
        gvk = {"group": rdef.group, "version": rdef.version, "kind": rdef.kind}
        scope = "/namespaces/{namespace}" if rdef.namespaced else ""
        ref = {"$ref": f"#/components/schemas/{_schema_name(rdef)}"}
        patch_body = {"schema": {"type": "object"}}
        paths[f"/{_gv_path(group, version)}{scope}/{rdef.plural}/{{name}}"] = {
            "get": {
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"content": {"application/json": {"schema": ref}}}},
            },
            "patch": {
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                ],
                # No strategic-merge-patch here: kubectl then builds it from its compiled-in types.
                "requestBody": {
                    "content": {
                        "application/json-patch+json": patch_body,
                        "application/merge-patch+json": patch_body,
                        "application/apply-patch+yaml": patch_body,
                    }
                },
                "responses": {"200": {"content": {"application/json": {"schema": ref}}}},
            },
        }
        schema = dict(rdef.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[_schema_name(rdef)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def root_paths(registry: Registry) -> dict[str, Any]:
    paths = {"/api", "/api/v1", "/apis", "/openapi/v2", "/openapi/v3", "/version"}
    for group, versions in registry.groups().items():
        if group:
            paths.add(f"/apis/{group}")
            paths.update(f"/apis/{group}/{v}" for v in versions)
    return {"paths": sorted(paths)}
