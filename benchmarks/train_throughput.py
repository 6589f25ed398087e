"""Training throughput: plain HF Trainer + PEFT (the baseline) vs the kubetune training loop.

Both train LoRA r=16 on every linear layer of a randomly initialised model with a real shape, on
random token sequences whose lengths are drawn uniformly from [--min-len, --max-len] (every token is
a target, like SFT on completions). Each variant runs in its own subprocess so peak memory is its own.

  baseline  transformers.Trainer, SDPA, pad to longest in the batch, no packing, no compile
  kubetune  kubetune_trainer.train (the loop `kubetune train` runs): padding-free packing, fused
            AdamW and bf16 autocast on CUDA, torch.compile with --compile

Reported per variant: useful (non-pad) tokens/s, MFU, peak memory; and the kubetune/baseline ratio.
MFU = tokens/s * FLOPs/token / peak, FLOPs/token = 4*N_frozen + 6*N_lora + attention
(6 * layers * hidden * mean_len: QK^T and AV, forward + backward, causal half), peak 989 TFLOP/s
(H100 bf16 dense); on CPU MFU is not reported.

  python benchmarks/train_throughput.py                      # GPU: both shapes, lengths 128-1024
  python benchmarks/train_throughput.py --shape smollm2-135m --min-len 32 --max-len 128 \
      --batch-size 4 --steps 6 --warmup 2                     # what a 2-core CPU can do
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M(-Instruct) config.json
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    # Llama-3.2-1B config.json (rope scaling omitted: irrelevant to throughput)
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
}
PEAK_FLOPS = 989e12
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(shape: str) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lora)


def random_sequences(n: int, min_len: int, max_len: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    return [torch.randint(3, vocab, (int(length),), generator=g).tolist() for length in lengths]


def flops_per_token(model: Any, mean_len: float) -> float:
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    c = model.config
    return 4 * frozen + 6 * lora + 6 * c.num_hidden_layers * c.hidden_size * mean_len


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process


def run_baseline(args: argparse.Namespace, seqs: list[list[int]], model: Any) -> tuple[int, float]:
    """HF Trainer as a user would write it; returns (useful tokens, seconds) after warm-up."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    counted = {"tokens": 0}

    def pad_to_longest(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        counted["tokens"] += int(mask.sum())
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    marks: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step == args.warmup:
                marks["start"] = (time.perf_counter(), counted["tokens"])
            if state.global_step == args.warmup + args.steps:
                marks["end"] = (time.perf_counter(), counted["tokens"])

    gpu = torch.cuda.is_available()
    targs = TrainingArguments(
        output_dir="/tmp/kubetune-bench-baseline",
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=2e-4,
        bf16=gpu,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=[{"input_ids": s} for s in seqs],
        data_collator=pad_to_longest,
        callbacks=[Clock()],
    )
    trainer.train()
    return marks["end"][1] - marks["start"][1], marks["end"][0] - marks["start"][0]


def run_kubetune(args: argparse.Namespace, seqs: list[list[int]], model: Any) -> tuple[int, float]:
    """The kubetune loop (setup + train_step) with packing; returns (useful tokens, seconds) after warm-up."""
    from kubetune_trainer.batches import Tokenized
    from kubetune_trainer.train import micro_batches, setup, train_step

    from kubetune.api.finetunejob import TrainingSpec

    spec = TrainingSpec(
        max_steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_len,
        packing=True,
        compile=args.compile,
        learning_rate=2e-4,
    )
    tokenized = [Tokenized(s, s) for s in seqs]
    run = setup(model, tokenized, 0, spec, "causal-lm")
    run.model.train()
    stream = micro_batches(run, 0, 0)
    tokens, start = 0, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
        mb = next(stream)
        train_step(run, [mb])
        if step >= args.warmup:
            tokens += sum(len(seqs[i]) for i in mb.ids)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - start


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(args.shape)
    seqs = random_sequences(
        args.batch_size * (args.warmup + args.steps) * 4, args.min_len, args.max_len, model.config.vocab_size
    )
    runner = run_baseline if args.variant == "baseline" else run_kubetune
    tokens, seconds = runner(args, seqs, model.to(device))
    mean_len = sum(map(len, seqs)) / len(seqs)
    tps = tokens / seconds
    return {
        "variant": args.variant,
        "shape": args.shape,
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "tokens_per_s": tps,
        "mfu": tps * flops_per_token(model, mean_len) / PEAK_FLOPS if device.type == "cuda" else None,
        "peak_mem_gib": peak_memory_gib(device),
        "useful_tokens": tokens,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--min-len", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile in the kubetune loop")
    parser.add_argument("--variant", choices=["baseline", "kubetune"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(run_variant(args)))
        return
    shapes = (
        [args.shape]
        if args.shape != "all"
        else (list(SHAPES) if torch.cuda.is_available() else ["smollm2-135m"])
    )  # the 1B shape is GPU-only
    passthrough = [
        f"--min-len={args.min_len}",
        f"--max-len={args.max_len}",
        f"--batch-size={args.batch_size}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        *(["--compile"] if args.compile else []),
    ]
    results = []
    for shape in shapes:
        for variant in ("baseline", "kubetune"):
            cmd = [sys.executable, __file__, *passthrough, "--shape", shape, "--variant", variant]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{variant} on {shape} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'shape':14} {'variant':9} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}  device")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(
            f"{r['shape']:14} {r['variant']:9} {r['tokens_per_s']:>10.0f} {mfu:>7} "
            f"{r['peak_mem_gib']:>9.2f}  {r['device']}"
        )
    for shape in shapes:
        base, ours = (
            next(r for r in results if r["shape"] == shape and r["variant"] == v)
            for v in ("baseline", "kubetune")
        )
        print(
            f"{shape}: kubetune / baseline = "
            f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}x useful tokens/s"
        )
    print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "variant"}, "results": results}))


if __name__ == "__main__":
    main()
