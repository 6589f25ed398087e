"""The kubetune API: pydantic models of both CRDs and of the trainer config.

These models are the single source of truth; ``kubetune.api.crdgen`` turns them into ``crds/*.yaml``.
This package imports nothing else of ours.
"""

from kubetune.api.adapterdeployment import AdapterDeployment, AdapterDeploymentSpec
from kubetune.api.common import GROUP, VERSION
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.trainconfig import TrainConfig

__all__ = [
    "GROUP",
    "VERSION",
    "AdapterDeployment",
    "AdapterDeploymentSpec",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "TrainConfig",
]
