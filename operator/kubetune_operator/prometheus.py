"""PromQL for the retraining triggers (pure) and a small Prometheus HTTP API client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from kubetune.api.adapterdeployment import MonitoringSpec
from kubetune.api.telemetry import ACCURACY, DRIFT_SCORE, DRIFT_WINDOW, FEEDBACK_TOTAL


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


async def query_scalar(session: aiohttp.ClientSession, base_url: str, promql: str) -> float | None:
    """The single value of an instant query, or None when it has no data."""
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        async with session.get(
            url, params={"query": promql}, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
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
