#!/usr/bin/env bash
# The GPU check in one command, for a lent CUDA machine that reaches no package index and no hub.
# Prepare here first:  make gpu-bundle   (wheels the image lacks + SmolLM2 tokenizer, under 64 MiB)
# Then, on the device (carry .gpu-bundle, timeout 600 s; IMPLEMENTATION_GUIDE.md has the exact call):
#   bash bench/gpu.sh
# Stages (each writes one JSON under $OUT, or bench/gpu-out/ without it; at most 8 files):
#   1. ours vs TRL with its defaults vs TRL tuned, full / LoRA / QLoRA, random-weight SmolLM2-1.7B
#   2. the memory estimator against measured CUDA peaks
#   3. a short three-technique execute() through the facade with the GPU preset's settings
# DRY_RUN=1 prints the plan and checks what can be checked without a GPU (CI runs it).
# Knobs: STEPS (20), BATCH (32), SCHEDULE (ab | abba), BUNDLE (.gpu-bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUNDLE=${BUNDLE:-.gpu-bundle}
DEST=${OUT:-bench/gpu-out}
DRY=${DRY_RUN:-0}
STEPS=${STEPS:-20}
BATCH=${BATCH:-32}
run() { if [ "$DRY" = 1 ]; then echo "would run: $*"; else "$@"; fi; }

if [ "$DRY" != 1 ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
fi
mkdir -p "$DEST"
# Install what the image lacks from the bundle, into a separate folder: the machine's torch is never touched.
if [ -d "$BUNDLE/wheels" ]; then
  run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nbatune-site \
    "$BUNDLE"/wheels/*.whl
  export PYTHONPATH="/tmp/nbatune-site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no $BUNDLE/wheels: using the packages already installed (make gpu-bundle prepares them)" >&2
fi
if [ -d "$BUNDLE/tokenizer" ]; then export NBATUNE_TOKENIZER="$PWD/$BUNDLE/tokenizer"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
models=/tmp/nbatune-bench/models

run "$PY" bench/bench.py --model smollm2-1.7b --models-dir "$models" --steps "$STEPS" --batch "$BATCH" \
  --peers defaults,tuned --schedule "${SCHEDULE:-ab}" --json "$DEST/bench-gpu.json"
run "$PY" bench/memory.py --models smollm2-1.7b --batches "$BATCH" --steps 3 --json "$DEST/memory-gpu.json"
run "$PY" bench/gpu_facade.py --models-dir "$models" --json "$DEST/facade-gpu.json"
if [ "$DRY" = 1 ]; then
  "$PY" bench/gpu_facade.py --check
  "$PY" bench/gpu_bundle.py --plan > /dev/null
  echo "dry run: ok"
fi
