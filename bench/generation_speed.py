"""How long a finished run's models take to answer what a run asks them (the test split, general validation,
and for the base the 3-shot prompts), at each batch size, with the answers and their scores.

Run it at two revisions (a git worktree of the older one) to time a change to answering, and give the older
file to ``--against`` to count how many answers changed:

    python bench/generation_speed.py runs/<run> --methods base full --json bench/generation-NEW.json
    python /tmp/old/bench/generation_speed.py runs/<run> --json /tmp/old.json
    python bench/generation_speed.py runs/<run> --against /tmp/old.json --json ...
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
    p.add_argument("--methods", nargs="+", default=["base", "full"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    p.add_argument("--against", default=None, help="an earlier file of this script: count changed answers")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from nbatune import baselines, evaluation, scoring
    from nbatune.compare import Comparison
    from nbatune.data import retention
    from nbatune.inference import load_from_run
    from nbatune.measure import machine_peak

    results = json.loads((Path(a.run) / "results.json").read_text())
    cfg = results["config"]
    cmp = Comparison(cfg, ["train.replay_share=0"]).setup()  # the run's records
    general = retention.records(cmp.cfg.model.system_prompt, "validation")
    sets = {"test": (cmp.test_records, cmp.pools, cmp.cfg.eval.max_new_tokens),
            "general_validation": (general, retention.pools(), evaluation.RETENTION_MAX_NEW_TOKENS)}
    shots = baselines.few_shot_records(cmp.test_records, cmp.records["train"], cmp.cfg.eval.few_shot, cmp.cfg.data.seed)
    earlier = json.loads(Path(a.against).read_text())["methods"] if a.against else {}
    report = {"run": a.run, "revision": _revision(), "matmul": machine_peak("cpu"), "methods": {}}
    for m in a.methods:
        model, tok, rt, _ = load_from_run(a.run, m, alpha=1.0)
        todo = dict(sets, **({"few_shot": (shots, cmp.pools, cmp.cfg.eval.max_new_tokens)} if m == "base" else {}))
        out = report["methods"][m] = {}
        for name, (records, pools, cap) in todo.items():
            budgets = evaluation.answer_budgets(tok, records, cap)
            for bs in a.batch_sizes:
                t0 = time.perf_counter()
                preds = evaluation.generate_answers(model, tok, records, rt, budgets, bs, f"{m} {name} {bs}",
                                                    cmp.cfg.eval.stop_at_newline)
                row = {"n": len(records), "seconds": time.perf_counter() - t0,
                       "accuracy": scoring.score(records, preds, pools)["accuracy"], "predictions": preds}
                before = earlier.get(m, {}).get(f"{name}@{bs}") or next(
                    (v for k, v in earlier.get(m, {}).items() if k.startswith(name + "@")), None)
                if before:
                    row["same_as_against"] = sum(x == y for x, y in zip(preds, before["predictions"]))
                out[f"{name}@{bs}"] = row
                print(f"{m:5} {name:18} batch {bs:3}: {row['seconds']:6.1f} s, accuracy {100 * row['accuracy']:.1f}%"
                      + (f", {row['same_as_against']}/{len(preds)} answers as --against" if before else ""), flush=True)
        del model
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


def _revision() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
