#!/usr/bin/env bash
# Issue 21's CPU figures for this machine's kind of CPU in one command (about 12 minutes on 2 cores), each file named
# by the kind (AMX, AVX512-BF16, ...) and the date, so that an AMX machine's figures sit beside the others:
#   1. the model's matmuls alone against the peak of the precision a run trains in (bench/gemm_shapes.py)
#   2. a torch profile of 20 default steps per technique, the default config's batches (bench/profile_steps.py)
#   3. ours against TRL tuned at the default's batch of 4 (BATCH), one A-B-B-A block per technique (bench/bench.py)
# Then time `make run` on the same machine for the wall time. DRY_RUN=1 prints the plan (a test runs it).
# Knobs: PYTHON (.venv/bin/python), STEPS (20), BATCH (4), METHODS (full,lora,qlora).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-20}
BATCH=${BATCH:-4}
METHODS=${METHODS:-full,lora,qlora}
# the kind, and the tcmalloc `nbatune run` loads itself (nbatune.allocator.find_tcmalloc), so both sides of the TRL
# comparison run on the allocator nbatune runs on
read -r KIND TCMALLOC < <("$PY" -c "from nbatune.allocator import find_tcmalloc
from nbatune.measure import cpu_kind, cpu_matmul_features
print(cpu_kind(cpu_matmul_features()).lower().replace('-', ''), find_tcmalloc() or '')")
STAMP="$KIND-$(date +%Y%m%d)"
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "would run: $*"; else echo "+ $*"; "$@"; fi; }
export LD_PRELOAD=${LD_PRELOAD:-$TCMALLOC}
echo "CPU kind: $KIND (files bench/*-$STAMP*.json); allocator preload: ${LD_PRELOAD:-none}"
run "$PY" bench/gemm_shapes.py --json "bench/gemm-shapes-$STAMP.json"
run "$PY" bench/profile_steps.py --steps "$STEPS" --methods "$METHODS" --json "bench/profile-$STAMP.json"
run "$PY" bench/bench.py --steps "$STEPS" --batch "$BATCH" --methods "$METHODS" --peers tuned \
  --json "bench/results-$STAMP-batch$BATCH-tuned.json"
