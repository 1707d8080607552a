"""Every training change probed at the default budget on one learning-forgetting plot: development accuracy
(generated answers, another data seed's test split) against general validation, one point per probe, from the
probe files ``bench/dev_probe.py`` wrote. Which knob moves a model along the front, and which moves the front?

    python bench/front.py --out bench/front-cpu-20261205.png

A probe file is JSON with ``runs`` (or ``rerun_231.runs``): each run has ``method``, ``dev_accuracy``,
``formats`` (the dev questions behind it) and ``general_validation``, on today's general validation split (231
questions; a file scored on the older 77-question split does not belong here). The base's line comes from
``bench/general-validation-cpu-20261205.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROBES = ("replay-targets-ab-cpu-20261205.json", "probe-no-history-cpu-20261205.json",
          "probe-answer-reads-cpu-20261205.json", "probe-attention-only-full-cpu-20261205.json",
          "probe-top-half-cpu-20261205.json")
BASE_FILE = ROOT / "bench" / "general-validation-cpu-20261205.json"  # the embedded base on the same 231 questions


def base_general() -> float:
    return json.loads(BASE_FILE.read_text())["models"]["base"]["all"]


def points(files: list[Path]) -> list[dict]:
    """One row per probe run: the file it came from, its run key, method, dev accuracy, general validation."""
    out = []
    for f in files:
        data = json.loads(f.read_text())
        runs = data.get("rerun_231", {}).get("runs") or data["runs"]
        for key, run in runs.items():
            out.append({"file": f.name, "run": key, "method": run["method"], "overrides": run.get("overrides", []),
                        "dropped": run.get("dropped_categories", []), "dev": run["dev_accuracy"],
                        "dev_n": sum(v["n"] for v in run["formats"].values()),
                        "general": run["general_validation"], "train_s": run.get("train_s")})
    return out


def plot(rows: list[dict], out: Path, base: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nbatune.data.retention import records
    from nbatune.scoring import wilson

    general_n = len(records("", "validation"))  # the split every probe's general score is on

    families = {"full": "#1f77b4", "full_attn": "#17becf", "full_top": "#9edae5", "lora": "#2ca02c",
                "lora_top": "#98df8a"}
    fig, ax = plt.subplots(figsize=(10, 5))
    key = []
    for i, r in enumerate(sorted(rows, key=lambda r: -r["dev"]), 1):
        x, y = r["dev"] * 100, r["general"] * 100
        (xl, xh), (yl, yh) = (wilson(round(r["dev"] * r["dev_n"]), r["dev_n"]),
                                    wilson(round(r["general"] * general_n), general_n))
        ax.errorbar(x, y, xerr=[[x - xl * 100], [xh * 100 - x]], yerr=[[y - yl * 100], [yh * 100 - y]],
                    color="#cccccc", lw=0.8, zorder=1)
        ax.scatter(x, y, color=families.get(r["method"], "#444444"), s=40, zorder=3)
        ax.annotate(str(i), (x, y), fontsize=7, xytext=(4, 2 if i % 2 else -8), textcoords="offset points")
        key.append(f"{i:2d}  {_label(r)}")
    fig.subplots_adjust(right=0.68)
    fig.text(0.70, 0.88, "\n".join(key), fontsize=8, va="top", family="monospace")
    ax.axhline(base * 100, color="#888888", lw=1)
    ax.axhline(0.9 * base * 100, color="#888888", lw=1, ls="--")
    ax.text(0.01, base * 100 + 0.3, "base", fontsize=7, color="#555555", transform=ax.get_yaxis_transform())
    ax.text(0.01, 0.9 * base * 100 + 0.3, "90% of the base", fontsize=7, color="#555555",
            transform=ax.get_yaxis_transform())
    ax.set_xlim(0, 45)
    ax.set_xlabel("NBA development accuracy (%), 192 generated answers")
    ax.set_ylabel("general validation (%), 231 questions")
    ax.set_title("Training changes at the default budget (140 steps x 8, replay 0.2, one seed each; 95% intervals grey)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=120)


SHORT = {"train.replay_targets=tokens": "(default)", "train.replay_targets=distribution": "KL to base",
         "data.answer_reads=true": "reads first", "eval.max_new_tokens=160": None}
NAMES = {"full": "full", "lora": "LoRA", "full_attn": "full attention-only", "full_top": "full top half",
         "lora_top": "LoRA top half"}


def _label(r: dict) -> str:
    what = [o.split("=", 1)[-1] if "learning_rate" in o else SHORT.get(o, o) for o in r["overrides"]]
    if r["dropped"]:
        what.append("no history")
    return " ".join([NAMES.get(r["method"], r["method"]), *[w for w in what if w]])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "front.png"))
    p.add_argument("files", nargs="*", help=f"probe files (default: {', '.join(PROBES)} in bench/)")
    a = p.parse_args()
    rows = points([Path(f) for f in a.files] or [ROOT / "bench" / f for f in PROBES])
    base = base_general()
    for r in sorted(rows, key=lambda r: -r["dev"]):
        print(f"{_label(r):40s} dev {r['dev']:6.1%}  general {r['general']:6.1%} ({r['general'] / base:4.0%} "
              f"of the base)  {r['file']}")
    plot(rows, Path(a.out), base)
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
