#!/usr/bin/env bash
# vLLM vs kubetune's server behind the kubetune front, on one GPU machine without network (issue 24,
# item 5): same base, same two adapter versions from `kubetune train`, streamed chat at 1/8/32
# concurrent clients, a v1 -> v2 rollout under load (0 failed requests expected) and a front restart.
# Appends to benchmarks/VLLM_RESULTS.md. NOT RUN yet: no GPU was lent to the session that wrote it.
#
#   benchmarks/vllm_rollout_gpu.sh MODEL_DIR ADAPTER_V1 ADAPTER_V2 [MAX_LORA_RANK]
#     MODEL_DIR    a local Hugging Face model folder (safetensors + tokenizer with a chat template)
#     ADAPTER_V*   adapter folders written by kubetune train (adapter_config.json, adapter_model.safetensors)
#                  on that base, e.g. two runs of examples/k8s/finetunejob-support-triage.yaml with
#                  training.recipe lora (vLLM runs LoRA only, not answer heads)
#     MAX_LORA_RANK  vLLM's --max-lora-rank, >= the adapters' r (default 16)
# Needs `vllm` on PATH (pip install vllm) beside the repo's venv ('.[trainer,bench]').
set -euo pipefail
MODEL_DIR=${1:?usage: benchmarks/vllm_rollout_gpu.sh MODEL_DIR ADAPTER_V1 ADAPTER_V2 [MAX_LORA_RANK]}
V1=${2:?adapter v1 folder}
V2=${3:?adapter v2 folder}
RANK=${4:-16}
for a in "$V1" "$V2"; do
  [[ -f "$a/adapter_config.json" ]] || { echo "$a: no adapter_config.json" >&2; exit 2; }
done
command -v vllm > /dev/null || { echo "vllm is not on PATH" >&2; exit 2; }
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a benchmarks/VLLM_RESULTS.md
exec "$PY" benchmarks/vllm_rollout.py --base "$MODEL_DIR" --adapter-v1 "$V1" --adapter-v2 "$V2" \
  --engines vllm,kubetune --clients 1,8,32 --per-client 4 --tokens 128 --max-lora-rank "$RANK"
