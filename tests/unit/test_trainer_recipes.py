"""training.recipe: candidate choice, winner choice, and the full-rank LoRA that stores a full fine-tune."""

from __future__ import annotations

import pytest
import torch
from kubetune_trainer.recipes import (
    FULL_MAX_PARAMETERS,
    RecipeError,
    candidate_recipes,
    full_rank_kwargs,
    make_full_rank,
    pick_winner,
)
from peft import LoraConfig, get_peft_model

from kubetune.api.finetunejob import TrainingSpec


def test_training_recipe_defaults_to_lora_and_rejects_unknown() -> None:
    assert TrainingSpec(epochs=1).recipe == "lora"
    with pytest.raises(ValueError, match="recipe"):
        TrainingSpec(epochs=1, recipe="bigger")  # type: ignore[arg-type]


def test_auto_trains_what_applies() -> None:
    assert candidate_recipes("auto", "sequence-classification", "mean", 22_000_000) == [
        "probe",
        "lora",
        "full",
    ]
    assert candidate_recipes("auto", "sequence-classification", "model", 22_000_000) == ["lora", "full"]
    assert candidate_recipes("auto", "sequence-classification", "mean", FULL_MAX_PARAMETERS + 1) == [
        "probe",
        "lora",
    ]
    assert candidate_recipes("auto", "causal-lm", "model", 1000) == ["lora"]
    assert candidate_recipes("auto", "causal-lm", "model", 1000, closed_set=True) == ["heads", "lora"]
    assert candidate_recipes("heads", "causal-lm", "model", 1000, closed_set=True) == ["heads"]
    assert candidate_recipes("full", "sequence-classification", "mean", 1000) == ["full"]


@pytest.mark.parametrize(
    ("recipe", "task", "pooling", "params", "why"),
    [
        ("probe", "causal-lm", "model", 1000, "sequence-classification"),
        ("full", "causal-lm", "model", 1000, "sequence-classification"),
        ("probe", "sequence-classification", "model", 1000, "mean-pooling"),
        ("full", "sequence-classification", "mean", FULL_MAX_PARAMETERS + 1, "parameters"),
        ("heads", "causal-lm", "model", 1000, "closed set"),
        ("heads", "sequence-classification", "mean", 1000, "causal-lm"),
    ],
)
def test_explicit_recipe_that_cannot_run_is_a_config_error(
    recipe: str, task: str, pooling: str, params: int, why: str
) -> None:
    with pytest.raises(RecipeError, match=f"training.recipe {recipe}: .*{why}"):
        candidate_recipes(recipe, task, pooling, params)  # type: ignore[arg-type]


def test_winner_is_best_and_ties_go_to_the_cheaper() -> None:
    scores = {"probe": {"accuracy": 0.90}, "lora": {"accuracy": 0.95}, "full": {"accuracy": 0.97}}
    assert pick_winner(scores, "accuracy") == "full"
    assert pick_winner({**scores, "full": {"accuracy": 0.95}}, "accuracy") == "lora"
    assert pick_winner({"full": {"accuracy": 0.9}, "probe": {"accuracy": 0.9}}, "accuracy") == "probe"
    assert pick_winner(scores | {"lora": {"macro_f1": 1.0}}, "accuracy") == "full"  # missing metric loses


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(4, 6)  # in < out
        self.down = torch.nn.Linear(6, 3)  # in > out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def test_full_rank_lora_is_a_full_fine_tune_of_every_weight() -> None:
    """Starts as the base exactly; the trainable update has the weight's shape; a gradient step on it
    equals the same step on the dense weight."""
    torch.manual_seed(0)
    base = Tiny()
    reference = Tiny()
    reference.load_state_dict(base.state_dict())
    x = torch.randn(5, 4)
    model = get_peft_model(
        base, LoraConfig(target_modules=["up", "down"], **full_rank_kwargs(base, ["up", "down"]))
    )
    assert make_full_rank(model) == 4 * 6 + 6 * 3
    assert torch.allclose(model(x), reference(x))
    trainable = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "base_model.model.up.lora_B.default.weight": torch.Size([6, 4]),
        "base_model.model.down.lora_A.default.weight": torch.Size([3, 6]),
    }

    before = reference(x).detach()
    lr = 0.1
    for net in (model, reference):
        params = [p for p in net.parameters() if p.requires_grad]
        if net is reference:
            params = [reference.up.weight, reference.down.weight]
            for p in reference.parameters():
                p.requires_grad_(p is reference.up.weight or p is reference.down.weight)
        optimizer = torch.optim.SGD(params, lr=lr)
        net(x).pow(2).sum().backward()
        optimizer.step()
    assert torch.allclose(model(x), reference(x), atol=1e-6)
    assert not torch.allclose(model(x), before, atol=1e-3)  # the step moved it
