"""Exit codes of `kubetune train` / `validate-data`: the contract behind the Job's podFailurePolicy.

Codes listed in NON_RETRYABLE fail the Job at once (a retry cannot fix bad config, bad data, a base
model that cannot be found or loaded, or a failed quality gate); any other non-zero code is retried
up to spec.backoffLimit.
"""

from __future__ import annotations

OK = 0
USAGE = 2  # config/manifest invalid
INVALID_DATA = 3  # a dataset row or source is unusable
GATE_FAILED = 4  # adapter below evaluation.minAccuracy
MODEL_LOAD = 5  # base model not found / not loadable as asked (missing pkg://, bad path, 4bit without GPU)
PREEMPTED = 143  # SIGTERM: checkpoint written, exit; the pod is retried (DisruptionTarget or not)

NON_RETRYABLE = (USAGE, INVALID_DATA, GATE_FAILED, MODEL_LOAD)
