"""Teacher-forced exact match (the curve's NBA measure) on a finished run's models, rows in their own order
against rows in length order: seconds, and how many rows' hits differ (target: none).

    python bench/curve_order.py runs/<run> --methods full lora qlora --json bench/curve-order-DATE.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    p.add_argument("--json", default=None)
    a = p.parse_args()

    import torch

    from nbatune import evaluation
    from nbatune.compare import Comparison
    from nbatune.data.tokenize import IGNORE, PadCollator
    from nbatune.inference import load_from_run
    from nbatune.loss import answer_columns, shifted_targets
    from nbatune.measure import machine_peak

    results = json.loads((Path(a.run) / "results.json").read_text())
    cmp = Comparison(results["config"], ["train.replay_share=0"]).setup()  # the run's validation rows

    @torch.no_grad()
    def hits(model, tok, rows, rt, bs=8):  # per row, in the order given (the scorer before sorting)
        evaluation.eval_mode(model)
        out, collate = [], PadCollator(tok.pad_token_id)
        for s in range(0, len(rows), bs):
            b = collate(rows[s:s + bs])
            t = shifted_targets(b["labels"])
            keep = answer_columns(t)
            with rt.autocast(), evaluation.cached_weight_casts(model):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=keep).logits
            t = t[:, keep]
            out += ((logits.argmax(-1) == t) | (t == IGNORE)).all(1).tolist()
        return out

    rows = cmp.select_rows
    order = sorted(range(len(rows)), key=lambda i: rows[i]["length"])
    report = {"run": a.run, "rows": len(rows), "matmul": machine_peak("cpu"), "methods": {}}
    for m in a.methods:
        model, tok, rt, _ = load_from_run(a.run, m, alpha=1.0)
        t0 = time.perf_counter()
        given = hits(model, tok, rows, rt)
        t1 = time.perf_counter()
        by_length = hits(model, tok, [rows[i] for i in order], rt)
        t2 = time.perf_counter()
        back = dict(zip(order, by_length))
        report["methods"][m] = {"given_order_s": t1 - t0, "length_order_s": t2 - t1, "hits": sum(given),
                                "rows_differing": sum(given[i] != back[i] for i in range(len(rows)))}
        print(m, report["methods"][m], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
