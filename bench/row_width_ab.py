"""``train.pack_row_tokens``: forward and backward of the same default-config batches packed into rows of one width
against another (the examples never attend to each other at any width, so only the padding, the attention's
width and the rounding differ). One process per technique, a warm-up pass, then A-B-B-A blocks, with the padded
positions of each width and the largest loss difference between them:

    python bench/row_width_ab.py --widths 128 512 --json bench/row-width-ab-cpu-KIND-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    p.add_argument("--widths", nargs=2, type=int, default=[128, 512])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from nbatune.attention import LEAN_EAGER, attention_kernel
    from nbatune.config import load_config
    from nbatune.data.prepare import prepare_training_data
    from nbatune.data.tokenize import PackedCollator
    from nbatune.loss import answer_only_loss
    from nbatune.measure import machine_peak
    from nbatune.modeling import load_model
    from nbatune.runtime import resolve

    cfg = load_config(ROOT / "configs" / "default.yaml")
    rt = resolve(cfg.train.device, cfg.train.precision)
    data = prepare_training_data(cfg)
    rng = random.Random(0)
    examples = [rng.sample(data.train_rows, cfg.train.batch_size) for _ in range(a.steps)]
    batches = {}
    for w in a.widths:
        batches[w] = [PackedCollator(data.tokenizer.pad_token_id, w)(b) for b in examples]
        for b in batches[w]:
            b.pop("real_tokens")
    real = sum(len(x["input_ids"]) for b in examples for x in b)
    out = {"precision": rt.precision, "matmul": machine_peak(rt.device), "steps": a.steps,
           "batch_size": cfg.train.batch_size, "real_tokens": real,
           "positions": {w: sum(b["input_ids"].numel() for b in batches[w]) for w in a.widths}, "methods": {}}
    peaks = {d: f"{out['matmul'][d + '_flops'] / 1e9:.0f} GFLOP/s" for d in ("bf16", "fp32")}
    print(out["matmul"]["kind"], rt.precision, "peaks", peaks, "emulated", out["matmul"].get("emulated", []),
          "positions", out["positions"], "real", real, flush=True)
    order = [a.widths[0]] + [w for _ in range(a.blocks) for w in (a.widths[0], a.widths[1], a.widths[1], a.widths[0])]
    for method in a.methods:
        model = load_model(data.model_path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed).train()
        res = {str(w): [] for w in a.widths}
        losses = {}
        with attention_kernel(model, LEAN_EAGER):
            for i, w in enumerate(order):
                t0, got = time.perf_counter(), []
                for b in batches[w]:
                    with rt.autocast():
                        loss, _ = answer_only_loss(model, b, None, cfg.train.loss_chunk_tokens)
                    loss.backward()
                    model.zero_grad(set_to_none=True)
                    got.append(loss.item())
                if i:  # the first pass warms up
                    res[str(w)].append(round(time.perf_counter() - t0, 2))
                losses.setdefault(w, got)
        wa, wb = (str(w) for w in a.widths)
        res["change"] = round(sum(res[wb]) / sum(res[wa]) - 1, 4)
        res["max_loss_diff"] = max(abs(x - y) for x, y in zip(losses[a.widths[0]], losses[a.widths[1]]))
        out["methods"][method] = res
        print(method, wa, res[wa], wb, res[wb], f"{res['change']:+.1%}", "max loss diff", f"{res['max_loss_diff']:.2e}",
              flush=True)
        del model
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
