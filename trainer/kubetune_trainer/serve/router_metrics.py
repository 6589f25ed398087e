"""The model-server metrics that routers built for vLLM read (Gateway API Inference Extension / llm-d,
AIBrix), under vLLM's names, beside kubetune's own on /metrics:

  vllm:num_requests_running   requests in the running batch (at most maxBatchSize rows)
  vllm:num_requests_waiting   admitted requests waiting for a place in it
  vllm:kv_cache_usage_perc    the batch's utilisation, 0-1 (kubetune has no paged KV cache: running
                              rows / maxBatchSize is what fills up as vLLM's cache does)
  vllm:lora_requests_info     value: the time of the last refresh; labels running_lora_adapters (every
                              adapter loaded and ready, not only those with requests in flight:
                              vLLM #45325), waiting_lora_adapters (those with requests waiting) and
                              max_lora (adapters one batch can mix: any row may carry its own)

Computed when /metrics is scraped, from what the server already counts (admitted requests, per-adapter
in-flight requests, the loaded adapters).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Gauge

from kubetune_trainer.serve.state import ServerState


def in_flight_by_adapter(gauge: Gauge) -> dict[str, float]:
    """adapter name -> requests in flight, read off the in-flight gauge's samples."""
    counts: dict[str, float] = {}
    for family in gauge.collect():
        for sample in family.samples:
            name = sample.labels.get("adapter", "")
            counts[name] = counts.get(name, 0.0) + sample.value
    return counts


def split_running(admitted: int, batch_rows: int) -> tuple[int, int]:
    """(running, waiting) of `admitted` requests when the batch takes `batch_rows`.

    >>> split_running(11, 8), split_running(3, 8)
    ((8, 3), (3, 0))
    """
    running = min(admitted, batch_rows)
    return running, admitted - running


class RouterMetrics:
    """vLLM-named gauges of one server, refreshed before each scrape."""

    def __init__(self, registry: CollectorRegistry, states: Sequence[ServerState]) -> None:
        self.states = states
        self.running = Gauge(
            "vllm:num_requests_running", "Requests in the running batch.", ["model_name"], registry=registry
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting for the batch.", ["model_name"], registry=registry
        )
        self.usage = Gauge(
            "vllm:kv_cache_usage_perc",
            "Batch utilisation, 0-1: running rows / maxBatchSize (kubetune keeps no paged KV cache).",
            ["model_name"],
            registry=registry,
        )
        self.lora = Gauge(
            "vllm:lora_requests_info",
            "Running stats on LoRA requests (value: last refresh time).",
            ["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
            registry=registry,
        )

    def refresh(self) -> None:
        first = self.states[0]
        model = first.config.base_model.name
        rows = sum(s.config.max_batch_size for s in self.states)
        running, waiting = split_running(first.admission.held, rows)
        self.running.labels(model).set(running)
        self.waiting.labels(model).set(waiting)
        self.usage.labels(model).set(running / rows)
        loaded = sorted({a.name for s in self.states for a in s.registry.served()})
        busy = in_flight_by_adapter(first.metrics.in_flight)
        queued = [name for name in loaded if waiting and busy.get(name, 0) > 0]
        self.lora.clear()  # one series: the label values change as adapters come and go
        self.lora.labels(",".join(loaded), ",".join(queued), str(rows)).set(time.time())
