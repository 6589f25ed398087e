"""``ApiServer``: kmock's ``KubernetesEmulator`` made to answer like kube-apiserver.

kmock supplies the HTTP server, request recording (``server.requests``), the reaction DSL (tests
may still add ``server['get /api/v1/pods'] << 500`` to inject failures, which take precedence)
and the object array. Every Kubernetes request that no test reaction claims is served by
``_serve`` below, which replaces kmock's fallbacks because they store bodies as sent. What a
real API server does and kmock does not, and where it is added:
- discovery with kinds, scope, short names, categories, subresources; OpenAPI (``discovery.py``);
- a correct REST path parser (``paths.py``); PUT (kmock has no update-by-replace);
- server-set metadata, resourceVersion, generation, finalizers, GC (``store.py``);
- merge / strategic / JSON patch semantics (``patching.py``);
- the status subresource: writes to ``/status`` change only ``.status``; writes to the main
  resource keep the stored ``.status``; ``.status`` is dropped on create;
- admission of custom resources: defaults, pruning, schema and CEL validation (``admission.py``);
- ``kind: <Kind>List`` lists with a resourceVersion, label/field selectors (``selectors.py``),
  watches that start at a resourceVersion and end after ``timeoutSeconds``;
- server-side ``Table``s for ``kubectl get`` (``tables.py``); ``pods/<name>/log`` from ``pod_logs``;
- real ``Status`` errors (``errors.py``).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import yaml
from kmock._internal import apps, enums, k8s, parsing, references, rendering

from . import admission, discovery, patching, selectors, tables
from .errors import (
    ApiError,
    bad_request,
    conflict,
    method_not_allowed,
    no_resource,
    not_found,
    unsupported_media_type,
)
from .paths import parse_api_path
from .registry import Registry, ResourceDef
from .store import Store, WatchEvent


@dataclass
class Reply:
    """An answer with a status other than 200, or with headers, or a watch stream."""

    status: int
    body: Any
    headers: dict[str, str] | None = None


@attrs.define(kw_only=True)
class ApiServer(k8s.KubernetesEmulator):
    """An in-memory Kubernetes API server for kubectl and Kopf; see the module docstring."""

    registry: Registry = attrs.field(factory=Registry.with_builtins)
    # Text served at pods/<name>/log: key (namespace, pod) or (namespace, pod, container).
    pod_logs: dict[tuple[str, ...], str] = attrs.field(factory=dict)
    store: Store = attrs.field(init=False)
    closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        # kmock's own fallback reactions are not registered: they store bodies as sent.
        self.store = Store(self._objects, self.registry)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # Reactions a test added win; everything else is served here. (KubernetesEmulator._handle
        # is skipped: it records writes before any reaction runs.)
        if self._payloads:
            try:
                return await apps.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
        return await self._serve(request)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's entry point with our path parser (kmock's raises on ``/api/v1/namespaces``)."""
        await raw_request.read()
        try:
            request = await self._parse(raw_request)
            self._requests.append(request)
            return await self._handle(request)
        except Exception as exc:  # a server bug: report it to the client and keep it for the test
            self._errors[-1].append(exc) if self._errors else None
            return await self._render_error(exc)

    async def _parse(self, raw: aiohttp.web.BaseRequest) -> rendering.Request:
        body, text = await raw.read(), await raw.text()
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        api = parse_api_path(raw.path)
        parsed = parsing.ParsedPath(
            *((api.group, api.version, api.plural, api.namespace, api.name, api.subresource) if api else ())
        )
        method = enums.method(raw.method)
        return rendering.Request(
            id=len(self._requests),
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=dict(raw.query),
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            data=data,
            body=body,
            text=text,
            action=parsing.guess_k8s(parsed, method, dict(raw.query)),
            resource=references.resource(api.group, api.version, api.plural) if api and api.plural else None,
            namespace=api.namespace if api else None,
            name=api.name if api else None,
            subresource=api.subresource if api else None,
        )

    # -- routing -------------------------------------------------------------------------------
    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Answer with our own aiohttp responses (kmock's renderer keeps status and headers on the
        shared reaction object, so they would leak between concurrent requests)."""
        try:
            result = await self._route(request)
        except ApiError as exc:
            result = Reply(exc.code, exc.status())
        if not isinstance(result, Reply):
            result = Reply(200, result)
        if isinstance(result.body, AsyncIterator):
            return await self._stream_response(request, result)
        if isinstance(result.body, bytes):
            return aiohttp.web.Response(status=result.status, body=result.body, headers=result.headers)
        return aiohttp.web.json_response(result.body, status=result.status, headers=result.headers)

    @staticmethod
    async def _stream_response(request: rendering.Request, reply: Reply) -> aiohttp.web.StreamResponse:
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = "application/json"
        await response.prepare(request._raw_request)
        try:
            async for event in reply.body:
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response

    async def _route(self, request: rendering.Request) -> Any:
        path = request.url.path.rstrip("/") or "/"
        static = {
            "/": lambda: discovery.root_paths(self.registry),
            "/version": lambda: discovery.SERVER_VERSION,
            "/api": discovery.api_versions,
            "/apis": lambda: discovery.api_group_list(self.registry),
            "/openapi/v3": lambda: discovery.openapi_v3_index(self.registry),
            "/healthz": lambda: "ok",
            "/livez": lambda: "ok",
            "/readyz": lambda: "ok",
        }
        if path in static:
            return static[path]()
        if path == "/openapi/v2":  # an empty protobuf document: kubectl parses it, finds nothing
            return Reply(
                200, b"", {"Content-Type": "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"}
            )
        if path.startswith("/openapi/v3/"):
            api = parse_api_path(path.removeprefix("/openapi/v3"))
            if (
                api
                and api.version
                and not api.plural
                and self.registry.in_group_version(api.group, api.version)
            ):
                return discovery.openapi_v3_group_version(self.registry, api.group, api.version)
            raise no_resource()
        api = parse_api_path(path)
        if api is None:
            raise no_resource()
        if api.version is None:
            group = discovery.api_group(self.registry, api.group)
            if group is None:
                raise no_resource()
            return group
        if api.plural is None:
            listing = discovery.api_resource_list(self.registry, api.group, api.version)
            if listing is None:
                raise no_resource()
            return listing
        rdef = self.registry.get(api.group, api.version, api.plural)
        if rdef is None or (api.namespace is not None and not rdef.namespaced):
            raise no_resource()
        if api.subresource and api.subresource not in rdef.subresources:
            raise no_resource()
        return await self._serve_resource(request, rdef, api.namespace, api.name, api.subresource)

    async def _serve_resource(
        self,
        request: rendering.Request,
        rdef: ResourceDef,
        namespace: str | None,
        name: str | None,
        sub: str | None,
    ) -> Any:
        method, params = request.method.value.upper(), request.params
        if name is None:
            if method == "GET" and params.get("watch") in ("true", "1"):
                return self._watch(request, rdef, namespace)
            if method == "GET":
                return self._list(request, rdef, namespace)
            if method == "POST":
                return self._create(request, rdef, namespace)
            if method == "DELETE":
                return self._delete_collection(request, rdef, namespace)
            raise method_not_allowed(f"{method} is not supported on a collection")
        if method == "GET" and sub == "log":
            return self._pod_log(request, namespace or "", name)
        if method == "GET":
            obj = self.store.require(rdef, namespace, name)
            return self._maybe_table(request, rdef, [obj], obj["metadata"]["resourceVersion"], single=True)
        if method == "PUT":
            return self._write(request, rdef, namespace, name, sub, replace=True)
        if method == "PATCH":
            return self._write(request, rdef, namespace, name, sub, replace=False)
        if method == "DELETE" and sub is None:
            return self._delete(request, rdef, namespace, name)
        raise method_not_allowed(f"{method} is not supported here")

    # -- reads ---------------------------------------------------------------------------------
    def _selected(
        self, request: rendering.Request, rdef: ResourceDef, namespace: str | None
    ) -> list[dict[str, Any]]:
        by_labels = selectors.label_selector(request.params.get("labelSelector"))
        by_fields = selectors.field_selector(request.params.get("fieldSelector"))
        return [o for o in self.store.list(rdef, namespace) if by_labels(o) and by_fields(o)]

    def _list(self, request: rendering.Request, rdef: ResourceDef, namespace: str | None) -> Any:
        items = self._selected(request, rdef, namespace)
        return self._maybe_table(request, rdef, items, str(self.store.revision), single=False)

    def _maybe_table(
        self,
        request: rendering.Request,
        rdef: ResourceDef,
        items: list[dict[str, Any]],
        revision: str,
        *,
        single: bool,
    ) -> Any:
        if tables.wants_table(request.headers.get("Accept", "")):
            return tables.table(rdef, items, revision, request.params.get("includeObject", "Metadata"))
        if single:
            return items[0]
        return {
            "kind": f"{rdef.kind}List",
            "apiVersion": rdef.api_version,
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    def _pod_log(self, request: rendering.Request, namespace: str, name: str) -> Any:
        pod = self.store.require(self.registry.get("", "v1", "pods"), namespace, name)  # type: ignore[arg-type]
        container = request.params.get("container")
        text = self.pod_logs.get((namespace, name, container or ""), self.pod_logs.get((namespace, name), ""))
        if container and container not in [
            c.get("name") for c in (pod.get("spec") or {}).get("containers", [])
        ]:
            raise bad_request(f"container {container} is not valid for pod {name}")
        if "tailLines" in request.params:
            lines = text.splitlines(keepends=True)
            text = (
                "".join(lines[-int(request.params["tailLines"]) :])
                if int(request.params["tailLines"])
                else ""
            )
        return Reply(200, text.encode(), {"Content-Type": "text/plain"})

    def _watch(self, request: rendering.Request, rdef: ResourceDef, namespace: str | None) -> Any:
        by_labels = selectors.label_selector(request.params.get("labelSelector"))
        by_fields = selectors.field_selector(request.params.get("fieldSelector"))
        since = request.params.get("resourceVersion") or "0"
        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None

        def matches(obj: dict[str, Any]) -> bool:
            in_namespace = namespace is None or obj["metadata"].get("namespace") == namespace
            return in_namespace and by_labels(obj) and by_fields(obj)

        if since == "0":
            initial = [{"type": "ADDED", "object": o} for o in self._selected(request, rdef, namespace)]
            start = self.store.revision
        else:
            initial, start = [], int(since)
        events = self._stream(rdef, initial, start, matches, timeout)
        if tables.wants_table(request.headers.get("Accept", "")):  # kubectl get -w
            events = self._as_tables(rdef, events, request.params.get("includeObject", "Metadata"))
        return Reply(200, events)

    @staticmethod
    async def _as_tables(rdef: ResourceDef, events: AsyncIterator[Any], include: str) -> AsyncIterator[Any]:
        async for event in events:
            obj = event["object"]
            yield {**event, "object": tables.table(rdef, [obj], obj["metadata"]["resourceVersion"], include)}

    async def _stream(
        self,
        rdef: ResourceDef,
        initial: list[dict[str, Any]],
        start: int,
        matches: Any,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        for event in initial:
            yield event
        waiter = asyncio.Event()
        self.store.waiters.add(waiter)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        position = next(
            (i for i, e in enumerate(self.store.events) if e.revision > start), len(self.store.events)
        )
        try:
            while not self.closing:
                while position < len(self.store.events):
                    event = self.store.events[position]
                    position += 1
                    if event.resource == rdef.key and (translated := _for_watcher(event, matches)):
                        yield translated
                waiter.clear()
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(waiter.wait(), remaining)
                except TimeoutError:
                    return
        finally:
            self.store.waiters.discard(waiter)

    # -- writes --------------------------------------------------------------------------------
    def _body(self, request: rendering.Request) -> Any:
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if content_type == "application/vnd.kubernetes.protobuf":
            # kubectl's imperative generators (create configmap/secret/namespace) send protobuf;
            # this server speaks JSON only (kubectl apply/create -f send JSON).
            raise unsupported_media_type(content_type, "application/json, application/yaml")
        if content_type == patching.APPLY:
            return yaml.safe_load(request.text)
        if request.text and request.data is None:
            raise bad_request("the request body is not valid JSON")
        return request.data

    def _create(self, request: rendering.Request, rdef: ResourceDef, namespace: str | None) -> Any:
        body = self._body(request)
        if not isinstance(body, dict):
            raise bad_request("the body of a create must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rdef.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace or meta.get("namespace")
            if not meta["namespace"]:
                raise bad_request("the namespace of the object is required")
            if self.store.get(self.registry.get("", "v1", "namespaces"), None, meta["namespace"]) is None:  # type: ignore[arg-type]
                raise not_found("namespaces", "", meta["namespace"])
        if rdef.has_status:
            obj.pop("status", None)
        warnings = self._admit(request, rdef, obj, None)
        created = self.store.create(rdef, obj, dry_run=self._dry_run(request))
        return self._respond(201, created, warnings)

    def _admit(
        self, request: rendering.Request, rdef: ResourceDef, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> list[str]:
        meta = obj.setdefault("metadata", {})
        generated = not meta.get("name") and meta.get("generateName")
        if generated:
            meta["name"] = meta["generateName"] + "x"  # validated as a name; replaced by the store
        try:
            if rdef.schema is None:
                admission.validate(rdef, obj, old)
                return []
            return admission.admit(rdef, obj, old, request.params.get("fieldValidation"))
        finally:
            if generated:
                meta["name"] = None

    def _write(
        self,
        request: rendering.Request,
        rdef: ResourceDef,
        namespace: str | None,
        name: str,
        sub: str | None,
        *,
        replace: bool,
    ) -> Any:
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        body = self._body(request)
        old = self.store.get(rdef, namespace, name)
        if old is None:
            if replace or content_type != patching.APPLY:
                raise not_found(rdef.plural, rdef.group, name)
            return self._create(request, rdef, namespace)
        if replace:
            if not isinstance(body, dict):
                raise bad_request("the body of an update must be an object")
            new = copy.deepcopy(body)
            sent_name = (new.get("metadata") or {}).get("name")
            if sent_name != name:
                raise bad_request(
                    f"the name of the object ({sent_name}) does not match the name on the URL ({name})"
                )
            sent_rv = (new.get("metadata") or {}).get("resourceVersion")
            if not sent_rv and rdef.schema is not None:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rdef.kind}.{rdef.group} "{name}" is invalid: metadata.resourceVersion: '
                    "Invalid value: 0: must be specified for an update",
                )
        else:
            new = self._patched(rdef, old, body, content_type)
            sent_rv = (new.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rdef.plural, rdef.group, name)
        if sub == "status":
            new = (
                {**copy.deepcopy(old), "status": new.get("status")}
                if "status" in new
                else {k: v for k, v in copy.deepcopy(old).items() if k != "status"}
            )
        elif rdef.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        warnings = self._admit(request, rdef, new, old)
        updated = self.store.update(rdef, old, new, dry_run=self._dry_run(request))
        return self._respond(200, updated, warnings)

    @staticmethod
    def _patched(rdef: ResourceDef, old: dict[str, Any], body: Any, content_type: str) -> dict[str, Any]:
        if content_type == patching.JSON_PATCH:
            result = patching.json_patch(old, body)
        elif content_type in (patching.MERGE, patching.APPLY):
            result = patching.merge_patch(old, body)
        elif content_type == patching.STRATEGIC and rdef.schema is None:
            result = patching.strategic_merge_patch(old, body)
        else:
            accepted = [patching.JSON_PATCH, patching.MERGE, patching.APPLY]
            raise unsupported_media_type(content_type, ", ".join(accepted))
        if not isinstance(result, dict):
            raise bad_request("the patched object is not an object")
        return result

    def _delete(self, request: rendering.Request, rdef: ResourceDef, namespace: str | None, name: str) -> Any:
        options = request.data if isinstance(request.data, dict) else {}
        propagation = (
            options.get("propagationPolicy") or request.params.get("propagationPolicy") or "Background"
        )
        if options.get("orphanDependents") is True:
            propagation = "Orphan"
        preconditions = options.get("preconditions") or {}
        current = self.store.require(rdef, namespace, name)
        if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
            raise conflict(rdef.plural, rdef.group, name)
        return self.store.delete(rdef, namespace, name, propagation, dry_run=self._dry_run(request))

    def _delete_collection(self, request: rendering.Request, rdef: ResourceDef, namespace: str | None) -> Any:
        deleted = [
            self.store.delete(rdef, o["metadata"].get("namespace"), o["metadata"]["name"])
            for o in self._selected(request, rdef, namespace)
        ]
        return {
            "kind": f"{rdef.kind}List",
            "apiVersion": rdef.api_version,
            "metadata": {"resourceVersion": str(self.store.revision)},
            "items": deleted,
        }

    @staticmethod
    def _dry_run(request: rendering.Request) -> bool:
        return request.params.get("dryRun") == "All"

    @staticmethod
    def _respond(status: int, obj: dict[str, Any], warnings: list[str]) -> Any:
        headers = {"Warning": ", ".join(f"299 - {json.dumps(w)}" for w in warnings)} if warnings else None
        return Reply(status, obj, headers)


def _for_watcher(event: WatchEvent, matches: Any) -> dict[str, Any] | None:
    """The event as a selector-filtered watcher sees it: an object that starts matching is ADDED
    for it, one that stops matching is DELETED."""
    now = matches(event.object)
    before = event.previous is not None and matches(event.previous)
    if event.type == "MODIFIED":
        if now and not before:
            return {"type": "ADDED", "object": event.object}
        if before and not now:
            return {"type": "DELETED", "object": event.object}
    return {"type": event.type, "object": event.object} if now else None
