"""Score a finished run's stored answers again with today's scorer, without generating anything: the NBA test
and the general-knowledge retention test of the base and of each technique (at its operating point and at
alpha 1), beside the figures the run recorded. For when the scorer changes (a rule fixed) and the answers did
not. The operating point is not chosen again: its validation answers are not stored.

    python bench/rescore.py runs/<run> --json bench/rescore-DATE.json
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
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from nbatune import scoring, techniques
    from nbatune.data import retention
    from nbatune.rundir import finished

    run = Path(a.run).resolve()
    res, cfg, records = finished(run)
    test = records["test"][: cfg.eval.max_test_examples]
    sp = cfg.model.system_prompt
    ret = retention.records(sp, "test")
    pools, rpools = scoring.candidate_pools(*records.values()), retention.pools()
    metric = scoring.scorer()

    def again(recs, preds, pool):
        ok = [metric.is_correct(pr, r["answer"], r["answer_type"], r.get("tolerance") or 0.0,
                                pool.get(r["category"])) for r, pr in zip(recs, preds)]
        return sum(ok) / len(ok) if ok else None

    out = {"run": str(run), "rows": []}
    base_ret = None
    for name in [techniques.BASE, *(m for m in cfg.methods if m in res)]:
        v = res[name]
        if v.get("status", "ok") != "ok" and name != techniques.BASE:
            continue
        points = [("chosen", v)] + ([("alpha 1", v["trained"])] if v.get("trained") else [])
        for point, d in points:
            row = {"model": name, "point": point,
                   "alpha": (v.get("operating_point") or {}).get("alpha") if point == "chosen" else 1.0,
                   "nba_recorded": d["accuracy"], "nba_now": again(test, d["predictions"], pools)}
            if d.get("retention"):
                row |= {"retention_recorded": d["retention"]["accuracy"],
                        "retention_now": again(ret, d["retention"]["predictions"], rpools)}
                if name == techniques.BASE:
                    base_ret = row["retention_now"]
                row["kept_of_base_now"] = row["retention_now"] / base_ret if base_ret else None
            out["rows"].append(row)
    for r in out["rows"]:
        print("  ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}" for k, x in r.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
