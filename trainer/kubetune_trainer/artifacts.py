"""What a finished run leaves behind, and how it tells the operator.

<run>/adapter/{adapter_model.safetensors, adapter_config.json, kubetune.json}   unmerged LoRA adapter
              (+ heads.safetensors for training.recipe heads); its digest covers every one (adapter_digest)
<run>/checkpoints/step-N    checkpoints a resumed pod of the same run continues from
<run>/metrics.json          before / baseline / after metrics and the loss of every step
<run>/README.md             model card
<run>/loss_curve.png        training loss per step
<run>/reference_stats.json  drift reference for the server (predictions, confidence, embeddings, lengths)
/dev/termination-log        TrainResult JSON (<= 4 KiB), read by the operator from the pod status

<run> is TrainConfig.run_uri: <output.uri>/<job>/<FineTuneJob uid> in a cluster (one folder per run,
so an adapter once served is never overwritten), output.uri itself for a local run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kubetune.api.finetunejob import TrainResult
from kubetune.api.trainconfig import TrainConfig
from kubetune.api.uris import CHAMPION_RULES, OUTPUT_RULES, UnsafeUriError, check_uri
from kubetune_trainer.decoder_heads import HEADS_FILE
from kubetune_trainer.errors import ModelLoadError
from kubetune_trainer.evaluate import Evaluation
from kubetune_trainer.fetch import s3_endpoint

TERMINATION_LOG_DEFAULT = "/dev/termination-log"
TERMINATION_LIMIT = 4096
EMBEDDING_SAMPLE = 256
# Every file a server reads from an adapter folder (peft's two, kubetune.json with labels, temperature
# and answer schema, the heads recipe's heads): the adapter digest covers each, present or absent.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "kubetune.json", HEADS_FILE)
HISTOGRAM_BINS = 10


def output_dir(config: TrainConfig) -> Path:
    """pvc:// outputs are written in place; s3:// outputs are staged under cache_dir, then uploaded."""
    uri = config.run_uri
    if uri.startswith("s3://"):
        staged = uri[len("s3://") :].rstrip("/").replace("/", "_")
        return Path(os.path.expanduser(config.cache_dir)) / "outputs" / staged
    return Path(config.locate(uri))


def adapter_uri(config: TrainConfig) -> str:
    """The adapter's location as the operator and the server address it (reported in TrainResult)."""
    return config.run_uri.rstrip("/") + "/adapter"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def adapter_manifest(folder: Path) -> str:
    """One line "<file> <sha256:hex or ->" per ADAPTER_FILES entry, in order: what adapter_digest hashes."""
    files = [folder / name for name in ADAPTER_FILES]
    return "".join(f"{f.name} {file_digest(f) if f.is_file() else '-'}\n" for f in files)


def adapter_digest(folder: Path) -> str:
    """The adapter's digest (TrainResult.digest, checked by every server before it serves the folder):
    sha256 of adapter_manifest, so a changed, truncated, missing or added served file changes it, not
    only a changed adapter_model.safetensors."""
    return f"sha256:{hashlib.sha256(adapter_manifest(folder).encode()).hexdigest()}"


def engine_base_name(config: TrainConfig) -> str:
    """The base as an OpenAI-compatible engine names it, for adapter_config.json's
    base_model_name_or_path: vLLM names the base by the model argument of `vllm serve` (which the
    operator renders from the same baseModel.name) and its LoRA resolver takes an adapter only when
    that field equals it. A hub id as written; a pvc:// base as its mount path (the same
    /mnt/kubetune/pvc/<claim>/... in training and serving pods); pkg:// and GGUF bases as written,
    never the site-packages or dequantized cache folder the trainer happened to load from. Our own
    server ignores the field (it loads the adapter onto the base it already holds)."""
    name = config.base_model.name
    return config.locate(name) if name.startswith("pvc://") else name.removeprefix("file://")


