"""Scoring: the answer-match metric (loaded through ``evaluate`` from nbatune/metrics), the candidate pools
that make a hedge wrong, per-category accuracy with Wilson intervals, and the paired bootstrap. The data
package's card, the baselines, evaluation and the decision rules all score through here; nothing here
imports them."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "nba_answer_match"


@lru_cache(maxsize=1)
def answer_metric():
    import evaluate

    return evaluate.load(str(METRIC_DIR))


@lru_cache(maxsize=1)
def scorer():
    """The metric's module itself (``is_correct``, ``value_of``, ``safe_eval``), for per-answer checks
    that would be slow through ``evaluate``'s batch interface (the baselines try thousands). Loaded under
    its package name (``evaluate`` loads a copy under a hashed one), so that its functions are
    ``nbatune.metrics...`` wherever they run: mutation testing finds them (`make mutation`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nbatune.metrics.nba_answer_match.nba_answer_match",
                                                  METRIC_DIR / "nba_answer_match.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def candidate_pools(*splits: list[dict]) -> dict[str, list[str]]:
    """The competing answers of each name or choice category (every answer of that category in any
    split): an answer that names two of them is a hedge and scores wrong. Numbers need none (two numbers
    are a hedge anyway); free text is matched exactly."""
    pools: dict[str, set[str]] = defaultdict(set)
    for rows in splits:
        for r in rows:
            if r["answer_type"] in ("name", "choice"):
                pools[r["category"]].add(r["answer"])
    return {c: sorted(v) for c, v in pools.items()}


def score(records: list[dict], predictions: list[str], pools: dict[str, list[str]] | None = None) -> dict:
    """Accuracy overall and per category, each with a 95% Wilson interval, plus per-example flags; where
    some records are tagged ``unseen`` (a stat-line format held out of training), ``formats`` gives the
    same for the seen and the unseen ones apart.

    Args:
        pools: competing answers per category (``candidate_pools``); without them a name only has to
            contain the reference.
    """
    pools = pools or {}
    res = answer_metric().compute(predictions=predictions, references=[r["answer"] for r in records],
                                  answer_types=[r["answer_type"] for r in records],
                                  tolerances=[r["tolerance"] for r in records],
                                  candidates=[pools.get(r["category"]) for r in records])
    correct = [bool(c) for c in res["correct"]]
    out = {**_summary(records, correct, lambda r: True), "correct": correct}
    if any(r.get("unseen") for r in records):
        out["formats"] = {side: _summary(records, correct, lambda r, u=unseen: bool(r.get("unseen")) == u)
                          for side, unseen in (("seen", False), ("unseen", True))}
    return out


def _summary(records: list[dict], correct: list[bool], keep) -> dict:
    """Accuracy with its interval, overall and per category, over the records ``keep`` accepts."""
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r, c in zip(records, correct):
        if keep(r):
            by_cat[r["category"]].append(c)
    kept = [c for v in by_cat.values() for c in v]
    k, n = sum(kept), len(kept)
    return {"accuracy": k / n if n else 0.0, "accuracy_ci95": wilson(k, n), "n": n,
            "per_category": {c: {"accuracy": sum(v) / len(v), "n": len(v), "ci95": wilson(sum(v), len(v))}
                             for c, v in sorted(by_cat.items())}}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: list[bool], b: list[bool], iters: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference a - b on the same test questions, with a paired-bootstrap 95% interval.
    ``within_noise`` is True when the interval contains 0."""
    n = len(a)
    if n == 0 or n != len(b):
        return {"diff": 0.0, "ci95": (0.0, 0.0), "within_noise": True}
    rng = random.Random(seed)
    d = [int(x) - int(y) for x, y in zip(a, b)]
    stats = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(iters))
    lo, hi = stats[int(0.025 * iters)], stats[int(0.975 * iters) - 1]
    return {"diff": sum(d) / n, "ci95": (lo, hi), "within_noise": lo <= 0 <= hi}
