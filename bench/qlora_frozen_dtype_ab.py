"""QLoRA with its other frozen weights (embeddings, norms, the tied head) in bf16 against PEFT's fp32 upcast
(``quant.upcast_frozen``): the default config's QLoRA training (140 steps, its learning curve on) in this process,
then NBA validation (teacher-forced exact match, every row) and general validation (generated answers), as the
curve's alpha-1 point scores them. Run each arm in its own process, alternating (A-B-B-A):

    python bench/qlora_frozen_dtype_ab.py bf16 >> out.jsonl
    python bench/qlora_frozen_dtype_ab.py fp32 >> out.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arm", choices=["bf16", "fp32"])
    p.add_argument("--method", default="qlora")
    p.add_argument("--steps", type=int, default=140)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    a = p.parse_args()

    from nbatune import evaluation
    from nbatune.allocator import active as allocator
    from nbatune.compare import Comparison
    from nbatune.measure import PeakMemory, machine_peak
    from nbatune.modeling import load_model
    from nbatune.training import train

    sets = [f"train.max_steps={a.steps}", f"quant.upcast_frozen={str(a.arm == 'fp32').lower()}"]
    cmp = Comparison(a.config, sets).setup()
    c = cmp.cfg
    with PeakMemory("cpu") as mem, tempfile.TemporaryDirectory() as ckpt:
        model = load_model(cmp.model_path, a.method, c.model, cmp.rt, c.lora, c.quant, c.seed)
        t0 = time.perf_counter()

        def curve(m):
            with mem.paused():
                return evaluation.teacher_forced_exact_match(m, cmp.tokenizer, cmp.curve_rows, cmp.rt)

        out = train(model, cmp.tokenizer, cmp.train_rows, a.method, c.train, cmp.rt, Path(ckpt), c.seed, curve=curve)
        wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    nba = evaluation.teacher_forced_exact_match(model, cmp.tokenizer, cmp.select_rows, cmp.rt)
    t2 = time.perf_counter()
    general = evaluation.general_accuracy(model, cmp.tokenizer, cmp.general_val, cmp.rt, c.eval, cmp.retention_pools)
    t3 = time.perf_counter()
    print(json.dumps({
        "method": a.method, "arm": a.arm, "steps": out.steps, "allocator": allocator(),
        "train_call_s": round(wall, 2), "train_s": round(out.seconds, 2), "tokens_per_second": round(out.tokens_per_second, 1),
        "peak_train_mib": round(mem.peak_bytes / 2**20), "learning_curve": out.learning_curve,
        "losses": [[s, round(v, 4)] for s, v in out.loss_curve],
        "nba_validation": nba, "nba_validation_s": round(t2 - t1, 2),
        "general_validation": general, "general_validation_s": round(t3 - t2, 2),
        "matmul": machine_peak("cpu")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
