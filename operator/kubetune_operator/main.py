"""`kubetune operator`: settings, login, handler registration, then Kopf's loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import sys
from typing import Any

import kopf
from prometheus_client import start_http_server
from pydantic import ValidationError

from kubetune_operator import coexistence, watches
from kubetune_operator.controller import Controller
from kubetune_operator.handlers import adapterdeployment, finetunejob
from kubetune_operator.kube import Kube, KubeError
from kubetune_operator.settings import TAKEOVER_PRIORITY, OperatorSettings


def _credentials(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the current kubeconfig context."""
    info = kopf.login_with_service_account(settings=settings)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if info is not None and host and port:
        # As client-go's in-cluster config: the API server from the kubelet's Service env vars. Kopf's
        # default, https://kubernetes.default.svc, needs cluster DNS (absent with dnsPolicy: Default).
        host = f"[{host}]" if ":" in host else host
        info = dataclasses.replace(info, server=f"https://{host}:{port}")
    return info or kopf.login_with_kubeconfig(settings=settings)


def _controller(memo: kopf.Memo) -> Controller:
    ctl: Controller = memo.controller
    return ctl


def _quiet_watch_shutdown(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """At exit asyncio closes the async generators still suspended; a Kopf watch stream cut in the
    middle of its ``streaming_block`` then raises "generator didn't stop after athrow()" (seen once
    per stop at 1,000 jobs). The operator is already past its cleanup: nothing is lost, so it is a
    debug line, not an ERROR with a traceback. Everything else goes to asyncio's own handler."""
    generator = context.get("asyncgen")
    if generator is not None and getattr(generator, "__name__", "") == "infinite_watch":
        logging.getLogger("kubetune.controller").debug(
            "a Kopf watch closed at exit: %s", context.get("exception")
        )
        return
    loop.default_exception_handler(context)


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        return _credentials(settings)

    @kopf.on.startup(registry=registry)
    async def configure(
        settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any
    ) -> None:
        # Progress and diff-base live in annotations: the CRD schema prunes unknown status fields.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kubetune.dev", key="last-handled-configuration"
        )
        asyncio.get_running_loop().set_exception_handler(_quiet_watch_shutdown)
        # Post our own, meaningful events (kopf.event); not every handler log line as an event.
        settings.posting.level = logging.CRITICAL
        watches.server_side_filters(settings)
        # Runs before the peering keep-alives start: how soon a standby replaces a replica that died.
        settings.peering.lifetime = memo.settings.peering_lifetime_seconds
        info = _credentials(settings)  # the same server and token Kopf logged in with
        if info is None:
            raise kopf.PermanentError("no Kubernetes credentials: neither in-cluster nor a kubeconfig")
        memo.controller = Controller(Kube(info), memo.settings)

    @kopf.on.cleanup(registry=registry)
    async def close(memo: kopf.Memo, **_: Any) -> None:
        # Queues and log streams first (running reconciles finish), then the HTTP session.
        ctl: Controller | None = getattr(memo, "controller", None)
        if ctl is not None:
            await ctl.close()
            await ctl.kube.close()

    watches.register(registry, _controller)
    finetunejob.register(registry, _controller)
    adapterdeployment.register(registry, _controller)
    return registry


def run(
    namespaces: list[str], all_namespaces: bool, standalone: bool, overrides: dict[str, Any] | None = None
) -> int:
    """Run until stopped. ``overrides`` (the CLI's flags) win over KUBETUNE_* variables. Refuses to
    start (exit 2) while another kubetune operator reconciles some of these namespaces outside the
    Kopf peering this one takes part in (coexistence.py)."""
    try:
        settings = OperatorSettings(**(overrides or {}))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        print(f"kubetune operator: invalid settings (flags or KUBETUNE_*): {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Kopf logs "Handler ... succeeded" for every watch event of every child: warnings and errors only
    # (what the operator did is logged by kubetune.controller and posted as events).
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    mine = coexistence.operator_scope(namespaces, all_namespaces)
    info = _credentials(kopf.OperatorSettings())
    if info is not None:
        try:
            refusal = asyncio.run(
                coexistence.preflight(info, settings, mine, None if standalone else settings.peering_name)
            )
        except (kopf.TemporaryError, KubeError) as err:
            # Kopf retries an unreachable or failing API server on its own; not being able to look
            # must not keep a replica down (its peering still pauses it beside the others).
            logging.getLogger("kubetune.coexistence").warning("other operators not checked: %s", err)
            refusal = None
        if refusal is not None:
            print(f"kubetune operator: {refusal}", file=sys.stderr)
            return 2
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    # Kopf pauses every peer when two share the highest priority; distinct priorities elect one active
    # replica and keep the others standing by.
    priority = (
        settings.peering_priority
        if settings.peering_priority is not None
        else secrets.randbelow(TAKEOVER_PRIORITY)
    )
    kopf.run(
        registry=build_registry(settings),
        memo=kopf.Memo(settings=settings),
        standalone=standalone,
        peering_name=None if standalone else settings.peering_name,
        priority=priority,
        namespaces=namespaces,
        clusterwide=all_namespaces or not namespaces,
        liveness_endpoint=liveness,
    )
    return 0
