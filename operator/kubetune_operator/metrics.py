"""Operator metrics for Prometheus (bounded labels only)."""

from __future__ import annotations

from prometheus_client import Counter

RECONCILES = Counter("kubetune_operator_reconciles", "FineTuneJob reconcile passes", ["result"])
