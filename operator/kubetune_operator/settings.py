"""Operator configuration from KUBETUNE_* environment variables (documented in README and chart)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubetune_operator.placement import PlacementPolicy

# Replicas without KUBETUNE_PEERING_PRIORITY draw a random priority below this; an operator started
# with it (`kubetune operator --peering=<chart's> --priority=TAKEOVER_PRIORITY`) outranks them all, and
# Kopf pauses them while it runs (the way to debug beside the chart's operator).
TAKEOVER_PRIORITY = 2**30


class OperatorSettings(BaseSettings):
    """Everything the operator needs that is not in a custom resource."""

    model_config = SettingsConfigDict(env_prefix="KUBETUNE_", extra="ignore")

    trainer_image: str = Field(
        "ghcr.io/kubetune/trainer:0.1.0",
        min_length=1,
        description="Image of validation and training pods (`kubetune operator --trainer-image`).",
    )
    server_image: str = Field(
        "ghcr.io/kubetune/trainer:0.1.0",
        min_length=1,
        description="Image of serving pods (`kubetune operator --server-image`).",
    )
    image_pull_policy: str = Field("IfNotPresent", description="Pull policy of trainer/server pods.")
    trainer_service_account: str = Field(
        "kubetune-trainer", description="ServiceAccount of training pods (no RBAC bindings, no token)."
    )
    validate_cpu: str = Field("500m", description="CPU request of the data-validation pod (no GPU).")
    validate_memory: str = Field("2Gi", description="Memory of the data-validation pod.")
    resync_seconds: float = Field(
        300.0,
        gt=0,
        description="Safety resync: every live FineTuneJob is reconciled once per this many seconds, "
        "spread evenly (changes of it and its children are acted on at once, from watches).",
    )
    adapter_resync_seconds: float = Field(
        10.0,
        gt=0,
        description="How often an AdapterDeployment with a canary in progress, Prometheus triggers or a "
        "retrain to judge is looked at without an event (others: once per resyncSeconds).",
    )
    child_settle_seconds: float = Field(
        0.5,
        ge=0,
        description="A FineTuneJob (AdapterDeployment) is reconciled this long after the first change of "
        "one of its Jobs or pods (serving children), so that a burst of child events costs one reconcile.",
    )
    reconcile_concurrency: int = Field(64, ge=1, description="Reconciles in flight at once, per kind.")
    progress_seconds: float = Field(
        3.0, ge=0, description="At most one status write per job per this many seconds for trainer progress."
    )
    max_log_streams: int = Field(
        1000, ge=1, description="Followed trainer logs open at once (one per running training pod)."
    )
    log_reopen_max_seconds: float = Field(
        60.0, gt=0, description="Longest wait before reopening a trainer log stream that ended or failed."
    )
    log_tail_lines: int = Field(50, ge=1, description="Trainer log lines re-read when a log stream opens.")
    peering_name: str = Field(
        "kubetune", min_length=1, description="Kopf peering name (leader election; `--peering`)."
    )
    peering_priority: int | None = Field(
        None,
        ge=0,
        description="Kopf peering priority (`--priority`); unset: random below TAKEOVER_PRIORITY, so "
        "replicas never tie (a tie pauses all).",
    )
    peering_lifetime_seconds: int = Field(
        60,
        ge=2,
        description="Kopf peering keep-alive lifetime: a replica that dies without a goodbye (SIGKILL, "
        "node loss) is presumed dead, and a standby takes over, at most this long after its last keep-alive.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Operator log level; DEBUG adds the fields of each status patch and log reopens."
    )
    allowed_priority_classes: list[str] = Field(
        [],
        description="PriorityClasses a FineTuneJob or AdapterDeployment may name (JSON list); others are "
        "refused with an InvalidSpec condition and event (system-*-critical never pass admission).",
    )
    allowed_toleration_keys: list[str] = Field(
        [],
        description="Taint keys their tolerations may name (JSON list); a control-plane key "
        "(node-role.kubernetes.io/control-plane, master) here also lets a nodeSelector pick those nodes.",
    )
    allowed_hosts: list[str] = Field(
        [],
        description="Private or cluster-internal hosts the trainer may fetch https data and models from "
        "after DNS resolution (JSON list: names, *.domain, CIDRs); passed to training pods.",
    )
    metrics_port: int = Field(8080, ge=0, description="Prometheus /metrics port (0: off).")
    liveness_port: int = Field(8081, ge=0, description="Kopf liveness /healthz port (0: off).")

    @property
    def placement(self) -> PlacementPolicy:
        return PlacementPolicy(
            frozenset(self.allowed_priority_classes), frozenset(self.allowed_toleration_keys)
        )
