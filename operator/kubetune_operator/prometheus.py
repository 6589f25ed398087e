"""PromQL for the retraining triggers (pure) and a small Prometheus HTTP API client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from kubetune.api.adapterdeployment import MonitoringSpec
from kubetune.api.telemetry import ACCURACY, DRIFT_SCORE, DRIFT_WINDOW, FEEDBACK_TOTAL
from kubetune.api.uris import PROMETHEUS_RULES, UnsafeUriError, address_problem, check_uri


class PrometheusError(RuntimeError):
    """Prometheus could not be queried; triggers are skipped, never guessed."""


def _selector(adapter: str, version: str, **extra: str) -> str:
    labels = {"adapter": adapter, "version": version, **extra}
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _sustained(expr: str, seconds: int, fn: str) -> str:
    """The min/max of ``expr`` over the last ``seconds`` (a subquery): a breach held the whole time."""
    return expr if seconds <= 0 else f"{fn}_over_time(({expr})[{seconds}s:])"


@dataclass(frozen=True)
class TriggerQueries:
    drift_now: str
    drift_sustained: str
    window: str
    accuracy_now: str
    accuracy_sustained: str
    feedback: str


def trigger_queries(monitoring: MonitoringSpec, adapter: str, version: str) -> TriggerQueries:
    """PromQL for the active version's drift and accuracy, averaged over its serving pods.

    >>> trigger_queries(MonitoringSpec(), "intents", "v1").drift_now
    'avg(kubetune_drift_score{adapter="intents",version="v1",kind="embedding_cosine"})'
    """
    drift = f"avg({DRIFT_SCORE}{_selector(adapter, version, kind=monitoring.drift.kind)})"
    accuracy = f"avg({ACCURACY}{_selector(adapter, version)})"
    return TriggerQueries(
        drift_now=drift,
        # lowest value over the window still above the threshold == above it the whole time
        drift_sustained=_sustained(drift, monitoring.drift.for_seconds, "min"),
        window=f"min({DRIFT_WINDOW}{_selector(adapter, version)})",
        accuracy_now=accuracy,
        accuracy_sustained=_sustained(accuracy, monitoring.accuracy.for_seconds, "max"),
        feedback=f"sum({FEEDBACK_TOTAL}{_selector(adapter, version)})",
    )


async def check_prometheus_url(base_url: str) -> None:
    """The monitoring.prometheusUrl rules again, plus the addresses its host resolves to: a DNS name
    pointing at 169.254.169.254 passes admission but is never queried. Loopback stays allowed for an
    operator running outside the cluster next to a port-forwarded Prometheus."""
    what = "monitoring.prometheusUrl"
    try:
        check_uri(base_url, PROMETHEUS_RULES, what, allow_loopback=True)
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 80)
    except UnsafeUriError as err:
        raise PrometheusError(str(err)) from None
    except OSError as err:
        raise PrometheusError(f"{what} {base_url}: cannot resolve: {err}") from None
    for info in infos:
        problem = address_problem(str(info[4][0]), allow_loopback=True)
        if problem is not None:
            raise PrometheusError(
                f"{what} {base_url}: host {host!r} resolves to {info[4][0]}, which {problem}"
            )


async def query_scalar(session: aiohttp.ClientSession, base_url: str, promql: str) -> float | None:
    """The single value of an instant query, or None when it has no data. Redirects are not followed
    (a redirect could lead anywhere the URL rules forbid)."""
    await check_prometheus_url(base_url)
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        async with session.get(
            url, params={"query": promql}, timeout=aiohttp.ClientTimeout(total=10), allow_redirects=False
        ) as resp:
            if 300 <= resp.status < 400:
                raise PrometheusError(
                    f"{url}: HTTP {resp.status} redirect to {resp.headers.get('Location')!r} not followed"
                )
            body: dict[str, Any] = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        raise PrometheusError(f"{url}: {err}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{promql}: {body.get('errorType')}: {body.get('error')}")
    result = body.get("data", {}).get("result", [])
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN (e.g. avg of nothing) is no data
