"""Packed rows handed to the model as they are (padded to the widest row) against flattened into one padding-free
row with the lean eager kernel attending within the packed rows (``PackedCollator(flat=True)``): forward and
backward of the same default-config batches on the embedded model, one process per technique, a warm-up pass and
then A-B-B-A-A-B-B-A, with the losses of both.

    python bench/flat_rows_ab.py --methods full lora qlora --steps 12 --json bench/flat-rows-ab-cpu-YYYYMMDD.json
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
    p.add_argument("--steps", type=int, default=12)
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
    batches = [rng.sample(data.train_rows, cfg.train.batch_size) for _ in range(a.steps)]
    collate = {"padded": PackedCollator(data.tokenizer.pad_token_id, cfg.train.pack_row_tokens),
               "flat": PackedCollator(data.tokenizer.pad_token_id, cfg.train.pack_row_tokens, flat=True)}
    real = sum(int(collate["flat"](b)["real_tokens"]) for b in batches)
    padded_tokens = sum(collate["padded"](b)["input_ids"].numel() for b in batches)
    out = {"matmul": machine_peak(rt.device), "steps": a.steps, "real_tokens": real, "padded_tokens": padded_tokens,
           "methods": {}}
    for method in a.methods:
        model = load_model(data.model_path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed, False).train()
        res = {"padded": [], "flat": [], "losses": {}}
        with attention_kernel(model, LEAN_EAGER):
            for i, name in enumerate(["padded", "padded", "flat", "flat", "padded", "padded", "flat", "flat", "padded"]):
                t0, losses = time.perf_counter(), []
                for b in batches:
                    batch = collate[name](b)
                    batch.pop("real_tokens")
                    with rt.autocast():
                        loss, _ = answer_only_loss(model, batch, None, cfg.train.loss_chunk_tokens)
                    loss.backward()
                    model.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                if i:  # the first pass warms up
                    res[name].append(round(time.perf_counter() - t0, 2))
                res["losses"].setdefault(name, losses)
        res["same_losses"] = res["losses"]["padded"] == res["losses"]["flat"]
        res["change"] = round(sum(res["flat"]) / sum(res["padded"]) - 1, 4)
        out["methods"][method] = res
        print(method, "padded", res["padded"], "flat", res["flat"], f"{res['change']:+.1%}",
              "same losses" if res["same_losses"] else "losses differ", flush=True)
        del model
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
