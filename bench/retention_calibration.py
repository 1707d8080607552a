"""Does the curve's general validation predict the retention test? For each (technique, alpha) of a finished run,
the generated answers on both general-knowledge splits, per question, so that two measures of "kept" can be compared
across the splits: the score ratio (a model's accuracy over the base's, the operating-point policy's measure) and the
share of the questions the base answered right that the model still answers right.

    python bench/retention_calibration.py runs/<run> bench/retention-calibration-cpu-DATE.json base:1 full:1 full:0.75 ...

Appends to the JSON file (a (run, technique, alpha) already there is skipped); ``--table`` prints the comparison.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(run: str, out_file: str, specs: list[str]) -> None:
    from nbatune import evaluation
    from nbatune.config import load_config
    from nbatune.data import retention
    from nbatune.inference import load_from_run
    from nbatune.measure import machine_peak

    cfg = load_config(f"{run}/config.yaml", [])
    sp = cfg.model.system_prompt
    splits = {"validation": retention.records(sp, "validation"), "test": retention.records(sp, "test")}
    pools = retention.pools()
    path = Path(out_file)
    out = json.loads(path.read_text()) if path.exists() else {"points": {}}
    out.setdefault("matmul", machine_peak("cpu"))
    for spec in specs:
        method, alpha = spec.split(":")
        key = f"{run}|{method}|{float(alpha):g}"
        if key in out["points"]:
            continue
        model, tok, rt, _ = load_from_run(run, method, float(alpha))
        out["points"][key] = {
            name: evaluation.answer_and_score(model, tok, recs, rt, cfg.eval, pools, f"{method} {alpha} {name}",
                                              evaluation.RETENTION_MAX_NEW_TOKENS)["correct"]
            for name, recs in splits.items()}
        path.write_text(json.dumps(out))
        print(key, {k: sum(v) for k, v in out["points"][key].items()}, flush=True)


def table(out_file: str) -> None:
    points = json.loads(Path(out_file).read_text())["points"]
    print("| run | technique | alpha | validation: ratio / kept of base's right | test: ratio / kept of base's right |")
    print("|---|---|---:|---|---|")
    for key, v in points.items():
        run, method, alpha = key.split("|")
        if method == "base":
            continue
        base = points[f"{run}|base|1"]
        cells = []
        for split in ("validation", "test"):
            b, m = base[split], v[split]
            known = sum(x and y for x, y in zip(b, m)) / sum(b)
            cells.append(f"{sum(m) / sum(b):.1%} / {known:.1%}")
        print(f"| {Path(run).name} | {method} | {alpha} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        table(sys.argv[2])
    else:
        measure(sys.argv[1], sys.argv[2], sys.argv[3:])
