"""Object storage with the metadata, versions, events and garbage collection of a real API server.

Objects live in kmock's ``ObjectsArray`` (so ``server.objects[...]`` and its history keep working
for assertions); what kmock leaves out is added here:
- ``metadata.uid``, ``creationTimestamp``, ``namespace``; ``generateName`` -> a generated name;
- ``metadata.resourceVersion`` from one cluster-wide counter, bumped on every write, carried by
  watch events, and ``metadata.generation``: 1 on create, +1 only when something outside
  ``metadata`` (and ``status``, for kinds with a status subresource) changes, +1 when deletion starts;
- a no-op update changes nothing (no new resourceVersion, no event);
- deletion: with finalizers, a ``deletionTimestamp`` and a MODIFIED event; the object goes when
  the last finalizer is removed;
- garbage collection: deleting an owner deletes the dependents whose ``ownerReferences`` name its
  uid (at once, where a real cluster's collector does it moments later; ``Orphan`` strips the
  reference instead); deleting a namespace deletes its contents;
- an event log, so a watch from ``resourceVersion=N`` replays what happened after N.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from kmock._internal import k8s_views, references

from .errors import already_exists, not_found
from .registry import CRD_RESOURCE, Registry, ResourceDef

_IMMUTABLE_META = (
    "uid",
    "creationTimestamp",
    "name",
    "namespace",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    revision: int
    resource: tuple[str, str, str]
    type: str
    object: dict[str, Any]
    previous: dict[str, Any] | None


def spec_part(obj: dict[str, Any], rdef: ResourceDef) -> dict[str, Any]:
    """What ``generation`` tracks: everything but metadata (and status behind a subresource)."""
    skip = {"metadata", "status"} if rdef.has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip}


class Store:
    """All objects of the emulated cluster; every method runs on the server's event loop."""

    def __init__(self, objects: k8s_views.ObjectsArray, registry: Registry) -> None:
        self.objects = objects
        self.registry = registry
        self.revision = 0
        self.events: list[WatchEvent] = []
        self.waiters: set[asyncio.Event] = set()

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _key(rdef: ResourceDef, namespace: str | None, name: str) -> k8s_views.ArrayKey:
        return (
            references.resource(rdef.group, rdef.version, rdef.plural),
            namespace if rdef.namespaced else None,
            name,
        )

    def get(self, rdef: ResourceDef, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = self._key(rdef, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def require(self, rdef: ResourceDef, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.get(rdef, namespace, name)
        if obj is None:
            raise not_found(rdef.plural, rdef.group, name)
        return obj

    def list(self, rdef: ResourceDef, namespace: str | None) -> list[dict[str, Any]]:
        wanted = references.resource(rdef.group, rdef.version, rdef.plural)
        found = []
        for (resource, ns, _), obj in self.objects.items():
            if resource == wanted and not obj.deleted and (namespace is None or ns == namespace):
                found.append(copy.deepcopy(obj.raw))
        return sorted(found, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def all_objects(self) -> list[tuple[ResourceDef, dict[str, Any]]]:
        result = []
        for (resource, _, _), obj in list(self.objects.items()):
            rdef = self.registry.get(resource.group or "", resource.version or "", resource.plural or "")
            if rdef is not None and not obj.deleted:
                result.append((rdef, copy.deepcopy(obj.raw)))
        return result

    # -- writing -------------------------------------------------------------------------------
    def _next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)

    def _emit(
        self, rdef: ResourceDef, kind: str, obj: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        self.events.append(WatchEvent(self.revision, rdef.key, kind, copy.deepcopy(obj), previous))
        for waiter in self.waiters:
            waiter.set()

    def create(self, rdef: ResourceDef, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Stamp server-set metadata on an admitted object and store it."""
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta["name"]
        if self.get(rdef, meta.get("namespace"), name) is not None:
            raise already_exists(rdef.plural, rdef.group, name)
        obj["apiVersion"], obj["kind"] = rdef.api_version, rdef.kind
        if not rdef.namespaced:
            meta.pop("namespace", None)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if dry_run:
            meta["resourceVersion"] = str(self.revision)
            return obj
        meta["resourceVersion"] = self._next_revision()
        key = self._key(rdef, meta.get("namespace"), name)
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self.objects[key] = obj
        self._emit(rdef, "ADDED", obj, None)
        self._after_write(rdef, obj, None)
        return copy.deepcopy(obj)

    def update(
        self, rdef: ResourceDef, old: dict[str, Any], new: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Store ``new`` over ``old``: keep server-owned metadata, bump generation and
        resourceVersion only for real changes, finish a pending deletion when finalizers are gone."""
        new_meta = new.setdefault("metadata", {})
        for field in _IMMUTABLE_META:
            if field in old["metadata"]:
                new_meta[field] = old["metadata"][field]
            else:
                new_meta.pop(field, None)
        new["apiVersion"], new["kind"] = rdef.api_version, rdef.kind
        if new == old:
            return old
        if spec_part(new, rdef) != spec_part(old, rdef):
            new_meta["generation"] = old["metadata"].get("generation", 1) + 1
        if dry_run:
            return new
        new_meta["resourceVersion"] = self._next_revision()
        self.objects[self._key(rdef, new_meta.get("namespace"), new_meta["name"])].create(new)
        self._emit(rdef, "MODIFIED", new, old)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            self._remove(rdef, new, "Background")
        else:
            self._after_write(rdef, new, old)
        return copy.deepcopy(new)

    def delete(
        self,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        obj = self.require(rdef, namespace, name)
        if dry_run:
            return obj
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                updated = copy.deepcopy(obj)
                updated["metadata"]["generation"] = meta.get("generation", 1) + 1
                updated["metadata"]["deletionGracePeriodSeconds"] = 0
                updated["metadata"]["deletionTimestamp"] = now_rfc3339()
                updated["metadata"]["resourceVersion"] = self._next_revision()
                self.objects[self._key(rdef, namespace, name)].create(updated)
                self._emit(rdef, "MODIFIED", updated, obj)
                return updated
            return obj
        self._remove(rdef, obj, propagation)
        return obj

    def _remove(self, rdef: ResourceDef, obj: dict[str, Any], propagation: str) -> None:
        meta = obj["metadata"]
        key = self._key(rdef, meta.get("namespace"), meta["name"])
        if key not in self.objects or self.objects[key].deleted:
            return
        self.objects[key].delete()
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._next_revision()
        self._emit(rdef, "DELETED", gone, None)
        if rdef.key == CRD_RESOURCE:
            for served in self.registry.defs.values():
                if served.group == obj["spec"]["group"] and served.plural == obj["spec"]["names"]["plural"]:
                    for child in self.list(served, None):
                        self._remove(served, child, "Background")
            self.registry.remove_crd(obj)
        if rdef.key == ("", "v1", "namespaces"):
            for child_def, child in self.all_objects():
                if child["metadata"].get("namespace") == meta["name"] and child_def.namespaced:
                    self._remove(child_def, child, "Background")
        self._collect_dependents(meta["uid"], propagation)

    def _collect_dependents(self, owner_uid: str, propagation: str) -> None:
        live_uids = {o["metadata"]["uid"] for _, o in self.all_objects()}
        for rdef, obj in self.all_objects():
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            remaining = [ref for ref in refs if ref.get("uid") != owner_uid]
            if propagation == "Orphan" or any(ref.get("uid") in live_uids for ref in remaining):
                updated = copy.deepcopy(obj)
                updated["metadata"]["ownerReferences"] = remaining
                if not remaining:
                    del updated["metadata"]["ownerReferences"]
                self.update(rdef, obj, updated)
            else:
                self.delete(rdef, obj["metadata"].get("namespace"), obj["metadata"]["name"], propagation)

    def _after_write(self, rdef: ResourceDef, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """A CRD written through the API is served at once (and reported Established)."""
        if rdef.key != CRD_RESOURCE:
            return
        self.registry.add_crd(obj)
        names = obj["spec"]["names"]
        conditions = [
            {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now_rfc3339()}
            for t, r, m in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            )
        ]
        wanted = {
            "acceptedNames": names,
            "conditions": conditions,
            "storedVersions": [v["name"] for v in obj["spec"]["versions"] if v.get("storage")],
        }
        if (obj.get("status") or {}).get("acceptedNames") != names:
            updated = copy.deepcopy(obj)
            updated["status"] = wanted
            self.update(rdef, obj, updated)