def write_adapter(
    model: Any,
    out: Path,
    config: TrainConfig,
    labels: list[str],
    pooling: str,
    temperature: float | None = None,
    answer_schema: Any = None,
    prompt: dict[str, Any] | None = None,
) -> str:
    """Save the unmerged adapter (never merged here: merging a big base is what OOMs); returns its digest
    (adapter_digest: compute it again after adding files, e.g. heads_recipe.write_heads).

    `pooling` (classification: "mean" or "model", see models.classifier_pooling) says what the head
    reads; an adapter only fits a base loaded with the same pooling. `temperature` (classification,
    temperature.py) is what the server divides the logits by. `answer_schema` (causal-lm,
    closed_set.AnswerSchema) makes the server answer among the allowed values, as evaluated; `prompt`
    (prompt_frame.prompt_frame) is how /v1/classify frames a bare input as the training rows did."""
    adapter = out / "adapter"
    model.save_pretrained(str(adapter), safe_serialization=True, selected_adapters=["default"])
    # Rewritten after saving, not set on the peft config before: peft probes the hub with that field.
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    peft_config["base_model_name_or_path"] = engine_base_name(config)
    (adapter / "adapter_config.json").write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    (adapter / "kubetune.json").write_text(
        json.dumps(
            {
                "baseModel": config.base_model.wire(),
                "task": config.task.type,
                "labels": labels,
                "maxSeqLength": config.training.max_seq_length,
                **({"pooling": pooling} if config.task.type == "sequence-classification" else {}),
                **({"temperature": round(temperature, 6)} if temperature is not None else {}),
                **({"answerSchema": answer_schema.wire()} if answer_schema is not None else {}),
                **({"prompt": prompt} if prompt is not None else {}),
            },
            indent=2,
        )
        + "\n"
    )
    return adapter_digest(adapter)


def histogram(
    values: list[float], low: float, high: float, bins: int = HISTOGRAM_BINS
) -> dict[str, list[float]]:
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def reference_stats(after: Evaluation, labels: list[str], seed: int) -> dict[str, Any]:
    """Statistics of the validation set as the trained model sees it; the server compares live traffic."""
    names = labels or sorted(set(after.predicted))
    predicted = {name: after.predicted.count(name) / max(1, len(after.predicted)) for name in names}
    embeddings = after.embeddings if after.embeddings is not None else np.zeros((0, 0))
    rng = np.random.default_rng(seed)
    sample = embeddings[rng.permutation(len(embeddings))[:EMBEDDING_SAMPLE]]
    max_len = max(after.lengths, default=1)
    return {
        "rows": len(after.predicted) or len(after.lengths),
        "predictionDistribution": predicted,
        "confidenceHistogram": histogram(after.confidence, 0.0, 1.0),
        "embeddingCentroid": embeddings.mean(0).round(6).tolist() if len(embeddings) else [],
        "embeddingSample": sample.round(5).tolist(),
        "inputLengthHistogram": histogram([float(n) for n in after.lengths], 0.0, float(max_len)),
    }


