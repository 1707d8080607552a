#!/usr/bin/env bash
# The GPU check in one command, for a lent CUDA machine that reaches no package index and no hub.
# Prepare here first:  make gpu-bundle   (wheels the image lacks + SmolLM2 tokenizer, under 64 MiB)
# Then, on the device (carry .gpu-bundle, timeout 600 s; IMPLEMENTATION_GUIDE.md has the exact call):
#   bash bench/gpu.sh
# Stages (each writes one JSON and one log under $OUT, or bench/gpu-out/ without it; 7 files with versions.txt):
#   1. ours vs TRL with its defaults vs TRL tuned, full / LoRA / QLoRA, random-weight SmolLM2-1.7B
#   2. the memory estimator against measured CUDA peaks
#   3. a short three-technique execute() through the facade with the GPU preset's settings
# DRY_RUN=1 prints the plan and checks what can be checked without a GPU (CI runs it).
# Knobs: STEPS (20), BATCH (32), SCHEDULE (ab | abba), BUNDLE (.gpu-bundle), FACADE_S / BENCH_S / MEMORY_S
# (each stage's limit in seconds: 230 / 220 / 90).
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
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 USE_HUB_KERNELS=NO
models=/tmp/nbatune-bench/models

# What the machine is, beside the figures: the image's packages are not the ones pinned here.
if [ "$DRY" != 1 ]; then
  "$PY" - > "$DEST/versions.txt" 2>&1 <<'PYEOF' || true
import importlib, platform, torch
print("python", platform.python_version(), "| device", torch.cuda.get_device_name(0))
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "evaluate"):
    try:
        m = importlib.import_module(name); print(name, m.__version__, m.__file__)
    except Exception as e:  # a missing package is itself a finding
        print(name, "unavailable:", e)
PYEOF
  cat "$DEST/versions.txt"
fi
# Each stage runs even when an earlier one failed (a lease is too short to rerun them all); its log comes back.
failed=0
# Each stage has its own time limit (seconds) so that the three fit one 600-s call; bench.py prints every
# finished run as a BENCH line, so a stage cut short still leaves its figures in its log.
stage() { local name=$1 limit=$2; shift 2
  if [ "$DRY" = 1 ]; then echo "would run (at most ${limit} s): $*"; return; fi
  local t0=$SECONDS
  timeout "$limit" "$@" > "$DEST/$name.log" 2>&1 || { echo "stage $name failed (exit $?)"; failed=1; }
  pkill -f "$2" 2>/dev/null || true  # a child process the limit left behind would hold GPU memory into the next stage
  echo "stage $name: $((SECONDS - t0)) s"; tail -n 25 "$DEST/$name.log"; }
# The user's path first (execute() on CUDA), then the speed comparison, then the estimator.
stage facade "${FACADE_S:-230}" "$PY" bench/gpu_facade.py --models-dir "$models" --json "$DEST/facade-gpu.json"
stage bench "${BENCH_S:-220}" "$PY" bench/bench.py --model smollm2-1.7b --models-dir "$models" --steps "$STEPS" --batch "$BATCH" \
  --peers defaults,tuned --schedule "${SCHEDULE:-ab}" --json "$DEST/bench-gpu.json"
stage memory "${MEMORY_S:-90}" "$PY" bench/memory.py --models smollm2-1.7b --batches "$BATCH" --steps 3 --json "$DEST/memory-gpu.json"
if [ "$DRY" = 1 ]; then
  "$PY" bench/gpu_facade.py --check
  "$PY" bench/gpu_bundle.py --plan > /dev/null
  echo "dry run: ok"
fi
exit $failed
