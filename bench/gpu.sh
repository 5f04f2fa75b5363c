#!/usr/bin/env bash
# bench/gpu.sh: git-base on one GPU, in under 5 minutes (budgeted for one H100). Prints where the JSON went.
#
# 1. raw: git-base's architecture (random weights, built from code by bench/gpu_model.py), fp16 on CUDA,
#    images/s at batch 16..256 with inputs already preprocessed, and one CPU thread's preprocessing rate;
# 2. pipeline: the whole stack (redis-server, API, one caption worker with that model on CUDA, a local
#    image server) through bench/bulk.py: single jobs (baseline), then a bulk run with interactive probes.
#
# Needs: this checkout's .venv with torch built for CUDA, redis-server on PATH, nvidia-smi. Reads nothing
# outside the repository and downloads nothing (HF_HUB_OFFLINE=1).
# Usage: bench/gpu.sh [OUT_DIR]      (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${1:-$(mktemp -d -t gpu-bench-XXXX)}
BATCH_SIZES=${BATCH_SIZES:-16,32,64,128,256}
PIPELINE_BATCH=${PIPELINE_BATCH:-128}
PIPELINE_ITEMS=${PIPELINE_ITEMS:-6000}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
command -v redis-server >/dev/null || { echo "redis-server is not on PATH" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

MODEL_DIR="$OUT/git-base-standin"
# Each step has its own bound, so the whole script stays under 5 minutes even when one step stalls.
timeout 120 "$PY" -m bench.gpu_model --folder "$MODEL_DIR" --batch-sizes "$BATCH_SIZES" --new-tokens 20 \
  | tee "$OUT/raw.json"
timeout 150 "$PY" -m bench.bulk --model "$MODEL_DIR" --items "$PIPELINE_ITEMS" --batch-size "$PIPELINE_BATCH" \
  --singles 200 --clients 32 --image-size 224 --probe-rate 4 | tee "$OUT/pipeline.json"
echo "results in $OUT" >&2
