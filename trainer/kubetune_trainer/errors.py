"""Exceptions a user can act on; the entrypoint maps each to an exit code and a termination reason."""

from __future__ import annotations


class TrainerError(Exception):
    """Base of every error the trainer reports as a one-line reason."""


class DataValidationError(TrainerError):
    """Dataset rows that cannot be trained on; the message lists 'file row N: problem' lines."""


class DataSourceError(TrainerError):
    """A dataset location that cannot be read (missing file, HTTP error, unknown format)."""


class ModelLoadError(TrainerError):
    """The base model cannot be found or loaded as asked (e.g. 4-bit without a GPU)."""


class StoppedError(TrainerError):
    """SIGTERM outside the training loop (loading, evaluating): nothing to checkpoint, stop now."""


class GateFailedError(TrainerError):
    """The adapter ended below evaluation.minAccuracy on the gate metric."""
