"""AdapterDeployment `spec.runtime`: which engine generates — kubetune's own server, or vLLM beside a
kubetune container that fronts it (requests, metrics, feedback, monitoring stay kubetune's)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from kubetune.api.common import ApiModel

Engine = Literal["kubetune", "vllm"]
# vLLM's LoRAConfig accepts only these max_lora_rank values (vllm/config.py, LoRAConfig.__post_init__).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# Flags the operator sets itself on `vllm serve`: a second value would fight the rendered pod.
OWNED_FLAGS = (
    "--host",
    "--port",
    "--enable-lora",
    "--max-loras",
    "--max-lora-rank",
    "--lora-modules",
)
IS_VLLM = "has(self.runtime) && has(self.runtime.engine) && self.runtime.engine == 'vllm'"
VLLM_NO_CLASSIFIER = (
    "runtime.engine vllm serves causal-lm adapters only: vLLM serves no LoRA sequence classifiers; use "
    "engine kubetune for task sequence-classification"
)
VLLM_NO_INT4 = (
    "runtime.engine vllm: serving.quantize int4 is kubetune's CPU kernel; vLLM needs quantize none "
    "(quantize the base for vLLM through runtime.args, e.g. --quantization)"
)
VLLM_NEEDS_GPU = "runtime.engine vllm needs a GPU: set resources.gpus >= 1 (or use engine kubetune on CPU)"
VLLM_NO_EXTRA_TASKS = (
    "runtime.engine vllm serves one causal-lm task: remove extraTasks or use engine kubetune"
)
VLLM_BASE = (
    "runtime.engine vllm loads a Hugging Face hub id or a pvc:// folder as baseModel.name: pkg:// bases "
    "and baseModel.ggufFile are kubetune's server's"
)
OWNED_FLAG = "runtime.args must not set " + ", ".join(OWNED_FLAGS) + ": the operator sets them from runtime"
RANK_RULE = "maxLoraRank must be one of vLLM's ranks " + ", ".join(map(str, VLLM_LORA_RANKS))


def owned_flag(arg: str) -> str | None:
    """The operator-owned flag that `arg` sets (`--port 9`, `--port=9`, `--max_loras`), if any.

    >>> owned_flag("--max_loras=3"), owned_flag("--gpu-memory-utilization=0.8")
    ('--max-loras', None)
    """
    flag = arg.split("=", 1)[0].split(" ", 1)[0].replace("_", "-")
    return flag if flag in OWNED_FLAGS else None


def _owned_cel() -> str:
    options = [*OWNED_FLAGS, *("--" + f[2:].replace("-", "_") for f in OWNED_FLAGS)]
    listed = ", ".join(f"'{f}'" for f in dict.fromkeys(options))
    return f"self.all(a, ![{listed}].exists(f, a == f || a.startsWith(f + '=') || a.startsWith(f + ' ')))"


class RuntimeSpec(ApiModel):
    """The serving engine of the pods."""

    engine: Annotated[
        Engine,
        Field(
            description="kubetune: kubetune's own server (CPU pods, classifiers, small LLMs). vllm: vLLM "
            "generates (GPU, paged attention, CUDA graphs) and a kubetune container in the same pod fronts "
            "it, loading each adapter version through vLLM's runtime LoRA API."
        ),
    ] = "kubetune"
    image: Annotated[
        str | None,
        Field(description="vLLM image (default: the operator's pinned vllm/vllm-openai).", max_length=512),
    ] = None
    args: Annotated[
        list[Annotated[str, Field(max_length=256)]],
        Field(
            description="Extra `vllm serve` flags (e.g. --gpu-memory-utilization=0.85); the operator's own "
            f"({', '.join(OWNED_FLAGS)}) are refused.",
            max_length=64,
            json_schema_extra={"x-kubernetes-validations": [{"rule": _owned_cel(), "message": OWNED_FLAG}]},
        ),
    ] = []
    max_loras: Annotated[
        int,
        Field(
            description="LoRA slots vLLM keeps on the GPU (--max-loras): a rollout holds the old and the new "
            "version at once, so at least 2.",
            ge=2,
            le=64,
        ),
    ] = 4
    max_lora_rank: Annotated[
        int,
        Field(
            description="Largest LoRA rank vLLM accepts (--max-lora-rank; " + RANK_RULE.lower() + "); an "
            "adapter of a higher rank is refused when its FineTuneJob is resolved.",
            json_schema_extra={
                "x-kubernetes-validations": [
                    {"rule": f"self in [{', '.join(map(str, VLLM_LORA_RANKS))}]", "message": RANK_RULE}
                ]
            },
        ),
    ] = 16

    @field_validator("args")
    @classmethod
    def _not_owned(cls, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            if owned_flag(arg):
                raise ValueError(f"args[{i}]: {OWNED_FLAG}")
        return args

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, rank: int) -> int:
        if rank not in VLLM_LORA_RANKS:
            raise ValueError(RANK_RULE)
        return rank
