"""A finished run's technique at any alpha of its curve, scored on the run's own test and retention test as the run
scores its chosen point (the same records, pools and answering), beside the run's own figures: what another point
would have given on test when the operating-point policy changes. Reported only: nothing here chooses a point.

    python bench/point_on_test.py runs/<run> qlora 0.75 --json bench/F.json    # appends (run, technique, alpha)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("method")
    p.add_argument("alpha", type=float)
    p.add_argument("--json", required=True)
    a = p.parse_args()

    from nbatune import evaluation, scoring
    from nbatune.config import load_config
    from nbatune.data import retention
    from nbatune.data.loading import load_splits
    from nbatune.inference import load_from_run
    from nbatune.measure import machine_peak

    cfg = load_config(f"{a.run}/config.yaml", [])
    records = load_splits(cfg.data, cfg.model)
    test = records["test"][: cfg.eval.max_test_examples]
    model, tok, rt, _ = load_from_run(a.run, a.method, a.alpha)
    nba = evaluation.answer_and_score(model, tok, test, rt, cfg.eval, scoring.candidate_pools(*records.values()),
                                      f"{a.method} {a.alpha:g} test")
    general = evaluation.answer_and_score(model, tok, retention.records(cfg.model.system_prompt, "test"), rt, cfg.eval,
                                          retention.pools(), f"{a.method} {a.alpha:g} retention",
                                          evaluation.RETENTION_MAX_NEW_TOKENS)
    ran = json.loads(Path(a.run, "results.json").read_text())
    point = {"accuracy": nba["accuracy"], "correct": nba["correct"],
             **{side: f["accuracy"] for side, f in nba.get("formats", {}).items()},
             "retention": general["accuracy"], "retention_correct": general["correct"],
             "kept": general["accuracy"] / base_ret if (base_ret := ran["base"]["retention"]["accuracy"]) else None,
             "run_operating_point": ran[a.method]["operating_point"]["alpha"], "run_accuracy": ran[a.method]["accuracy"],
             "run_retention": ran[a.method]["retention"]["accuracy"]}
    path = Path(a.json)
    out = json.loads(path.read_text()) if path.exists() else {"matmul": machine_peak("cpu"), "points": {}}
    out["points"][f"{a.run}|{a.method}|{a.alpha:g}"] = point
    path.write_text(json.dumps(out, indent=1) + "\n")
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in point.items() if "correct" not in k})
    return 0


if __name__ == "__main__":
    sys.exit(main())
