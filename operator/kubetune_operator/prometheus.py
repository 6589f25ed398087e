"""PromQL for the retraining triggers (pure) and a small Prometheus HTTP API client."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from kubetune.api.monitoring import MonitoringSpec
from kubetune.api.telemetry import ACCURACY, ACCURACY_ESTIMATED, DRIFT_SCORE, DRIFT_WINDOW, FEEDBACK_TOTAL
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
    estimated_accuracy: str
    estimated_accuracy_sustained: str


def trigger_queries(monitoring: MonitoringSpec, adapter: str, version: str) -> TriggerQueries:
    """PromQL for the active version's drift, accuracy and estimated accuracy, averaged over its pods.

    >>> trigger_queries(MonitoringSpec(), "intents", "v1").drift_now
    'avg(kubetune_drift_score{adapter="intents",version="v1",kind="embedding_cosine"})'
    """
    drift = f"avg({DRIFT_SCORE}{_selector(adapter, version, kind=monitoring.drift.kind)})"
    accuracy = f"avg({ACCURACY}{_selector(adapter, version)})"
    estimated = f"avg({ACCURACY_ESTIMATED}{_selector(adapter, version)})"
    estimated_for = monitoring.estimated_accuracy.for_seconds if monitoring.estimated_accuracy else 0
    return TriggerQueries(
        drift_now=drift,
        # lowest value over the window still above the threshold == above it the whole time
        drift_sustained=_sustained(drift, monitoring.drift.for_seconds, "min"),
        window=f"min({DRIFT_WINDOW}{_selector(adapter, version)})",
        accuracy_now=accuracy,
        accuracy_sustained=_sustained(accuracy, monitoring.accuracy.for_seconds, "max"),
        feedback=f"sum({FEEDBACK_TOTAL}{_selector(adapter, version)})",
        estimated_accuracy=estimated,
        # highest value over the window still below the threshold == below it the whole time
        estimated_accuracy_sustained=_sustained(estimated, estimated_for, "max"),
    )


def loopback_allowed() -> bool:
    """Whether a loopback prometheusUrl may be queried: inside a cluster loopback is the operator pod
    itself (its metrics and health ports), outside one it is a port-forwarded Prometheus."""
    return "KUBERNETES_SERVICE_HOST" not in os.environ


async def check_prometheus_url(base_url: str, allow_loopback: bool | None = None) -> None:
    """The monitoring.prometheusUrl rules again, plus the addresses its host resolves to: a DNS name
    pointing at 169.254.169.254 passes admission but is never queried. Service names and the private
    addresses they resolve to are allowed (Prometheus is a Service of the cluster); loopback only where
    ``loopback_allowed()``."""
    what = "monitoring.prometheusUrl"
    loopback = loopback_allowed() if allow_loopback is None else allow_loopback
    try:
        check_uri(base_url, PROMETHEUS_RULES, what, allow_loopback=loopback, allow_private=True)
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 80)
    except UnsafeUriError as err:
        raise PrometheusError(str(err)) from None
    except OSError as err:
        raise PrometheusError(f"{what} {base_url}: cannot resolve: {err}") from None
    for info in infos:
        problem = address_problem(str(info[4][0]), allow_loopback=loopback, allow_private=True)
        if problem is not None:
            raise PrometheusError(
                f"{what} {base_url}: host {host!r} resolves to {info[4][0]}, which {problem}"
            )


# Prometheus' own error types; any other text in an answer is not repeated into status, since the URL
# may name some other service whose error text is not ours to publish.
PROMETHEUS_ERROR_TYPES = frozenset(
    {"bad_data", "timeout", "canceled", "execution", "internal", "unavailable", "not_found"}
)


def answer_problem(status: int, body: object) -> str:
    """Why an answer is not a successful Prometheus query result, in our words only.

    >>> answer_problem(200, {"status": "error", "errorType": "bad_data", "error": "parse error"})
    'HTTP 200, Prometheus error bad_data'
    >>> answer_problem(401, {"message": "token abc123 expired"})
    'HTTP 401, not a Prometheus query answer'
    """
    kind = body.get("errorType") if isinstance(body, dict) else None
    if isinstance(kind, str) and kind in PROMETHEUS_ERROR_TYPES:
        return f"HTTP {status}, Prometheus error {kind}"
    return f"HTTP {status}, not a Prometheus query answer"


async def query_scalar(session: aiohttp.ClientSession, base_url: str, promql: str) -> float | None:
    """The single value of an instant query, or None when it has no data. Redirects are not followed
    (a redirect could lead anywhere the URL rules forbid)."""
    await check_prometheus_url(base_url)
    url = base_url.rstrip("/") + "/api/v1/query"
    status = 0
    try:
        async with session.get(
            url, params={"query": promql}, timeout=aiohttp.ClientTimeout(total=10), allow_redirects=False
        ) as resp:
            if 300 <= resp.status < 400:
                raise PrometheusError(f"{url}: HTTP {resp.status} redirect not followed")
            status = resp.status
            body: Any = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as err:  # connection-level text, never the answer's body
        raise PrometheusError(f"{url}: {err or type(err).__name__}") from None
    except ValueError:
        raise PrometheusError(f"{url}: HTTP {status}, not JSON (not a Prometheus query answer)") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusError(f"{url}: {answer_problem(status, body)}")
    result = body.get("data", {}).get("result", [])
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN (e.g. avg of nothing) is no data
