"""The 3-shot baseline's prompts read with their shared examples once per category (``evaluation._prefill_shared``)
against the same prompts read whole, and against the per-question examples used before 2026-12-05: time, accuracy
and how many answers are the same text, on a finished run's base model, in one process.

    python bench/few_shot_prefix.py runs/<run> --json bench/few-shot-prefix-cpu-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_question_shots(test, train, k, seed):
    """The examples drawn per question, as ``baselines.few_shot_records`` did before 2026-12-05."""
    by_cat = defaultdict(list)
    for r in train:
        by_cat[r["category"]].append(r)
    out = []
    for i, rec in enumerate(test):
        shots = random.Random(f"{seed}:{i}").sample(by_cat.get(rec["category"]) or train, k)
        msgs = rec["messages"]
        out.append({**rec, "messages": msgs[:1] + [t for s in shots for t in s["messages"][-2:]] + msgs[-2:]})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from nbatune import baselines, evaluation, scoring
    from nbatune.compare import Comparison
    from nbatune.inference import load_from_run
    from nbatune.measure import machine_peak

    results = json.loads((Path(a.run) / "results.json").read_text())
    cmp = Comparison(results["config"], ["train.replay_share=0"]).setup()
    k, seed = cmp.cfg.eval.few_shot, cmp.cfg.data.seed
    fixed = baselines.few_shot_records(cmp.test_records, cmp.records["train"], k, seed)
    arms = {"per_question_whole": per_question_shots(cmp.test_records, cmp.records["train"], k, seed),
            "per_category_whole": [{kk: v for kk, v in r.items() if kk != "shared_turns"} for r in fixed],
            "per_category_shared": fixed}
    model, tok, rt, _ = load_from_run(a.run, "base", alpha=1.0)
    out = {"run": a.run, "matmul": machine_peak("cpu"), "arms": {}}
    for name in ["per_category_shared", "per_category_whole", "per_question_whole", "per_category_shared"]:
        records = arms[name]
        budgets = evaluation.answer_budgets(tok, records, cmp.cfg.eval.max_new_tokens)
        t0 = time.perf_counter()
        preds = evaluation.generate_answers(model, tok, records, rt, budgets, cmp.cfg.eval.batch_size, name,
                                            cmp.cfg.eval.stop_at_newline)
        row = {"seconds": round(time.perf_counter() - t0, 1), "accuracy": scoring.score(records, preds, cmp.pools)["accuracy"],
               "prompt_tokens": sum(len(tok(evaluation.render_prompt(tok, r["messages"]), add_special_tokens=False)["input_ids"])
                                    for r in records), "predictions": preds}
        out["arms"].setdefault(name, []).append(row)
        print(name, row["seconds"], row["accuracy"], flush=True)
    same = lambda x, y: sum(u == v for u, v in zip(x["predictions"], y["predictions"]))
    out["same_answers_shared_vs_whole"] = same(out["arms"]["per_category_shared"][0], out["arms"]["per_category_whole"][0])
    out["same_answers_shared_twice"] = same(*out["arms"]["per_category_shared"])
    print("same answers, shared vs whole:", out["same_answers_shared_vs_whole"], "of", len(fixed))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
