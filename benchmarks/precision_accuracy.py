"""`serving.precision` fp32 vs bf16, or fp32 vs `quantize: int4` (`--against int4`): do cheaper weights
move what the models answer? (issue 12)

Not a test. Both models are loaded twice, fp32 then the other arm, by the server's own code (AdapterRegistry:
load_base + load, which casts base and adapter to serving_dtype) and answered by the server's own
batcher (batching.Batcher on a ModelWorker thread: classify_rows / RunningBatch continuous batching),
one request per ticket, every request queued at once, so both precisions start from the same batches
(generation: rows leave as they finish, so batches differ only after some answer did).

* MiniLM support-intents classifier (the adapter `make demo` writes to out/support-intents), config as
  examples/serve classify (maxBatchSize 16, maxInputTokens 128, truncate): accuracy on the shipped
  validation split, the boundary test set and the Spanish/English mix, predictions that differ
  between the precisions, the largest |p_fp32 - p_bf16| over all classes.
* SmolLM2-135M triage (the adapter `make demo-triage` writes to out/support-triage; the bare base
  with the same prompts when it is missing, and the output says so): greedy chat answers, prompts
  rendered by the chat endpoint's own `_chat_prompt`, to the first N held-out validation tickets;
  JSON validity, schema validity (exactly {"intent", "priority"} with values from the label sets),
  intent / priority exact match, answers byte-identical between the precisions.

Every rate has a 95 % Wilson interval, every paired change an exact McNemar p and a 95 % upper
bound on how often a prediction flips, so "beyond noise" is judged against the sample size.

    python benchmarks/precision_accuracy.py [--against bf16|int4] [--tickets 124] [--new-tokens 64]
        [--json out.json]  # ~7 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from kubetune_trainer.evaluate import answer_metrics, parse_json_object
from kubetune_trainer.serve.adapters import AdapterRegistry, Target
from kubetune_trainer.serve.batching import Batcher, ModelWorker
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.inference import ClassifyRow, GenerationRow, Sampling
from kubetune_trainer.serve.precision import native_bf16
from kubetune_trainer.serve.routes import _chat_prompt
from kubetune_trainer.serve.schemas import ChatMessage
from scipy.stats import beta, binomtest
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from test_serve_helpers import MINILM, SMOLLM, loaded_registry

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
INTENT_SETS = {
    "validation": DATA / "support-intents" / "validation.jsonl",
    "boundary test": DATA / "support-intents-boundary" / "test.jsonl",
    "es-en mix": DATA / "support-intents-es-mixed" / "test.jsonl",
}
# Each arm: the ServeConfig fields it sets. fp32 is the reference; `--against` picks the other arm.
ARMS: dict[str, dict[str, str]] = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "int4": {"precision": "fp32", "quantize": "int4"},  # 4-bit linears, bf16 kernel inputs
}
OTHER = "bf16"  # set by main() from --against
PRECISIONS = ("fp32", OTHER)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _serve(config: ServeConfig, registry: AdapterRegistry, requests: list[Any], generate: bool) -> None:
    worker = ModelWorker()
    batcher = Batcher(registry, worker, config.max_batch_size, config.batch_wait_ms, config.max_input_tokens)
    batcher.start()
    try:
        if generate:
            await asyncio.gather(*(batcher.generate([row], Sampling()) for row in requests))
        else:
            await asyncio.gather(*(batcher.classify([row]) for row in requests))
        await batcher.stop()
    finally:
        worker.shutdown()


def serve(config: ServeConfig, registry: AdapterRegistry, requests: list[Any], generate: bool) -> float:
    """Answer every request through the server's batcher; returns wall seconds."""
    started = time.perf_counter()
    asyncio.run(_serve(config, registry, requests, generate))
    for row in requests:
        if row.error is not None:
            raise row.error
    return time.perf_counter() - started


# ---- statistics ------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def flip_upper(k: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of the rate at which an answer changes."""
    return 1.0 if k >= n else float(beta.ppf(0.95, k + 1, n - k))


