"""TrainConfig: the contract between the operator (writes it into a ConfigMap) and the trainer (reads it).

It is the FineTuneJob spec's training half plus where each ``pvc://`` claim and ConfigMap is mounted,
so the same file drives a pod (operator-written mounts) and a laptop (``--pvc claim=dir``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubetune.api.common import DNS1123_LABEL, DNS1123_SUBDOMAIN, ApiModel, OutputUri
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


def run_output_uri(output_uri: str, job_name: str, run_id: str | None) -> str:
    """Where one run writes its adapter, checkpoints and metrics: ``<output.uri>/<job>/<run>``.

    A run is one FineTuneJob object (``run_id`` is its metadata.uid), so a pod or training Job that
    resumes after a preemption finds its checkpoints again, while a FineTuneJob deleted and created
    again (a re-run, a new uid) never writes over an adapter an AdapterDeployment may still roll back
    to. Without a run id (a local ``kubetune train``) the run writes into ``output.uri`` itself.

    >>> run_output_uri("pvc://out/intents/", "support-intents", "3f9a1c2e-0b1d")
    'pvc://out/intents/support-intents/3f9a1c2e-0b1d'
    """
    if run_id is None:
        return output_uri
    return f"{output_uri.rstrip('/')}/{job_name}/{run_id}"


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
    run_id: Annotated[
        str | None,
        Field(
            description="This run's id (the FineTuneJob's metadata.uid, set by the operator): the run "
            "writes to <outputUri>/<name>/<runId>/, never over another run's adapter; unset: into "
            "outputUri itself.",
            max_length=63,
            pattern=DNS1123_LABEL,
        ),
    ] = None
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
        run_id: str | None = None,
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
            run_id=run_id,
            pvc_mounts=pvc_mounts,
            configmap_mounts=configmap_mounts or {},
            **extra,
        )

    @property
    def run_uri(self) -> str:
        """Where this run writes (run_output_uri); the adapter is its adapter/ subfolder."""
        return run_output_uri(self.output_uri, self.name, self.run_id)

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
