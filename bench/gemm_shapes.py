"""The model's own matmuls alone: each linear layer's forward (x @ W.T), input gradient (g @ W) and weight gradient
(g.T @ x) in the precision a run trains in here (bf16, or fp32 on an AVX2-only CPU) at the tokens of one default
step, hot (one weight, reused) and cold (30 weights in turn, as the 30 decoder layers run), plus the rank-16 adapter
products, against the 2048 x 2048 peak measured in the same process.
It says how much of the gap between a step's MFU and that peak is the shapes themselves:

    python bench/gemm_shapes.py --json bench/gemm-shapes-cpu-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# SmolLM2-135M: hidden 576, MLP 1,536, 3 key-value heads of 64; LoRA rank 16
LAYERS = {"q_proj / o_proj": (576, 576), "k_proj / v_proj": (576, 192), "gate_proj / up_proj": (576, 1536),
          "down_proj": (1536, 576), "LoRA A (576 in)": (576, 16), "LoRA B (to 1,536)": (16, 1536)}


def rate(fn, flops: float, seconds: float = 0.5) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return flops * n / (time.perf_counter() - t0) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[316, 1264],
                   help="rows per matmul: a default step's real tokens (batch 4), and four times that")
    p.add_argument("--json")
    a = p.parse_args()
    import torch

    from nbatune.measure import machine_peak
    from nbatune.runtime import resolve

    torch.manual_seed(0)
    rt = resolve("cpu", "auto")  # the run's precision: bf16 emulated in software (AVX2) would take hours
    rows = []
    for m in a.tokens:
        for name, (k, n) in LAYERS.items():
            ws = [torch.randn(n, k, dtype=rt.dtype) for _ in range(30)]
            xs = [torch.randn(m, k, dtype=rt.dtype) for _ in range(30)]
            gs = [torch.randn(m, n, dtype=rt.dtype) for _ in range(30)]
            flops = 2 * m * k * n
            cold = {"forward": lambda: [torch.nn.functional.linear(x, w) for x, w in zip(xs, ws)],
                    "input gradient": lambda: [g @ w for g, w in zip(gs, ws)],
                    "weight gradient": lambda: [g.t() @ x for g, x in zip(gs, xs)]}
            row = {"tokens": m, "layer": name, "k": k, "n": n,
                   "hot_gflops": {"forward": round(rate(lambda: torch.nn.functional.linear(xs[0], ws[0]), flops)),
                                  "input gradient": round(rate(lambda: gs[0] @ ws[0], flops)),
                                  "weight gradient": round(rate(lambda: gs[0].t() @ xs[0], flops))},
                   "cold_gflops": {kind: round(rate(fn, 30 * flops)) for kind, fn in cold.items()}}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    out = {"machine": machine_peak("cpu"), "threads": torch.get_num_threads(), "precision": rt.precision, "rows": rows}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
