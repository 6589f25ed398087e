"""What `kubetune train` and `kubetune validate-data` run, locally and as the pod entrypoint.

Exit codes (the operator reads them with the termination message):
  0 succeeded · 1 unexpected error · 2 invalid data or config · 3 gate failed (below minAccuracy)
  143 stopped by SIGTERM after writing a checkpoint (preemption: the next pod resumes)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kubetune.api import exitcodes
from kubetune.api.finetunejob import TrainResult
from kubetune.api.trainconfig import TrainConfig
from kubetune_trainer.errors import (
    DataSourceError,
    DataValidationError,
    GateFailedError,
    StoppedError,
    TrainerError,
)
from kubetune_trainer.logs import EventLog

# The contract with the Job's podFailurePolicy lives in kubetune.api.exitcodes.
EXIT_OK, EXIT_ERROR = exitcodes.OK, 1
EXIT_INVALID_DATA, EXIT_GATE, EXIT_PREEMPTED = (
    exitcodes.INVALID_DATA,
    exitcodes.GATE_FAILED,
    exitcodes.PREEMPTED,
)
REASON_LIMIT = 3000  # the whole termination message must stay under 4 KiB
CLASSIFICATION_METRICS = ["accuracy", "macro_f1"]
CAUSAL_METRICS = ["loss", "perplexity", "json_validity", "intent_exact_match"]


def _report_failure(log: EventLog, reason: str, main: bool = True, **result: Any) -> None:
    """Only rank 0 (`main`) writes the termination message; the others just exit."""
    from kubetune_trainer.artifacts import write_termination_message

    outcome = TrainResult(reason=reason[:REASON_LIMIT], **result)
    if main:
        write_termination_message(outcome)
    log.result(outcome.wire())
    log.say(f"kubetune: {reason}")


def run_validate(config: TrainConfig, log_format: str) -> int:
    """Read and check every dataset row; fast, no model. The operator's ValidatingData phase."""
    from kubetune_trainer.artifacts import write_termination_message
    from kubetune_trainer.data import load_task_data

    log = EventLog(log_format)
    log.phase("ValidatingData")
    try:
        data = load_task_data(config)
    except (DataValidationError, DataSourceError) as err:
        _report_failure(log, f"InvalidData: {err}")
        return EXIT_INVALID_DATA
    log.emit(
        "data",
        trainRows=len(data.train),
        validationRows=len(data.validation),
        labels=data.labels,
        datasetDigest=data.digest,
    )
    log.say(
        f"{len(data.train)} training rows, {len(data.validation)} validation rows "
        f"({data.validation_source}), dataset {data.digest}"
    )
    write_termination_message(TrainResult(dataset_digest=data.digest))
    return EXIT_OK


def run_train(config: TrainConfig, log_format: str) -> int:
    """Validate data, evaluate the base, train (resuming), evaluate, write artifacts, apply the gate."""
    if not _is_hub_id(config.base_model.name):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local models never touch the network
    from kubetune_trainer.train import StopRequest, start_processes

    processes = start_processes()  # torchrun: one per GPU; rank 0 alone logs and writes
    main = processes.is_main_process
    log = EventLog(log_format) if main else EventLog("json", stream=open(os.devnull, "w"))  # noqa: SIM115
    try:
        return _train(config, log, StopRequest().install(), processes)
    except (DataValidationError, DataSourceError) as err:
        _report_failure(log, f"InvalidData: {err}", main)
        return EXIT_INVALID_DATA
    except GateFailedError:
        return EXIT_GATE
    except StoppedError as err:
        _report_failure(log, f"Preempted: {err}", main)
        return EXIT_PREEMPTED
    except TrainerError as err:
        _report_failure(log, f"{type(err).__name__.removesuffix('Error')}: {err}", main)
        return EXIT_ERROR
    except Exception as err:  # reported to the operator, then re-raised with its traceback
        _report_failure(log, f"{type(err).__name__}: {err}", main)
        raise


