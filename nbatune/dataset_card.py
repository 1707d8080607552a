"""The built-in dataset's card: sizes, how each category is scored, and the baselines a model must beat.
It sits above the data package and the scorer, so that building data never imports scoring."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from . import baselines, scoring
from .data import builtin, statlines
from .data.loading import to_record


def write(splits: dict[str, list[builtin.Example]], out_dir: str | Path) -> Path:
    """Write ``<split>.jsonl`` files and ``DATASET_CARD.md``; return the directory."""
    out = builtin.write(splits, out_dir)
    (out / "DATASET_CARD.md").write_text(card(splits), encoding="utf-8")
    return out


def card(splits: dict[str, list[builtin.Example]], measured: dict | None = None) -> str:
    """The dataset card: sizes, how each category is scored, and per category the baselines a model
    must beat (the best trivial answer, fitted on train, always; the base model zero- and few-shot when
    ``measured``, a run's ``results["baselines"]``, is given)."""
    cats = sorted({e.category for rows in splits.values() for e in rows})
    counts = {s: Counter(e.category for e in rows) for s, rows in splits.items()}
    records = {s: [to_record(e.to_dict(), "nba", i, s, "") for i, e in enumerate(rows)] for s, rows in splits.items()}
    test = records.get("test", [])
    pools = scoring.candidate_pools(*records.values())
    rules = baselines.fit_trivial(records["train"], pools, {r["category"] for r in test})
    trivial = scoring.score(test, baselines.trivial_predictions(rules, test), pools) if test else {}
    model_cols = {k: v for k, v in (measured or {}).items() if k in ("zero_shot", "few_shot") and "per_category" in v}
    lines = ["# NBA analytics instruction dataset (built-in)", "",
             "Built by `nbatune.data.builtin.build`; see its module docstring for how the split is made.", "",
             "| category | " + " | ".join(splits) + " | scored as | best trivial answer (test) | "
             + "".join(f"base {k.replace('_', '-')} (test) | " for k in model_cols),
             "|---|" + "---:|" * len(splits) + "---|---:|" + "---:|" * len(model_cols)]
    for c in cats:
        kind = next(e for rows in splits.values() for e in rows if e.category == c)
        how = ("training only" if c in builtin.TRAIN_ONLY or c == "metric_caveat" else
               "formula, computed (program-aided)" if kind.answer_type == "number" else "name, no competitor")
        triv = trivial.get("per_category", {}).get(c)
        rule = rules.get(c, {})
        rule_s = (f"copy number #{rule['index'] + 1}" if rule.get("rule") == "copy_number" else
                  f"`{str(rule.get('answer'))[:30]}`") if rule else ""
        lines.append(f"| {c} | " + " | ".join(str(counts[s][c]) for s in splits)
                     + f" | {how} | " + (f"{triv['accuracy']:.0%} ({rule_s})" if triv else "-") + " | "
                     + "".join(f"{v['per_category'][c]['accuracy']:.0%} | " if c in v["per_category"] else "- | "
                               for v in model_cols.values()))
    lines.append("| **total** | " + " | ".join(str(len(r)) for r in splits.values()) + " | | "
                 + (f"{trivial['accuracy']:.1%}" if trivial else "-") + " | "
                 + "".join(f"{v['accuracy']:.1%} | " for v in model_cols.values()))
    digest = hashlib.sha256(json.dumps({s: [e.to_dict() for e in r] for s, r in splits.items()},
                                       sort_keys=True).encode()).hexdigest()[:16]
    lines += ["", f"Content hash: `{digest}`", "", "## Answers and scoring", "",
              "History answers are the facts in `nbatune/data/facts.py` (checked against Basketball-Reference "
              "tables); validation and test ask at most one question with a given answer per category. Computed "
              "answers are the metric's formula with the stat line's numbers (`nbatune/data/analytics.py` gives "
              "the same values); the scorer computes what the model wrote with a safe arithmetic parser, so a "
              "model is graded on the formula and the numbers it reads, not on mental division. Names must be "
              "mentioned as whole words with no competing answer of the category. An answer offering two "
              "candidates is wrong. The trivial baseline is, per category, the best constant answer or copied "
              "number of the question, fitted on train."
              + ("" if model_cols else " Base-model baselines: `nbatune dataset inspect --results RUN/results.json`."),
              "", "## Stat-line formats", "",
              "Every computed question shows its stat line in one of these forms (fields shuffled, sometimes with "
              "fields the formula does not need). The unseen format never appears in training or validation; "
              "test questions in it are tagged `unseen: true` and scored apart.", "",
              "| format | " + " | ".join(splits) + " | example (test) |", "|---|" + "---:|" * len(splits) + "---|"]
    formats = {s: Counter(e.format for e in rows if e.format) for s, rows in splits.items()}
    unseen = {e.format for e in splits.get("test", []) if e.unseen}
    for fmt in statlines.FORMATS:
        example = next((e.input for e in splits.get("test", []) if e.format == fmt), "")
        lines.append(f"| {fmt}{' (**unseen**)' if fmt in unseen else ''} | "
                     + " | ".join(str(formats[s][fmt]) for s in splits) + f" | `{example.replace(chr(10), ' / ').replace('|', '¦')}` |")
    lines += ["", "## Examples", ""]
    shown = set()
    for e in splits.get("test", []):
        if e.category in shown:
            continue
        shown.add(e.category)
        q = e.instruction + (f"\n{e.input}" if e.input else "")
        lines.append(f"- **{e.category}**: {q!r} -> {e.output!r}" + (f" (± {e.tolerance})" if e.tolerance else ""))
    return "\n".join(lines) + "\n"
