"""Replay A-B: the same config twice, without and with ``train.replay_share``, on the same steps, data order,
test and retention questions; paired tests of each technique's NBA test accuracy and general retention,
at alpha = 1 and at each run's chosen operating point.

    python bench/replay_ab.py --share 0.2 --out bench/replay-ab-cpu-YYYYMMDD.json   # two default runs

Extra arguments after ``--`` are config overrides for both runs (``-- train.max_steps=60``). Two finished
runs (the same config but the share; the second may train fewer techniques) are paired without training:

    python bench/replay_ab.py --runs runs/<without> runs/<with> --out bench/replay-ab-cpu-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def figures(r: dict) -> dict:
    """A technique's test figures at its operating point and at alpha = 1."""
    trained = r.get("trained") or r
    fm = (r.get("formats") or {})
    return {"alpha": (r.get("operating_point") or {}).get("alpha", 1.0),
            "accuracy": r["accuracy"], "seen": fm.get("seen", {}).get("accuracy"),
            "unseen": fm.get("unseen", {}).get("accuracy"), "retention": r["retention"].get("accuracy"),
            "trained_accuracy": trained["accuracy"],
            "trained_seen": (trained.get("formats") or {}).get("seen", {}).get("accuracy"),
            "trained_unseen": (trained.get("formats") or {}).get("unseen", {}).get("accuracy"),
            "trained_retention": trained["retention"].get("accuracy"),
            "curve": r.get("curve"), "train_seconds": r["train_seconds"]}


def main() -> int:
    from nbatune.compare import Comparison
    from nbatune.scoring import paired_difference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--share", type=float, default=0.2)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", nargs=2, metavar=("WITHOUT", "WITH"), help="pair two finished runs instead")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    runs, seconds = {}, {}
    if args.runs:
        for name, d in zip(("without", "with"), args.runs):
            runs[name] = json.loads((Path(d) / "results.json").read_text())
            seconds[name] = runs[name].get("total_seconds")
    else:
        for name, share in (("without", 0.0), ("with", args.share)):
            t0 = time.perf_counter()
            cmp = Comparison(args.config, [*args.overrides, f"train.replay_share={share}"])
            runs[name] = cmp.execute()
            seconds[name] = time.perf_counter() - t0
    a, b = runs["without"], runs["with"]
    out = {"share": b["config"]["train"]["replay_share"], "config": args.config, "overrides": args.overrides,
           "seconds": seconds, "run_dirs": {k: v["run_dir"] for k, v in runs.items()},
           "environment": b["environment"], "replay": b["dataset"].get("replay"),
           "base_retention": a["base"]["retention"]["accuracy"], "techniques": {}}
    for m in b["config"]["methods"]:
        ra, rb = a[m], b[m]
        if ra.get("status") != "ok" or rb.get("status") != "ok":
            out["techniques"][m] = {"status": [ra.get("status"), rb.get("status")]}
            continue
        ta, tb = ra.get("trained") or ra, rb.get("trained") or rb
        out["techniques"][m] = {
            "without": figures(ra), "with": figures(rb),
            "with_minus_without": {
                "nba_at_point": paired_difference(rb["correct"], ra["correct"]),
                "retention_at_point": paired_difference(rb["retention"]["correct"], ra["retention"]["correct"]),
                "nba_trained": paired_difference(tb["correct"], ta["correct"]),
                "retention_trained": paired_difference(tb["retention"]["correct"], ta["retention"]["correct"])}}
    Path(args.out).write_text(json.dumps(out, indent=1))
    for m, t in out["techniques"].items():
        if "with" in t:
            d = t["with_minus_without"]
            print(f"{m}: alpha {t['without']['alpha']:g} -> {t['with']['alpha']:g}; "
                  f"NBA {t['without']['accuracy']:.1%} -> {t['with']['accuracy']:.1%} ({d['nba_at_point']['diff']:+.1%}); "
                  f"retention {t['without']['retention']:.1%} -> {t['with']['retention']:.1%} "
                  f"({d['retention_at_point']['diff']:+.1%}); at alpha 1: NBA {d['nba_trained']['diff']:+.1%}, "
                  f"retention {d['retention_trained']['diff']:+.1%}")
    print(f"base retention {out['base_retention']:.1%}; wall {seconds['without']:.0f} s + {seconds['with']:.0f} s; "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
