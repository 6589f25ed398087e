"""TrainConfig: the contract between the operator (writes it into a ConfigMap) and the trainer (reads it).

It is the FineTuneJob spec's training half plus where each ``pvc://`` claim and ConfigMap is mounted,
so the same file drives a pod (operator-written mounts) and a laptop (``--pvc claim=dir``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubetune.api.common import DNS1123_SUBDOMAIN, ApiModel, OutputUri
from kubetune.api.finetunejob import (
    BaseModelSpec,
    DatasetSpec,
    EvalMetric,
    EvaluationSpec,
    FineTuneJobSpec,
    LoraSpec,
    TaskSpec,
    TrainingSpec,
)


class UnmountedLocationError(ValueError):
    """A pvc:// or configmap:// location whose volume is not mounted where the trainer runs."""


class TrainConfig(ApiModel):
    """Everything the trainer needs; no Kubernetes object is read at run time."""

    name: Annotated[str, Field(description="FineTuneJob name (model card, logs).", pattern=DNS1123_SUBDOMAIN)]
    base_model: BaseModelSpec
    task: TaskSpec
    dataset: DatasetSpec
    lora: LoraSpec = LoraSpec()
    training: TrainingSpec
    evaluation: EvaluationSpec = EvaluationSpec()
    output_uri: OutputUri
    pvc_mounts: Annotated[
        dict[str, str], Field(description="PVC claim name -> directory where it is mounted.")
    ] = {}
    configmap_mounts: Annotated[
        dict[str, str], Field(description="ConfigMap name -> directory where it is mounted.")
    ] = {}
    cache_dir: Annotated[
        str, Field(description="Where converted weights (e.g. dequantized GGUF) are cached.")
    ] = "~/.cache/kubetune"

    @classmethod
    def from_spec(
        cls,
        name: str,
        spec: FineTuneJobSpec,
        pvc_mounts: dict[str, str],
        configmap_mounts: dict[str, str] | None = None,
        cache_dir: str | None = None,
    ) -> TrainConfig:
        extra = {"cache_dir": cache_dir} if cache_dir else {}
        return cls(
            name=name,
            base_model=spec.base_model,
            task=spec.task,
            dataset=spec.dataset,
            lora=spec.lora,
            training=spec.training,
            evaluation=spec.evaluation,
            output_uri=spec.output.uri,
            pvc_mounts=pvc_mounts,
            configmap_mounts=configmap_mounts or {},
            **extra,
        )

    @property
    def gate_metric(self) -> EvalMetric:
        if self.evaluation.metric is not None:
            return self.evaluation.metric
        return "accuracy" if self.task.type == "sequence-classification" else "intent_exact_match"

    def locate(self, uri: str) -> str:
        """Map a pvc:// or configmap:// URI to a local path; other URIs are returned unchanged."""
        for scheme, mounts in (("pvc://", self.pvc_mounts), ("configmap://", self.configmap_mounts)):
            if uri.startswith(scheme):
                volume, _, rest = uri[len(scheme) :].partition("/")
                if volume not in mounts:
                    raise UnmountedLocationError(
                        f"{uri}: {scheme[:-3]} {volume!r} is not mounted here "
                        f"(locally pass --pvc {volume}=<dir>)"
                    )
                return f"{mounts[volume].rstrip('/')}/{rest}" if rest else mounts[volume]
        return uri