def paired(fp32_ok: list[bool], other_ok: list[bool], changed: int) -> dict[str, Any]:
    """Discordant pairs (b: only fp32 right, c: only the other arm right), exact McNemar p, flip bound."""
    b = sum(f and not g for f, g in zip(fp32_ok, other_ok, strict=True))
    c = sum(g and not f for f, g in zip(fp32_ok, other_ok, strict=True))
    n = len(fp32_ok)
    return {
        "n": n,
        "changed": changed,
        "only_fp32_right": b,
        "only_other_right": c,
        "mcnemar_p": float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0,
        "flip_rate_upper95": flip_upper(changed, n),
        "one_ticket_pp": 100.0 / n,
    }


def rate(k: int, n: int) -> dict[str, Any]:
    low, high = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n, "ci95": [low, high]}


# ---- the classifier --------------------------------------------------------------------------------
def classify_config(out: Path, precision: str) -> ServeConfig:
    """examples/serve classify.yaml's settings, with the adapter `make demo` trained."""
    return ServeConfig(
        base_model=MINILM,
        task="sequence-classification",
        adapters=[AdapterSpec(name="support-intents", version="v1", uri=str(out / "support-intents"))],
        max_batch_size=16,
        batch_wait_ms=5,
        max_input_tokens=128,
        truncate=True,
        **ARMS[precision],  # type: ignore[arg-type]
    )


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def run_classifier(out: Path) -> dict[str, Any]:
    sets = {name: read_jsonl(path) for name, path in INTENT_SETS.items()}
    probs: dict[str, dict[str, list[list[float]]]] = {name: {} for name in sets}
    seconds, labels = {}, ()
    for precision in PRECISIONS:
        config = classify_config(out, precision)
        registry = loaded_registry(config)
        target = registry.resolve("support-intents")
        labels = target.adapter.labels if target.adapter else registry.labels
        seconds[precision] = 0.0
        for name, rows in sets.items():
            requests = [ClassifyRow(target, r["text"]) for r in rows]
            seconds[precision] += serve(config, registry, requests, generate=False)
            probs[name][precision] = [r.probabilities for r in requests]
        del registry
    results: dict[str, Any] = {"seconds": seconds, "sets": {}}
    for name, rows in sets.items():
        truth = [r["label"] for r in rows]
        pred = {p: [labels[argmax(q)] for q in probs[name][p]] for p in PRECISIONS}
        ok = {p: [a == t for a, t in zip(pred[p], truth, strict=True)] for p in PRECISIONS}
        diffs = [
            abs(a - b)
            for qa, qb in zip(probs[name]["fp32"], probs[name][OTHER], strict=True)
            for a, b in zip(qa, qb, strict=True)
        ]
        changed = sum(a != b for a, b in zip(pred["fp32"], pred[OTHER], strict=True))
        results["sets"][name] = {
            **{p: rate(sum(ok[p]), len(rows)) for p in PRECISIONS},
            "paired": paired(ok["fp32"], ok[OTHER], changed),
            "max_abs_prob_diff": max(diffs),
            "mean_abs_prob_diff": sum(diffs) / len(diffs),
        }
    return results


# ---- the triage model ------------------------------------------------------------------------------
def triage_config(adapter: Path | None, precision: str, new_tokens: int) -> ServeConfig:
    """examples/serve chat.yaml's settings (maxBatchSize 8), serving the triage adapter."""
    adapters = [AdapterSpec(name="support-triage", version="v1", uri=str(adapter))] if adapter else []
    return ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        adapters=adapters,
        max_batch_size=8,
        max_input_tokens=1024,
        max_new_tokens=new_tokens,
        **ARMS[precision],  # type: ignore[arg-type]
    )


def schema_valid(answer: dict[str, Any] | None, intents: set[str], priorities: set[str]) -> bool:
    return (
        answer is not None
        and set(answer) == {"intent", "priority"}
        and answer["intent"] in intents
        and answer["priority"] in priorities
    )


