"""training.recipe: which models a run trains, how a full fine-tune is stored, which one wins.

  probe  the logistic regression fitted on frozen mean-pooled embeddings becomes the head; the
         encoder is untouched (its LoRA stays at B = 0, a no-op), nothing is trained
  lora   LP-FT: the head starts as the probe, then LoRA + head are fine-tuned (the default)
  full   every Linear weight of the encoder and the head are fine-tuned (token embeddings, biases
         and LayerNorms stay frozen) at learningRate x FULL_LEARNING_RATE_SCALE;
         sequence-classification on models of at most FULL_MAX_PARAMETERS
  heads  causal-lm with closed-set answers: LoRA + one head per answer field on the decoder, LP-FT
         (decoder_heads.py, heads_recipe.py)
  auto   each of the above that applies, scored on the validation rows; the best gate metric wins
         (a tie goes to the cheaper one: probe, then heads, then lora, then full). A causal-lm job
         with closed-set answers (lora and heads) is scored on rows held out of train instead
         (heads_recipe.selection_split), so the validation rows never choose.

A full fine-tune is stored as an exact full-rank LoRA, so it is served like any other adapter (peft
cannot put a whole-layer copy, modules_to_save, on a layer that another served adapter's LoRA
already wraps). For a Linear W (out x in) the rank is r = min(in, out) with scaling 1: when in <= out,
A is the identity and frozen, and B (out x in, starting at 0) is the weight update itself; otherwise B
is the identity and A is the update. Training B (or A) alone is then exactly full fine-tuning W.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kubetune.api.finetunejob import Recipe, TaskType, TrainingSpec
from kubetune_trainer.errors import TrainerError

ORDER: tuple[Recipe, ...] = ("probe", "heads", "lora", "full")  # cheapest first: ties go to the earlier one
FULL_MAX_PARAMETERS = 150_000_000  # a full fine-tune keeps a weight copy + AdamW state per weight
# A full fine-tune moves every weight, not a low-rank update, so it takes the usual ~10x lower LR
# than LoRA: at the example's LoRA LR (5e-4) full fine-tuning MiniLM diverged (loss 0.11 -> 2.55).
FULL_LEARNING_RATE_SCALE = 0.1


class RecipeError(TrainerError):
    """A training.recipe this model or task cannot run (invalid config: exit 2)."""


def candidate_recipes(
    recipe: Recipe, task: TaskType, pooling: str, parameters: int, closed_set: bool = False
) -> list[Recipe]:
    """The recipes a run trains, in ORDER; an explicit recipe that cannot run is a RecipeError.

    >>> candidate_recipes("auto", "sequence-classification", "mean", 22_000_000)
    ['probe', 'lora', 'full']
    >>> candidate_recipes("auto", "causal-lm", "model", 135_000_000)
    ['lora']
    >>> candidate_recipes("auto", "causal-lm", "model", 135_000_000, closed_set=True)
    ['heads', 'lora']
    """
    why_not: dict[Recipe, str] = {}
    if task != "causal-lm":
        why_not["heads"] = "applies only to task.type causal-lm"
    elif not closed_set:
        why_not["heads"] = "needs answers from a closed set (every answer field a label seen in train)"
    if task != "sequence-classification":
        why_not["probe"] = why_not["full"] = "applies only to task.type sequence-classification"
    elif pooling != "mean":
        why_not["probe"] = (
            "needs a mean-pooling (sentence-transformers) base, whose head reads the probe's input"
        )
    if "full" not in why_not and parameters > FULL_MAX_PARAMETERS:
        why_not["full"] = f"base has {parameters:,} parameters, more than {FULL_MAX_PARAMETERS:,}"
    if recipe == "auto":
        return [r for r in ORDER if r not in why_not]
    if recipe in why_not:
        raise RecipeError(f"training.recipe {recipe}: {why_not[recipe]}; use lora or auto")
    return [recipe]


def pick_winner(scores: Mapping[Recipe, Mapping[str, float]], metric: str) -> Recipe:
    """The recipe with the best `metric`; ties go to the earlier one in ORDER.

    >>> pick_winner({"probe": {"accuracy": 0.9}, "lora": {"accuracy": 0.95}, "full": {"accuracy": 0.95}},
    ...             "accuracy")
    'lora'
    """
    ranked = sorted(scores, key=lambda r: (-scores[r].get(metric, float("-inf")), ORDER.index(r)))
    if not ranked:
        raise RecipeError("no recipe was trained")
    return ranked[0]


def training_for(recipe: Recipe, training: TrainingSpec) -> TrainingSpec:
    """The optimisation settings a candidate trains with: full scales the learning rate down."""
    if recipe != "full":
        return training
    return training.model_copy(update={"learning_rate": training.learning_rate * FULL_LEARNING_RATE_SCALE})


def linear_modules(model: torch.nn.Module, leaf_names: Sequence[str]) -> dict[str, torch.nn.Linear]:
    """Full name -> Linear for every Linear whose leaf name is one of `leaf_names`."""
    wanted = set(leaf_names)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    }


def full_rank_kwargs(model: torch.nn.Module, leaf_names: Sequence[str]) -> dict[str, Any]:
    """LoraConfig arguments that give every targeted Linear rank min(in, out) and scaling 1."""
    layers = linear_modules(model, leaf_names)
    ranks = {name: min(m.in_features, m.out_features) for name, m in layers.items()}
    top = max(ranks.values())
    return {
        "r": top,
        "lora_alpha": top,
        "rank_pattern": {f"^{name}$": r for name, r in ranks.items()},
        "alpha_pattern": {f"^{name}$": r for name, r in ranks.items()},
        "lora_dropout": 0.0,
        "init_lora_weights": True,
    }


def make_full_rank(model: Any, adapter: str = "default") -> int:
    """Turn each LoRA pair into identity x update (see the module docstring); returns the trainable
    update parameters. Called right after get_peft_model, before any training."""
    trainable = 0
    with torch.no_grad():
        for module in model.modules():
            if not (hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {})):
                continue
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight  # r x in, out x r
            if module.scaling[adapter] != 1.0:
                raise RecipeError(f"full-rank LoRA needs scaling 1, got {module.scaling[adapter]}")
            r, width = a.shape
            if r == width:  # in <= out: A = I (frozen), B is the update
                identity, update = a, b
            else:  # in > out: B = I (frozen), A is the update
                identity, update = b, a
            identity.copy_(torch.eye(r, dtype=identity.dtype))
            identity.requires_grad_(False)
            update.zero_()
            update.requires_grad_(True)
            trainable += update.numel()
    return trainable
