"""How well general validation predicts the retention test. A finished run's models, each at a point of its curve,
answer both general splits, and every answer is kept, so two measures of "kept" can be compared across the splits:
the score ratio (a model's accuracy over the base's; the operating-point policy's default), the share of the
questions the base answers right that the model still answers right (``eval.keep_measure: known``), and the ratio
reweighted to the mix of the questions drawn like the test (``stratified``). Validation is also split into its
original 77 questions and the validation-only bank; ``--table`` ends with each measure's distance from the test's ratio.

    python bench/general_validation.py runs/<run> --json bench/F.json                  # base and full, LoRA, QLoRA at 1
    python bench/general_validation.py runs/<run> --points full:0.75 lora:0.5 --json bench/F.json   # appends
    python bench/general_validation.py --table bench/F.json

A (run, technique, alpha) already in the file is not measured again. The file made before 2026-12-06 night
(``bench/general-validation-cpu-20261205.json``) holds the summaries this script then wrote, not the answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(run: str, points: list[str], out_file: str) -> None:
    from nbatune import evaluation
    from nbatune.config import load_config
    from nbatune.data import retention
    from nbatune.inference import load_from_run
    from nbatune.measure import machine_peak

    cfg = load_config(f"{run}/config.yaml", [])
    sp = cfg.model.system_prompt
    splits = {"validation": retention.records(sp, "validation"), "test": retention.records(sp, "test")}
    path = Path(out_file)
    out = json.loads(path.read_text()) if path.exists() else {"points": {}}
    if "matmul" not in out:
        out["matmul"] = machine_peak("cpu")
    for spec in ["base:1", *points]:
        method, alpha = spec.split(":")
        key = f"{run}|{method}|{float(alpha):g}"
        if key in out["points"]:
            continue
        model, tok, rt, _ = load_from_run(run, method, float(alpha))
        out["points"][key] = {
            name: evaluation.answer_and_score(model, tok, recs, rt, cfg.eval, retention.pools(),
                                              f"{method} {alpha} {name}", evaluation.RETENTION_MAX_NEW_TOKENS)["correct"]
            for name, recs in splits.items()}
        path.write_text(json.dumps(out))
        print(key, {k: sum(v) for k, v in out["points"][key].items()}, flush=True)


def _kept(base: list[bool], model: list[bool]) -> str:
    known = sum(b and m for b, m in zip(base, model)) / sum(base)
    return f"{sum(model) / sum(base):.1%} / {known:.1%}"


def table(out_file: str) -> None:
    from nbatune import decisions
    from nbatune.data import retention

    bank = len(retention.validation_only())  # the validation-only questions come last in the split
    like = retention.like_test(retention.records("", "validation"))
    points = json.loads(Path(out_file).read_text())["points"]
    print("| run | technique | alpha | validation: ratio / kept of base's right | of it, the 77 | of it, the bank "
          "| validation, stratified | test: ratio / kept of base's right |")
    print("|---|---|---:|---|---|---|---:|---|")
    errors: dict[str, list[float]] = {"score": [], "known": [], "stratified": []}
    for key, v in points.items():
        run, method, alpha = key.split("|")
        if method == "base":
            continue
        b = points[f"{run}|base|1"]
        val, bv = v["validation"], b["validation"]
        strat = decisions.general_stratified(bv, val, like)
        print(f"| {Path(run).name} | {method} | {alpha} | {_kept(bv, val)} | {_kept(bv[:-bank], val[:-bank])} "
              f"| {_kept(bv[-bank:], val[-bank:])} | {strat:.1%} | {_kept(b['test'], v['test'])} |")
        test = sum(v["test"]) / sum(b["test"])  # what the target reads: the retention test's ratio
        errors["score"].append(sum(val) / sum(bv) - test)
        errors["known"].append(decisions.general_known(bv, val) - test)
        errors["stratified"].append(strat - test)
    print()
    for name, e in errors.items():  # how far each validation measure lands from the test's ratio, in points
        if e:
            print(f"{name}: mean {100 * sum(e) / len(e):+.1f} points, mean absolute {100 * sum(map(abs, e)) / len(e):.1f}, "
                  f"from {100 * min(e):+.1f} to {100 * max(e):+.1f} ({len(e)} points)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?")
    p.add_argument("--points", nargs="+", default=["full:1", "lora:1", "qlora:1"],
                   help="technique:alpha to measure (the base is always measured)")
    p.add_argument("--json")
    p.add_argument("--table", metavar="JSON", help="print the comparison from a file this script wrote")
    a = p.parse_args()
    if a.table:
        table(a.table)
        return 0
    if not (a.run and a.json):
        p.error("give a run and --json (or --table JSON)")
    measure(a.run, a.points, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