def matches(answer: dict[str, Any] | None, reference: dict[str, Any], key: str) -> bool:
    return answer is not None and answer.get(key) == reference[key]


def priority_shifts(answers: dict[str, list[str]]) -> dict[str, int]:
    """How the priority moved on tickets whose priority differs, e.g. {"normal -> low": 11}: noise
    that tips near-ties goes both ways, a bias one way."""
    shifts: Counter[str] = Counter()
    for a, b in zip(answers["fp32"], answers[OTHER], strict=True):
        pa, pb = parse_json_object(a.strip()), parse_json_object(b.strip())
        was, now = (pa or {}).get("priority"), (pb or {}).get("priority")
        if was != now:
            shifts[f"{was} -> {now}"] += 1
    return dict(shifts.most_common())


def run_triage(out: Path, tickets: int, new_tokens: int) -> dict[str, Any]:
    folder = out / "support-triage"
    adapter = folder if (folder / "adapter" / "adapter_config.json").is_file() else None
    rows = read_jsonl(DATA / "support-triage" / "validation.jsonl")[:tickets]
    references = [r["messages"][-1]["content"] for r in rows]
    refs = [json.loads(r) for r in references]
    trained = [
        json.loads(r["messages"][-1]["content"]) for r in read_jsonl(DATA / "support-triage" / "train.jsonl")
    ]
    intents, priorities = {r["intent"] for r in trained}, {r["priority"] for r in trained}  # the label sets
    answers: dict[str, list[str]] = {}
    seconds = {}
    for precision in PRECISIONS:
        config = triage_config(adapter, precision, new_tokens)
        registry = loaded_registry(config)
        target: Target = registry.resolve("support-triage" if adapter else config.base_model_id)
        chat = SimpleNamespace(registry=registry, config=config)  # what _chat_prompt reads of ServerState
        requests = [
            GenerationRow(
                target,
                _chat_prompt(chat, [ChatMessage.model_validate(m) for m in r["messages"][:-1]]),  # type: ignore[arg-type]
                new_tokens,
            )
            for r in rows
        ]
        seconds[precision] = serve(config, registry, requests, generate=True)
        answers[precision] = [row.text for row in requests]
        del registry
    result: dict[str, Any] = {
        "model": "support-triage adapter (make demo-triage)" if adapter else "BASE model (no triage adapter)",
        "seconds": seconds,
    }
    ok: dict[str, dict[str, list[bool]]] = {}
    for precision in PRECISIONS:
        parsed = [parse_json_object(a.strip()) for a in answers[precision]]
        scores, _ = answer_metrics([a.strip() for a in answers[precision]], references)
        ok[precision] = {
            "json_valid": [p is not None for p in parsed],
            "schema_valid": [schema_valid(p, intents, priorities) for p in parsed],
            "intent_match": [matches(p, r, "intent") for p, r in zip(parsed, refs, strict=True)],
            "priority_match": [matches(p, r, "priority") for p, r in zip(parsed, refs, strict=True)],
        }
        assert abs(scores["json_validity"] - sum(ok[precision]["json_valid"]) / len(rows)) < 1e-9
        assert abs(scores["intent_exact_match"] - sum(ok[precision]["intent_match"]) / len(rows)) < 1e-9
        result[precision] = {m: rate(sum(v), len(rows)) for m, v in ok[precision].items()}
    identical = sum(a == b for a, b in zip(answers["fp32"], answers[OTHER], strict=True))
    result["identical"] = rate(identical, len(rows))
    result["paired"] = {
        m: paired(
            ok["fp32"][m],
            ok[OTHER][m],
            sum(a != b for a, b in zip(ok["fp32"][m], ok[OTHER][m], strict=True)),
        )
        for m in ok["fp32"]
    }
    result["examples_differing"] = [
        {"ticket": i, "fp32": a, OTHER: b}
        for i, (a, b) in enumerate(zip(answers["fp32"], answers[OTHER], strict=True))
        if a != b
    ]
    result["priority_shifts"] = priority_shifts(answers)
    result["answers"] = answers
    return result


