"""Evaluation's peak memory per technique, each in a fresh process (issue 21 point 4's clean state), beside the
estimate (``memory.estimate_eval_memory``) and the peak the run itself measured after training in its process.

Each model of a finished run is loaded as it was scored (``load_from_run``; the base as the run loads it), the
heap handed back, and ``evaluate_model`` run under ``PeakMemory`` exactly as the run runs it: eval loss, the test
answers, the retention answers. Then one curve point (teacher-forced NBA validation and general validation) under
a second ``PeakMemory``: its own peak above the level it starts at. Run it on the allocator a run uses (``nbatune``
relaunches itself on tcmalloc where installed; a script does not):

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        python bench/eval_memory.py runs/<run> --batch-sizes 64 32 --json bench/eval-memory-cpu-DATE.json

The estimate's two constants (``memory.EVAL_SLACK``, ``EVAL_OVERHEAD``) were fitted on full and LoRA at batch 64;
the other cases check them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(run: str, method: str, batch: int) -> dict:
    import shutil

    from nbatune import allocator, evaluation
    from nbatune.compare import Comparison
    from nbatune.inference import load_from_run
    from nbatune.measure import PeakMemory, free_memory
    from nbatune.modeling import load_model

    results = json.loads((Path(run) / "results.json").read_text())
    c = Comparison(results["config"], [f"eval.batch_size={batch}", "eval.reuse_base=false"]).setup()
    shutil.rmtree(c.run_dir)
    if method == "base":
        model = load_model(c.model_path, "base", c.cfg.model, c.rt, c.cfg.lora, c.cfg.quant, c.cfg.seed)
    else:
        model = load_from_run(run, method, alpha=1.0)[0]
    free_memory()
    t0 = time.perf_counter()
    with PeakMemory("cpu") as ev:
        evaluation.evaluate_model(model, c.tokenizer, c.val_rows, c.test_records, c.rt, c.cfg.eval, c.pools,
                                  c.retention_records, c.retention_pools)
    with PeakMemory("cpu") as cv:
        evaluation.teacher_forced_exact_match(model, c.tokenizer, c.select_rows, c.rt)
        evaluation.general_accuracy(model, c.tokenizer, c.general_val, c.rt, c.cfg.eval, c.retention_pools)
    est = c.eval_memory_estimates[method]  # the run's own estimate, made in setup
    cells = max(evaluation.answering_cells(c.tokenizer, r, cap, batch) for r, cap in (
        (c.test_records, c.cfg.eval.max_new_tokens), (c.retention_records, evaluation.RETENTION_MAX_NEW_TOKENS)))
    in_run = (results.get(method) or {}).get("eval_peak_memory_bytes")
    return {"method": method, "batch_size": batch, "allocator": allocator.active(),
            "eval_peak_mib": ev.peak_bytes / 2**20, "curve_point_mib": cv.peak_bytes / 2**20,
            "estimate_mib": est.total / 2**20, "cache_cells": cells,
            "estimate_parts_mib": {k: v / 2**20 for k, v in est.parts.items()},
            "in_run_eval_peak_mib": in_run / 2**20 if in_run and batch == results["config"]["eval"]["batch_size"]
            else None, "seconds": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--methods", nargs="+", default=["base", "full", "lora", "qlora"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64])
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.run, a.child[0], int(a.child[1]))), flush=True)
        return 0

    from nbatune.measure import machine_peak

    report = {"run": a.run, "matmul": machine_peak("cpu"), "command": " ".join(sys.argv), "cases": []}
    for batch in a.batch_sizes:
        for m in a.methods:
            # the command a run is started with: the same allocator (``nbatune`` relaunches itself on tcmalloc)
            out = subprocess.run([sys.executable, __file__, a.run, "--child", m, str(batch)], capture_output=True,
                                 text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
            case = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
            report["cases"].append(case)
            case["estimate_error"] = case["estimate_mib"] / case["eval_peak_mib"] - 1
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in case.items()
                              if k != "estimate_parts_mib"}), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
