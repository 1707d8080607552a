"""A technique's training peak as a run measures it (``PeakMemory`` around loading and training, the default config)
in a fresh process, with or without the run's glibc setting (``measure.reuse_freed_memory``), beside the estimate,
with the process's memory every 5 s (how the heap grows) and the allocator it ran on. Another allocator is chosen as
a run chooses it, before the process starts:

    python bench/memory_run.py --method lora --heap reuse --steps 140     # --heap plain: glibc's defaults
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench/memory_run.py --method lora --heap plain
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="lora")
    p.add_argument("--heap", choices=["reuse", "plain"], default="reuse")
    p.add_argument("--steps", type=int, default=140)
    a = p.parse_args()

    import os
    import threading

    import psutil

    from nbatune import allocator
    from nbatune.compare import Comparison
    from nbatune.measure import PeakMemory, reuse_freed_memory
    from nbatune.modeling import load_model
    from nbatune.training import train

    c = Comparison(str(ROOT / "configs" / "default.yaml"),
                   [f"train.max_steps={a.steps}", "train.curve_steps=0", "train.save_steps=0"]).setup()
    cfg = c.cfg
    with reuse_freed_memory() if a.heap == "reuse" else contextlib.nullcontext():
        t0 = time.perf_counter()
        with PeakMemory("cpu") as mem:
            proc, every_5s, done = psutil.Process(os.getpid()), [], threading.Event()

            def sample():
                while not done.wait(5.0):
                    every_5s.append(round((proc.memory_info().rss - mem.baseline_bytes) / 2**20))
            threading.Thread(target=sample, daemon=True).start()
            model = load_model(c.model_path, a.method, cfg.model, c.rt, cfg.lora, cfg.quant, cfg.seed)
            out = train(model, c.tokenizer, c.train_rows, a.method, cfg.train, c.rt, Path("/tmp/nbatune-memory-run"),
                        cfg.seed)
            done.set()
    print(json.dumps({"method": a.method, "allocator": allocator.active(), "reuse": a.heap == "reuse",
                      "steps": a.steps, "peak_mib": mem.peak_bytes / 2**20,
                      "estimate_mib": c.memory_estimates[a.method].total / 2**20, "tok_s": out.tokens_per_second,
                      "train_s": out.seconds, "wall": time.perf_counter() - t0, "rss_every_5s_mib": every_5s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