# ---- report ----------------------------------------------------------------------------------------
def pct(r: dict[str, Any]) -> str:
    low, high = r["ci95"]
    return f"{100 * r['rate']:.1f}% ({r['k']}/{r['n']}; {100 * low:.1f}-{100 * high:.1f})"


def paired_cells(p: dict[str, Any]) -> str:
    return (
        f"{p['changed']} (≤ {100 * p['flip_rate_upper95']:.1f}% at 95%) | "
        f"{p['only_fp32_right']} / {p['only_other_right']} | {p['mcnemar_p']:.2f} "
        f"| {p['one_ticket_pp']:.2f} pp"
    )


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"| model / set | metric | fp32 (95% CI) | {OTHER} (95% CI) | changed (of n) "
        f"| only fp32 / only {OTHER} right | McNemar p | 1 ticket |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["classifier"]["sets"].items():
        p = s["paired"]
        lines.append(
            f"| MiniLM / {name} | accuracy | {pct(s['fp32'])} | {pct(s[OTHER])} | {paired_cells(p)} |"
        )
    t = results["triage"]
    for metric in ("json_valid", "schema_valid", "intent_match", "priority_match"):
        p = t["paired"][metric]
        lines.append(
            f"| SmolLM2 triage | {metric} | {pct(t['fp32'][metric])} | {pct(t[OTHER][metric])} "
            f"| {paired_cells(p)} |"
        )
    lines.append("")
    for name, s in results["classifier"]["sets"].items():
        lines.append(
            f"- MiniLM / {name}: max |p_fp32 - p_{OTHER}| {s['max_abs_prob_diff']:.4f}, "
            f"mean {s['mean_abs_prob_diff']:.5f} (over every class of every ticket)"
        )
    lines.append(
        f"- SmolLM2 triage ({t['model']}): byte-identical answers {pct(t['identical'])}; "
        f"wall fp32 {t['seconds']['fp32']:.0f} s, {OTHER} {t['seconds'][OTHER]:.0f} s; "
        f"priority fp32 -> {OTHER} where it differs: {t['priority_shifts'] or 'none'}"
    )
    c = results["classifier"]["seconds"]
    lines.append(f"- MiniLM wall (all sets): fp32 {c['fp32']:.1f} s, {OTHER} {c[OTHER]:.1f} s")
    return "\n".join(lines)


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "out", help="where make demo* wrote adapters")
    parser.add_argument(
        "--tickets", type=int, default=124, help="held-out triage tickets (first N; 124 = all)"
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--against", choices=["bf16", "int4"], default="bf16", help="the arm beside fp32")
    args = parser.parse_args()
    global OTHER, PRECISIONS
    OTHER, PRECISIONS = args.against, ("fp32", args.against)
    hf_logging.set_verbosity_error()  # load reports and progress bars would bury the table
    hf_logging.disable_progress_bar()
    if not (args.out_dir / "support-intents" / "adapter" / "adapter_config.json").is_file():
        print(f"{args.out_dir}/support-intents has no adapter: run `make demo` first", file=sys.stderr)
        return 2
    started, load_start = time.time(), load_avg()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, native bf16: {native_bf16()}",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "arms": {arm: ARMS[arm] for arm in PRECISIONS},
        "load_start": load_start,
        "classifier": run_classifier(args.out_dir),
        "triage": run_triage(args.out_dir, args.tickets, args.new_tokens),
    }
    results |= {"load_end": load_avg(), "minutes": (time.time() - started) / 60}
    print(
        f"{results['date']}, {results['minutes']:.1f} min; {results['machine']}; torch {results['torch']}; "
        f"load (1/5/15 min) {results['load_start']} at start, {results['load_end']} at end\n"
    )
    print(markdown(results))
    for example in results["triage"]["examples_differing"][:20]:
        print(f"  ticket {example['ticket']}: fp32 {example['fp32']!r}\n{'':13}{OTHER} {example[OTHER]!r}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
