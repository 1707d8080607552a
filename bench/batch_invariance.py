"""Does a greedy answer depend on the batch it was generated in? Reload each technique of a finished run at
its operating point (``load_from_run``, as ``nbatune ask`` does) and answer test questions one at a time
and in the run's batches; count the answers that differ, and how many of those change the score.

    python bench/batch_invariance.py runs/<run> --n 96 --out bench/batch-invariance-cpu-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from nbatune import techniques
    from nbatune.config import load_config
    from nbatune.data.loading import load_splits
    from nbatune.evaluation import answer_budgets, generate_answers
    from nbatune.inference import load_from_run
    from nbatune.scoring import candidate_pools, score

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=96, help="test questions (the first n)")
    p.add_argument("--methods", default=None, help="default: the run's techniques")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = json.loads((Path(args.run_dir) / "results.json").read_text())
    cfg = load_config(results["config"])
    records = load_splits(cfg.data, cfg.model)
    test = records["test"][: args.n]
    pools = candidate_pools(*records.values())
    out = {"run_dir": args.run_dir, "n": len(test), "batch_size": cfg.eval.batch_size, "techniques": {}}
    for m in (args.methods.split(",") if args.methods else [x for x in results["config"]["methods"]]):
        model, tok, rt, _ = load_from_run(args.run_dir, m)
        budgets = answer_budgets(tok, test, cfg.eval.max_new_tokens)
        t0 = time.perf_counter()
        batched = generate_answers(model, tok, test, rt, budgets, cfg.eval.batch_size, "batched",
                                   cfg.eval.stop_at_newline)
        t1 = time.perf_counter()
        alone = [generate_answers(model, tok, [r], rt, [b], 1, "alone", cfg.eval.stop_at_newline)[0]
                 for r, b in zip(test, budgets)]
        t2 = time.perf_counter()
        a, b = score(test, batched, pools)["correct"], score(test, alone, pools)["correct"]
        changed = [i for i, (x, y) in enumerate(zip(batched, alone)) if x != y]
        out["techniques"][m] = {"changed": len(changed), "score_changed": sum(a[i] != b[i] for i in changed),
                                "accuracy_batched": sum(a) / len(a), "accuracy_alone": sum(b) / len(b),
                                "seconds_batched": t1 - t0, "seconds_alone": t2 - t1,
                                "examples": [{"batched": batched[i], "alone": alone[i]} for i in changed[:5]]}
        print(f"{techniques.label(m)}: {len(changed)} of {len(test)} answers differ between batch "
              f"{cfg.eval.batch_size} and batch 1 ({out['techniques'][m]['score_changed']} change the score); "
              f"{t1 - t0:.0f} s batched, {t2 - t1:.0f} s alone", flush=True)
        del model
    out["environment"] = results.get("environment")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
