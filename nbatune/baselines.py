"""What a model that learned nothing would score: the yardsticks every technique is judged against.

* ``trivial``: per category, the best rule fitted on the training split and applied to the test
  split: the best constant answer, or (for numbers) copying the k-th number of the question.
* ``zero_shot``: the untouched base model, asked as the techniques are asked.
* ``few_shot``: the untouched base model with k solved examples of the same category from the
  training split as earlier chat turns (``eval.few_shot``).

A technique has learned only what it scores above the strongest of them.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from .scoring import scorer

MAX_CONSTANTS = 300  # most frequent training answers tried per category (ties broken by first seen)


def question_text(record: dict) -> str:
    return record["messages"][-2]["content"]


def fit_trivial(train: list[dict], pools: dict[str, list[str]], categories=None) -> dict[str, dict]:
    """Per category (of ``categories``, default all), the rule that scores best on the training rows:
    ``{"rule": "constant", "answer": a}`` or ``{"rule": "copy_number", "index": k}``, with its training
    accuracy."""
    m = scorer()
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in train:
        if categories is None or r["category"] in categories:
            by_cat[r["category"]].append(r)
    rules = {}
    for cat, rows in by_cat.items():
        kind, pool = rows[0]["answer_type"], pools.get(cat)
        constants = [a for a, _ in Counter(r["answer"] for r in rows).most_common(MAX_CONSTANTS)]
        if kind == "number":
            want = [(m.value_of(r["answer"]), r["tolerance"]) for r in rows]

            def hits(values):
                return sum(g is not None and w is not None and abs(g - w) <= tol + 1e-9
                           for g, (w, tol) in zip(values, want))

            scored = [({"rule": "constant", "answer": a}, hits([m.value_of(a)] * len(rows))) for a in constants]
            numbers = [[float(x) for x in scorer()._NUM.findall(question_text(r))] for r in rows]
            for k in range(min(max(map(len, numbers)), 20)):
                scored.append(({"rule": "copy_number", "index": k},
                               hits([n[k] if k < len(n) else None for n in numbers])))
        else:
            scored = [({"rule": "constant", "answer": a},
                       sum(m.is_correct(a, r["answer"], kind, r["tolerance"], pool) for r in rows)) for a in constants]
        best, best_hits = max(scored, key=lambda s: s[1])  # max keeps the first of equals
        rules[cat] = {**best, "train_accuracy": best_hits / len(rows)}
    return rules


def answer_of(rule: dict, record: dict) -> str:
    """What the rule answers to ``record`` (an empty answer when it has nothing to say)."""
    if rule["rule"] == "constant":
        return rule["answer"]
    numbers = scorer()._NUM.findall(question_text(record))
    return numbers[rule["index"]] if rule["index"] < len(numbers) else ""


def trivial_predictions(rules: dict[str, dict], test: list[dict]) -> list[str]:
    return [answer_of(rules[r["category"]], r) if r["category"] in rules else "" for r in test]


def few_shot_records(test: list[dict], train: list[dict], k: int, seed: int) -> list[dict]:
    """Each test record with ``k`` solved training examples of its category put before the question as
    earlier user/assistant turns (the same system prompt first). The examples are drawn once per category with
    a fixed seed, as MMLU fixes its five per subject: every question of a category gets the same ones, every run
    the same prompts, and the examples are read once per category (``shared_turns``: the messages before the
    question)."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in train:
        by_cat[r["category"]].append(r)
    chosen: dict[str, list[dict]] = {}
    out = []
    for rec in test:
        cat = rec["category"]
        if cat not in chosen:
            pool = by_cat.get(cat) or train
            chosen[cat] = random.Random(f"{seed}:{cat}").sample(pool, min(k, len(pool)))
        msgs = rec["messages"]
        system = [msgs[0]] if msgs[0]["role"] == "system" else []
        turns = [t for s in chosen[cat] for t in s["messages"][-2:]]
        out.append({**rec, "messages": system + turns + msgs[-2:], "shared_turns": len(system) + len(turns)})
    return out
