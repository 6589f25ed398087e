#!/usr/bin/env bash
# The LLM recipe benchmark on one GPU machine without network (issue 21, item 5):
#   1. TRL SFTTrainer + LoRA vs kubetune's trainer in one process on GPU 0 (bf16), same rows and epochs;
#   2. kubetune's trainer as a pod runs it on every GPU of the node:
#      kubetune launch -- torchrun --standalone --nproc-per-node=N -m kubetune.cli train (bf16, packing).
# Accuracy per field (intent, priority), train seconds, tokens/s and MFU are appended to
# benchmarks/LLM_RECIPE_RESULTS.md.
#
#   benchmarks/llm_recipe_gpu.sh MODEL_DIR [GPUS] [EPOCHS]
#     MODEL_DIR  a local Hugging Face model folder (config.json, safetensors, tokenizer with a chat
#                template) of a ~1B instruct model, e.g. /models/Llama-3.2-1B-Instruct
#     GPUS       GPUs for the launched run (default: all that nvidia-smi lists)
#     EPOCHS     default 3, over all 492 train rows; scored on all 124 validation rows
#   DRY_RUN=1 benchmarks/llm_recipe_gpu.sh MODEL_DIR 1   # builds configs and prints the launch command
# Needs the venv with '.[trainer,bench]' installed (trl); PY=path/to/python to use another interpreter.
# PEAK_TFLOPS (default 989, H100 SXM dense bf16) is the per-GPU peak MFU is measured against.
set -euo pipefail
MODEL_DIR=${1:?usage: benchmarks/llm_recipe_gpu.sh MODEL_DIR [GPUS] [EPOCHS]}
[[ -f "$MODEL_DIR/config.json" ]] || { echo "$MODEL_DIR: no config.json (a local HF model folder)" >&2; exit 2; }
if [[ -n "${2:-}" ]]; then
  GPUS=$2
elif command -v nvidia-smi > /dev/null; then
  GPUS=$(nvidia-smi -L | wc -l)
else
  GPUS=1
fi
EPOCHS=${3:-3}
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network: local files only
exec "$PY" benchmarks/llm_recipe.py \
  --base-model "$MODEL_DIR" \
  --epochs "$EPOCHS" \
  --batch-size 8 \
  --max-seq-length 512 \
  --precision bf16 \
  --launch-gpus "$GPUS" \
  --peak-tflops "${PEAK_TFLOPS:-989}" \
  ${DRY_RUN:+--dry-run}
