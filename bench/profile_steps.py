"""Where a training step's time goes, per technique: a torch profile of a few of our training steps on the embedded
model (the default config's batches), operators grouped by what they are (matmuls, dtype casts, zero fills,
elementwise and reductions, the optimizer, bitsandbytes' 4-bit work, the rest), with the top operators by self
time, and the machine's matmul kind and peak measured in the same process.

    python bench/profile_steps.py --steps 10 --json bench/profile-cpu-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# operator name -> category, first match wins (torch's CPU profiler names, bitsandbytes' custom ops)
CATEGORIES = (
    ("4-bit (bitsandbytes)", ("bitsandbytes", "dequant", "quantize_4bit", "gemv_4bit", "gemm_4bit")),
    ("optimizer", ("adam", "optimizer", "_foreach_")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn", "aten::_mkl", "onednn")),
    ("casts and copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous")),
    ("zero fills", ("aten::zero_", "aten::fill_", "aten::zeros", "aten::new_zeros")),
    ("elementwise and reductions", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::exp",
                                    "aten::pow", "aten::rsqrt", "aten::mean", "aten::sum", "aten::softmax",
                                    "aten::_softmax", "aten::neg", "aten::cat", "aten::where", "aten::log_softmax",
                                    "aten::_log_softmax", "aten::nll_loss", "aten::cross_entropy", "aten::sigmoid",
                                    "aten::masked_fill", "aten::index", "aten::embedding", "aten::gather",
                                    "aten::scatter", "aten::cos", "aten::sin", "aten::max", "aten::norm")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(low.startswith(k) or k in low for k in keys):
            return cat
    return "other"


def profile(method: str, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from nbatune.config import load_config
    from nbatune.data.prepare import prepare_training_data
    from nbatune.measure import reuse_freed_memory
    from nbatune.modeling import load_model
    from nbatune.runtime import resolve
    from nbatune.training import train

    cfg = load_config(None, [f"train.max_steps={steps}", "train.logging_steps=1000", "train.memory_check=skip",
                             "train.curve_steps=0"])
    rt = resolve(cfg.train.device, cfg.train.precision)
    data = prepare_training_data(cfg)
    model = load_model(data.model_path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed,
                       cfg.train.gradient_checkpointing[method])
    with reuse_freed_memory(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        out = train(model, data.tokenizer, data.train_rows, method, cfg.train, rt, Path("/tmp/nbatune-profile"),
                    cfg.seed)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares = defaultdict(float)
    for e in events:
        shares[category(e.key)] += e.self_cpu_time_total / total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"method": method, "steps": out.steps, "wall_s": wall, "tokens_per_s": out.tokens_per_second,
            "shares": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
            "top": [{"op": e.key, "category": category(e.key), "self_ms": e.self_cpu_time_total / 1000,
                     "calls": e.count, "share": e.self_cpu_time_total / total} for e in top]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="full,lora,qlora")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    from nbatune.measure import machine_peak

    out = {"machine": machine_peak("cpu"), "profiles": [profile(m, a.steps) for m in a.methods.split(",")]}
    m = out["machine"]
    print(f"machine: {m['kind']}, bf16 {m['bf16_flops'] / 1e9:.0f} GFLOP/s, fp32 {m['fp32_flops'] / 1e9:.0f} GFLOP/s")
    cats = [c for c, _ in CATEGORIES] + ["other"]
    print("| technique | tokens/s | " + " | ".join(cats) + " |")
    print("|---|---:|" + "---:|" * len(cats))
    for r in out["profiles"]:
        print(f"| {r['method']} | {r['tokens_per_s']:.0f} | "
              + " | ".join(f"{100 * r['shares'].get(c, 0):.0f}%" for c in cats) + " |")
    for r in out["profiles"]:
        print(f"\n{r['method']}: top operators by self time")
        for t in r["top"]:
            print(f"  {t['op']:40s} {t['category']:28s} {t['share']:6.1%} {t['calls']:6d} calls")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