def plot_loss_curve(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_card(config: TrainConfig, report: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {stage} | "
        + " | ".join(f"{report[stage].get(m, float('nan')):.4f}" for m in report["metricNames"])
        + " |"
        for stage in ("before", "baseline", "after", "champion")
        if report.get(stage)
    )
    gguf = f" (GGUF `{config.base_model.gguf_file}`)" if config.base_model.gguf_file else ""
    return f"""# {config.name} — LoRA adapter

Base model: `{config.base_model.name}`{gguf}
Task: {config.task.type}. Dataset digest: `{report["datasetDigest"]}` ({report["trainRows"]} training rows,
{report["validationRows"]} validation rows, validation from the {report["validationSource"]}).
LoRA r={config.lora.r}, alpha={config.lora.alpha}, target modules: {", ".join(report["targetModules"])}.
Training: {report["steps"]} optimizer steps in {report["trainSeconds"]:.0f} s.

| stage | {" | ".join(report["metricNames"])} |
|---|{"---|" * len(report["metricNames"])}
{rows}

*before* is the base model without the adapter (classification: an untrained head, so about chance);
*baseline* is logistic regression on frozen mean-pooled embeddings{_probe_note(report)};
*after* is base + this adapter;
*champion* (when evaluation.championUri is set) is that earlier adapter on the same validation rows.
Gate: {_gate_line(config)}.{_calibration_line(report.get("calibration"))}
Load with `peft.PeftModel.from_pretrained(base, "adapter")`; labels are in `adapter/kubetune.json`.
"""


def _calibration_line(calibration: dict[str, Any] | None) -> str:
    if not calibration or not calibration["rows"]:
        return ""
    return (
        f"\nCalibration: temperature {calibration['temperature']} fitted on {calibration['rows']} rows"
        f" held out of train (expected calibration error {calibration['eceBefore']} before,"
        f" {calibration['eceAfter']} after); the server applies it to every probability."
    )


def _probe_note(report: dict[str, Any]) -> str:
    """Closed-set causal-lm: which probes the baseline row is the best of (llm_baseline.py)."""
    baseline = report.get("baseline") or {}
    probes = [
        f"{name} {m} {baseline[f'{name}_{m}']:.4f}"
        for name in ("base", "minilm")
        for m in report["metricNames"]
        if f"{name}_{m}" in baseline
    ]
    if not probes:
        return ""
    gate = "; the gate holds the adapter to it" if report["gate"].get("mustBeatBaseline") else ""
    return f" (one probe per answer field, the best of: {', '.join(probes)}{gate})"


def _gate_line(config: TrainConfig) -> str:
    minimum = config.evaluation.min_accuracy
    if minimum is not None:
        return f"{config.gate_metric} ≥ {minimum}"
    if config.evaluation.champion_uri:
        return f"{config.gate_metric} against the champion on the same rows (the operator's verdict)"
    return "none"


def write_report(
    out: Path, config: TrainConfig, report: dict[str, Any], losses: list[float], stats: dict[str, Any]
) -> None:
    (out / "metrics.json").write_text(json.dumps({**report, "loss": losses}, indent=2) + "\n")
    (out / "reference_stats.json").write_text(json.dumps(stats) + "\n")
    (out / "README.md").write_text(model_card(config, report))
    plot_loss_curve(losses, out / "loss_curve.png")


def locate_adapter(uri: str, config: TrainConfig) -> Path:
    """The local folder holding adapter_config.json + adapter_model.safetensors for an adapter URI
    (pvc://, a local path, or s3:// copied once under cache_dir); `uri` may name the run's output
    folder or its adapter/ subfolder."""
    try:
        check_uri(uri, CHAMPION_RULES, "adapter")
    except UnsafeUriError as err:
        raise ModelLoadError(str(err)) from None
    if uri.startswith("s3://"):
        local = (
            Path(os.path.expanduser(config.cache_dir))
            / "adapters"
            / hashlib.sha256(uri.encode()).hexdigest()[:16]
        )
        if not local.is_dir():
            download_from_s3(uri, local)
    else:
        local = Path(config.locate(uri))
    for folder in (local, local / "adapter"):
        if (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file():
            return folder
    raise ModelLoadError(
        f"{uri}: no adapter_config.json + adapter_model.safetensors in {local} or {local}/adapter"
    )


def champion_adapter(config: TrainConfig, labels: list[str], pooling: str) -> Path:
    """evaluation.championUri located and checked against this run before any training, so a wrong
    URI or an adapter that cannot be scored like this run fails in seconds, not after training."""
    assert config.evaluation.champion_uri is not None
    uri = config.evaluation.champion_uri
    folder = locate_adapter(uri, config)
    meta_file = folder / "kubetune.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    problem = None
    if meta.get("task", config.task.type) != config.task.type:
        problem = f"it is a {meta['task']} adapter, this run is {config.task.type}"
    elif labels and meta.get("labels", labels) != labels:
        problem = f"its labels {meta['labels']} differ from this run's {labels}"
    elif labels and meta.get("pooling", "model") != pooling:
        problem = (
            f"its head reads pooling {meta.get('pooling', 'model')!r}, this base now uses {pooling!r} "
            "(adapters from before LP-FT mean pooling must be retrained once)"
        )
    if problem:
        raise ModelLoadError(f"evaluation.championUri {uri}: cannot be scored against this run: {problem}")
    return folder


def download_from_s3(uri: str, target: Path) -> None:
    """Copy every object under s3://bucket/prefix/ into target (written beside it, then renamed)."""
    import boto3
    import botocore.exceptions

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.rstrip("/") + "/"
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    try:
        client = boto3.client("s3", endpoint_url=s3_endpoint("adapter"))
    except UnsafeUriError as err:
        raise ModelLoadError(str(err)) from None
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                dest = tmp / obj["Key"][len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(dest))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise ModelLoadError(f"{uri}: cannot read from S3: {err}") from None
    if tmp.is_dir():
        tmp.rename(target)


def upload_to_s3(local: Path, uri: str) -> None:
    """Copy every file of the output folder to s3://bucket/prefix (credentials from env only)."""
    import boto3

    bucket, _, prefix = check_uri(uri, OUTPUT_RULES, "output")[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=s3_endpoint("output"))
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(local).as_posix()]))
        client.upload_file(str(path), bucket, key)


def termination_message(result: TrainResult) -> str:
    """The TrainResult JSON, shrunk to fit the kubelet's 4 KiB limit (metrics dropped before the reason)."""
    text = json.dumps(result.wire(), separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    metrics = {
        k: v
        for k, v in result.metrics.items()
        if k.startswith(("after_", "before_", "baseline_", "champion_"))
    }
    result = result.model_copy(update={"metrics": metrics})
    text = json.dumps(result.wire(), separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    reason = (result.reason or "")[: TERMINATION_LIMIT // 2]
    return json.dumps(
        result.model_copy(update={"metrics": {}, "reason": reason}).wire(), separators=(",", ":")
    )


def write_termination_message(result: TrainResult) -> None:
    """To $KUBETUNE_TERMINATION_LOG or /dev/termination-log; only a non-writable default is skipped."""
    path = os.environ.get("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG_DEFAULT)
    try:
        Path(path).write_text(termination_message(result))
    except OSError:
        if path != TERMINATION_LOG_DEFAULT:
            raise
