"""Operator configuration from KUBETUNE_* environment variables (documented in README and chart)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Everything the operator needs that is not in a custom resource."""

    model_config = SettingsConfigDict(env_prefix="KUBETUNE_", extra="ignore")

    trainer_image: str = Field("ghcr.io/kubetune/trainer:0.1.0", description="Image of training pods.")
    server_image: str = Field("ghcr.io/kubetune/trainer:0.1.0", description="Image of serving pods.")
    image_pull_policy: str = Field("IfNotPresent", description="Pull policy of trainer/server pods.")
    trainer_service_account: str = Field(
        "kubetune-trainer", description="ServiceAccount of training pods (no RBAC bindings, no token)."
    )
    validate_cpu: str = Field("500m", description="CPU request of the data-validation pod (no GPU).")
    validate_memory: str = Field("2Gi", description="Memory of the data-validation pod.")
    resync_seconds: float = Field(10.0, gt=0, description="How often child state is re-read per job.")
    log_tail_lines: int = Field(50, ge=1, description="Pod log lines read for progress.")
    peering_name: str = Field("kubetune", description="Kopf peering name (leader election).")
    peering_priority: int | None = Field(
        None,
        ge=0,
        description="Kopf peering priority; unset: random, so replicas never tie (a tie pauses all).",
    )
    peering_lifetime_seconds: int = Field(
        60,
        ge=2,
        description="Kopf peering keep-alive lifetime: a replica that dies without a goodbye (SIGKILL, "
        "node loss) is presumed dead, and a standby takes over, at most this long after its last keep-alive.",
    )
    metrics_port: int = Field(8080, ge=0, description="Prometheus /metrics port (0: off).")
    liveness_port: int = Field(8081, ge=0, description="Kopf liveness /healthz port (0: off).")