def _is_hub_id(name: str) -> bool:
    return "://" not in name and not name.startswith("/")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _train(config: TrainConfig, log: EventLog, stop: Any, processes: Any) -> int:
    from peft import PeftModel

    from kubetune_trainer import artifacts, evaluate
    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.checkpoint import Progress, list_checkpoints, load_checkpoint
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.models import (
        apply_lora,
        classifier_pooling,
        init_head_from_probe,
        load_tokenizer_and_model,
    )
    from kubetune_trainer.train import broadcast_from_main, setup, train

    _quiet_transformers()
    from transformers import set_seed

    log.phase("ValidatingData")
    data = load_task_data(config)
    out = artifacts.output_dir(config)
    out.mkdir(parents=True, exist_ok=True)

    set_seed(config.training.seed)
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    pooling = classifier_pooling(base)
    main = processes.is_main_process
    champion_dir = (
        artifacts.champion_adapter(config, data.labels, pooling)
        if config.evaluation.champion_uri and main
        else None
    )
    max_len = config.training.max_seq_length
    train_seqs = tokenize_examples(data.train, tokenizer, max_len)
    val_examples = data.validation[: config.evaluation.max_samples]
    val_seqs = tokenize_examples(val_examples, tokenizer, max_len)
    model: PeftModel = apply_lora(base, config)
    device = processes.device
    model.to(device)

    def score(stage: str) -> evaluate.Evaluation:
        if config.task.type == "sequence-classification":
            result = evaluate.evaluate_classifier(
                model, val_seqs, data.labels, tokenizer.pad_token_id, device
            )
        else:
            result = evaluate.evaluate_causal(model, tokenizer, val_examples, val_seqs, device)
        log.eval(stage, result.metrics)
        return result

    progress = Progress()
    newest = list_checkpoints(out)[-1:] if main else []
    checkpoint = broadcast_from_main(processes, str(newest[0]) if newest else None)
    if checkpoint is None and main:  # a fresh run: score the base; LP-FT head (DDP copies it to all)
        log.phase("Evaluating")
        lp_ft = pooling == "mean"  # the probe's input is exactly what the head reads: start from it
        with model.disable_adapter():
            progress.before = score("before").metrics
            probe = None
            if config.task.type == "sequence-classification" and (config.evaluation.baseline or lp_ft):
                probe = _linear_probe(model, train_seqs, val_seqs, data.labels, tokenizer, device)
        if probe is not None and config.evaluation.baseline:
            progress.baseline = probe.metrics
            log.eval("baseline", progress.baseline)
        if probe is not None and lp_ft:
            init_head_from_probe(model, probe.coef, probe.intercept, probe.classes)
            log.emit("head", init="linear-probe", pooling=pooling)
    run = setup(model, train_seqs, tokenizer.pad_token_id, config.training, config.task.type, processes)
    if checkpoint is not None:  # every rank reads rank 0's choice (the output location is shared)
        progress = load_checkpoint(Path(checkpoint), model, run.optimizer, run.scheduler)
        log.emit("resume", step=progress.step, checkpoint=checkpoint)
        log.say(f"resuming from {checkpoint} (step {progress.step}/{run.total_steps})")

    log.phase("Training")
    started = time.monotonic()
    if not train(run, progress, log, out, stop):
        _report_failure(
            log,
            f"Preempted: stopped by SIGTERM, checkpoint at step {progress.step} of {run.total_steps}",
            main,
            dataset_digest=data.digest,
        )
        return EXIT_PREEMPTED
    train_seconds = time.monotonic() - started
    if not main:  # rank 0 evaluates and writes everything from here on
        return EXIT_OK

    log.phase("Evaluating")
    after = score("after")
    digest = artifacts.write_adapter(model, out, config, data.labels, pooling)
    champion: dict[str, float] = {}
    if champion_dir is not None:  # the adapter serving now, scored on the same rows with the same metrics
        model.load_adapter(str(champion_dir), adapter_name="champion", is_trainable=False)
        model.set_adapter("champion")
        champion = score("champion").metrics
    report = {
        "name": config.name,
        "task": config.task.type,
        "datasetDigest": data.digest,
        "trainRows": len(data.train),
        "validationRows": len(val_seqs),
        "validationSource": data.validation_source,
        "targetModules": sorted(model.peft_config["default"].target_modules),
        "steps": progress.step,
        "trainSeconds": train_seconds,
        "before": progress.before,
        "baseline": progress.baseline,
        "after": after.metrics,
        "champion": champion,
        "championUri": config.evaluation.champion_uri,
        "classifierPooling": pooling if data.labels else None,
        "headInit": "linear-probe" if data.labels and pooling == "mean" else "random",
        "confusionMatrix": after.confusion_matrix,
        "labels": data.labels,
        "metricNames": [
            m for m in (CLASSIFICATION_METRICS if data.labels else CAUSAL_METRICS) if m in after.metrics
        ],
        "gate": {"metric": config.gate_metric, "min": config.evaluation.min_accuracy},
    }
    artifacts.write_report(
        out,
        config,
        report,
        progress.losses,
        artifacts.reference_stats(after, data.labels, config.training.seed),
    )
    if config.output_uri.startswith("s3://"):
        artifacts.upload_to_s3(out, config.output_uri)

    metrics = {
        f"{stage}_{k}": float(v)
        for stage in ("before", "baseline", "after", "champion")
        for k, v in report[stage].items()
    }
    metrics |= {
        "train_loss": progress.losses[-1] if progress.losses else float("nan"),
        "train_steps": float(progress.step),
        "train_seconds": round(train_seconds, 1),
    }
    reason = gate_failure(config, after.metrics)
    result = TrainResult(
        adapter_uri=config.output_uri.rstrip("/") + "/adapter",
        digest=digest,
        dataset_digest=data.digest,
        metrics=metrics,
        reason=reason,
    )
    artifacts.write_termination_message(result)
    log.result(result.wire())
    log.table(
        [
            ("before", progress.before),
            ("baseline", progress.baseline),
            ("after", after.metrics),
            *([("champion", champion)] if champion else []),
        ],
        report["metricNames"],
    )
    log.say(f"adapter: {out / 'adapter'} ({digest}); {progress.step} steps in {train_seconds:.0f} s")
    if reason:
        log.say(f"kubetune: {reason}")
        raise GateFailedError(reason)
    return EXIT_OK


def gate_failure(config: TrainConfig, after: dict[str, float]) -> str | None:
    """The reason the gate fails, or None when it passes (or no minimum is set)."""
    minimum = config.evaluation.min_accuracy
    if minimum is None:
        return None
    metric = config.gate_metric
    if metric not in after:
        return f"GateFailed: gate metric {metric} was not computed for this task (have: {', '.join(after)})"
    if after[metric] < minimum:
        return f"GateFailed: {metric} {after[metric]:.4f} is below evaluation.minAccuracy {minimum:.4f}"
    return None


def _linear_probe(
    model: Any, train_seqs: list[Any], val_seqs: list[Any], labels: list[str], tokenizer: Any, device: Any
) -> Any:
    import numpy as np

    from kubetune_trainer.evaluate import classify, linear_probe

    _, train_emb = classify(model, train_seqs, tokenizer.pad_token_id, device)
    _, val_emb = classify(model, val_seqs, tokenizer.pad_token_id, device)
    return linear_probe(
        train_emb,
        np.array([s.labels for s in train_seqs]),
        val_emb,
        np.array([s.labels for s in val_seqs]),
        len(labels),
    )
