"""torch.compile of the decoder layers for training (``train.compile``), against the eager step: one technique's
default training (the default config's 140 steps, its learning curve on) in this process, then teacher-forced
exact match on all validation rows. Run each arm in its own process; for a cold compile give the compiled arm an
empty inductor cache, as a fresh machine has:

    python bench/compile_ab.py lora eager >> out.jsonl
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python bench/compile_ab.py lora compile >> out.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method")
    p.add_argument("mode", choices=["eager", "compile"])
    p.add_argument("--steps", type=int, default=140)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    a = p.parse_args()

    from nbatune import evaluation
    from nbatune.compare import Comparison
    from nbatune.measure import machine_peak
    from nbatune.modeling import load_model
    from nbatune.training import train

    sets = [f"train.max_steps={a.steps}", f"train.compile.{a.method}={str(a.mode == 'compile').lower()}"]
    cmp = Comparison(a.config, sets).setup()
    c = cmp.cfg
    model = load_model(cmp.model_path, a.method, c.model, cmp.rt, c.lora, c.quant, c.seed)
    with tempfile.TemporaryDirectory() as ckpt:
        t0 = time.perf_counter()
        out = train(model, cmp.tokenizer, cmp.train_rows, a.method, c.train, cmp.rt, Path(ckpt), c.seed,
                    curve=lambda m: evaluation.teacher_forced_exact_match(m, cmp.tokenizer, cmp.curve_rows, cmp.rt))
        wall = time.perf_counter() - t0
    print(json.dumps({
        "method": a.method, "mode": a.mode, "steps": out.steps, "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "train_call_s": round(wall, 2), "train_s": round(out.seconds, 2), "tokens_per_second": round(out.tokens_per_second, 1),
        "learning_curve": out.learning_curve, "losses": [[s, round(v, 4)] for s, v in out.loss_curve],
        "validation_exact_match": evaluation.teacher_forced_exact_match(model, cmp.tokenizer, cmp.select_rows, cmp.rt),
        "matmul": machine_peak("cpu")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
