"""The rules every conclusion of a run rests on: a technique *learned* only what its paired interval puts
above the strongest baseline; a difference between two techniques is *real* only when the exact McNemar
test (Holm-adjusted over the pairs made), the paired-bootstrap interval and the seed spread all say so;
and the recommendation says which case it is. Pure functions of a results dict: no model, no files."""

from __future__ import annotations

from . import techniques
from .scoring import paired_difference


def order(results: dict) -> list[str]:
    """The base, then every technique of the run, in the order they ran."""
    return [m for m in results if m == techniques.BASE or m in techniques.names()]


def finished(results: dict) -> dict[str, dict]:
    return {m: results[m] for m in order(results) if isinstance(results.get(m), dict) and results[m].get("status") == "ok"}


BASELINE_LABEL = {"trivial": "best trivial answer per category", "zero_shot": "base zero-shot",
                  "few_shot": "base few-shot"}


def baseline_accuracies(results: dict) -> dict[str, dict]:
    """The baselines a run measured, each with accuracy, interval, per-category scores and flags."""
    return {k: v for k, v in (results.get("baselines") or {}).items() if isinstance(v, dict) and "correct" in v}


def _paired_apart(pair: dict) -> bool:
    """The paired test tells the two apart on the same questions: Holm-adjusted McNemar p below 0.05 and a
    bootstrap interval without 0."""
    return pair["p_holm"] < 0.05 and not pair["within_noise"]


def comparison(results: dict) -> dict:
    """What a team decides from: each technique against the strongest baseline (learned), against the
    base on the retention set (forgot), and against each other (real only when the paired test,
    Holm-adjusted over the pairs made, and the seed spread both say so); winners and a recommendation."""
    ok = finished(results)
    trained = {m: r for m, r in ok.items() if m != "base"}
    base_lines = baseline_accuracies(results)
    out: dict = {"baselines": {k: v["accuracy"] for k, v in base_lines.items()}, "learned": {}, "forgot": {},
                 "pairs": {}, "winners": {}, "recommendation": ""}
    strongest = max(base_lines, key=lambda k: base_lines[k]["accuracy"]) if base_lines else None
    out["strongest_baseline"] = strongest
    for m, r in trained.items():
        if strongest:
            d = paired_difference(r["correct"], base_lines[strongest]["correct"])
            out["learned"][m] = {**d, "vs": strongest, "learned": d["ci95"][0] > 0}
        base_ret = (ok.get("base") or {}).get("retention") or {}
        if base_ret.get("correct") and (r.get("retention") or {}).get("correct"):
            d = paired_difference(base_ret["correct"], r["retention"]["correct"])
            out["forgot"][m] = {**d, "base": base_ret["accuracy"], "after": r["retention"]["accuracy"]}
            split = _forgetting_split(base_ret, (ok.get("base") or {}).get("quantized_base") or {}, m, r)
            if split:
                out["forgot"][m]["split"] = split
    names = list(trained)
    raw = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            key = f"{b}-vs-{a}"
            out["pairs"][key] = {**paired_difference(trained[b]["correct"], trained[a]["correct"]),
                                 "p_mcnemar": mcnemar(trained[b]["correct"], trained[a]["correct"]),
                                 "seeds": seed_spread(trained[b], trained[a])}
            raw[key] = out["pairs"][key]["p_mcnemar"]
    for key, p_adj in holm(raw).items():
        pair = out["pairs"][key]
        pair["p_holm"] = p_adj
        spread = pair["seeds"]
        pair["beyond_seed_spread"] = None if spread is None else abs(spread["mean_diff"]) > spread["spread"]
        pair["real"] = _paired_apart(pair) and bool(pair["beyond_seed_spread"])
    out["comparisons_made"] = len(raw)
    not_compared = _not_compared(results)
    if not trained:
        out["recommendation"] = " ".join(["No technique finished; see the errors in results.json.", *not_compared])
        return out
    best_q = max(trained, key=lambda m: trained[m].get("accuracy_mean") or trained[m]["accuracy"])
    out["winners"] = {
        "quality": best_q,
        "memory": min(trained, key=lambda m: trained[m]["peak_memory_bytes"]),
        "speed": max(trained, key=lambda m: trained[m]["tokens_per_second"]),
        "disk": min(trained, key=lambda m: trained[m]["saved_bytes"] or float("inf")),
    }
    rec = []
    if strongest:
        sb = base_lines[strongest]["accuracy"]
        parts = [f"{techniques.label(m)} {trained[m]['accuracy']:.1%} ({d['diff']:+.1%}, 95% CI {d['ci95'][0]:+.1%} to "
                 f"{d['ci95'][1]:+.1%}{'' if d['learned'] else '; NOT above it'})" for m, d in out["learned"].items()]
        rec.append(f"Strongest baseline: {BASELINE_LABEL.get(strongest, strongest)} at {sb:.1%}. Against it: "
                   + "; ".join(parts) + ".")
    tied = [m for m in trained if m != best_q and not _pair(out, best_q, m).get("real")]
    at = (trained[best_q].get("operating_point") or {}).get("alpha")
    rec.append(f"Best accuracy: {techniques.label(best_q)}{f' at alpha {at:g}' if at is not None else ''} "
               f"({trained[best_q]['accuracy']:.1%}).")
    if tied:
        why = ("one training seed, so the seed spread is unknown (train.repeats)" if
               any(_pair(out, best_q, m)["seeds"] is None for m in tied) else
               "paired test (Holm-adjusted) and seed spread")
        rec.append(f"Its lead over {', '.join(techniques.label(m) for m in tied)} is not established ({why}).")
        # a cheaper stand-in must answer as well on these questions (the paired test does not tell them apart)
        # and have learned something: one seed leaves every lead unestablished, not every technique as good
        # and keep as much of the general questions (paired on the same questions): a cheaper model that forgets
        # more is not the same model for less
        forgets = {m: _retention_gap(trained[m], trained[best_q]) for m in tied}
        stand_ins = [m for m in tied if not _paired_apart(_pair(out, best_q, m))
                     and out["learned"].get(m, {}).get("learned", True) and not forgets[m]]
        cheapest = min([best_q] + stand_ins, key=lambda m: (trained[m]["peak_memory_bytes"], trained[m]["saved_bytes"]))
        cheaper = [m for m in tied if forgets[m] and trained[m]["peak_memory_bytes"] < trained[cheapest]["peak_memory_bytes"]]
        if cheaper:
            rec.append("Not preferred although cheaper, for forgetting more of the general questions than "
                       f"{techniques.label(best_q)}: " + "; ".join(
                           f"{techniques.label(m)} ({forgets[m]['diff']:+.1%}, 95% CI {forgets[m]['ci95'][0]:+.1%} to "
                           f"{forgets[m]['ci95'][1]:+.1%})" for m in cheaper) + ".")
        if cheapest != best_q:
            rec.append(f"With quality not told apart, prefer {techniques.label(cheapest)}: less peak memory "
                       f"({size_text(trained[cheapest]['peak_memory_bytes'])} vs {size_text(trained[best_q]['peak_memory_bytes'])})"
                       f" and a {size_text(trained[cheapest]['saved_bytes'])} artefact.")
    else:
        rec.append("Its lead over the other techniques exceeds both the paired-test noise and the seed spread.")
    points = {m: r["operating_point"] for m, r in trained.items() if r.get("operating_point")}
    if points:
        rec.append("Operating points (chosen on validation): " + "; ".join(
            f"{techniques.label(m)} at alpha {p['alpha']:g} (general validation kept: {p['kept']:.0%}"
            f"{MEASURE_TEXT[p.get('measure', 'score')][2]})"
            for m, p in points.items()) + "; every test figure here is at that point.")
    if out["forgot"]:
        rec.append("Forgetting (general questions, base minus technique): " + "; ".join(
            f"{techniques.label(m)} {f['diff']:+.1%} ({f['ci95'][0]:+.1%} to {f['ci95'][1]:+.1%})"
            for m, f in out["forgot"].items()) + ".")
        for m, f in out["forgot"].items():
            if s := f.get("split"):
                q, t = s["quantization"], s["training"]
                rec.append(f"{techniques.label(m)}'s forgetting splits into its 4-bit base's, before any training, "
                           f"{q['diff']:+.1%} ({q['ci95'][0]:+.1%} to {q['ci95'][1]:+.1%}; the untrained 4-bit base "
                           f"answers {s['quantized_base']:.1%}), and training's, {t['diff']:+.1%} ({t['ci95'][0]:+.1%} "
                           f"to {t['ci95'][1]:+.1%}).")
    out["recommendation"] = " ".join(rec + not_compared)
    return out


def _retention_gap(r: dict, best: dict) -> dict | None:
    """``r``'s general retention minus ``best``'s on the same questions, when ``r`` keeps significantly less
    (the paired interval below 0); else None."""
    a, b = ((x.get("retention") or {}).get("correct") for x in (r, best))
    if not (a and b):
        return None
    d = paired_difference(a, b)
    return d if d["ci95"][1] < 0 else None


def _forgetting_split(base_ret: dict, qbase: dict, m: str, r: dict) -> dict | None:
    """A quantized technique's forgetting in two parts, paired on the same retention questions: the 4-bit base
    against the base (what the rounding cost before any training) and the technique against the 4-bit base
    (what training did); the two add up to the whole. None for other techniques, or without the 4-bit base."""
    q = (qbase.get("retention") or {}).get("correct")
    if not (q and techniques.get(m).quantized and len(q) == len(base_ret["correct"])):
        return None
    return {"quantization": paired_difference(base_ret["correct"], q),
            "training": paired_difference(q, r["retention"]["correct"]),
            "quantized_base": qbase["retention"]["accuracy"]}


def _not_compared(results: dict) -> list[str]:
    """One sentence per technique that did not finish, so a reader never mistakes a missing column for a
    technique that was not asked for."""
    return [f"Not compared: {techniques.label(m)} {results[m]['status']} ({str(results[m].get('error'))[:160]})."
            for m in order(results) if m != techniques.BASE and isinstance(results.get(m), dict)
            and results[m].get("status") != "ok"]


def mcnemar(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar p-value for paired right/wrong flags."""
    from math import comb

    n01 = sum(1 for x, y in zip(a, b) if x and not y)
    n10 = sum(1 for x, y in zip(a, b) if y and not x)
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone)."""
    ranked = sorted(pvalues, key=pvalues.get)
    out, running = {}, 0.0
    for i, k in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * pvalues[k]))
        out[k] = running
    return out


def seed_spread(a: dict, b: dict) -> dict | None:
    """Mean accuracy difference a - b over the training seeds, and the spread it must exceed (the larger
    of the two techniques' seed standard deviations, times two). None with fewer than 2 seeds each."""
    ra = [r["accuracy"] for r in a.get("repeats") or [] if r.get("accuracy") is not None]
    rb = [r["accuracy"] for r in b.get("repeats") or [] if r.get("accuracy") is not None]
    if len(ra) < 2 or len(rb) < 2:
        return None
    import statistics

    return {"mean_diff": statistics.mean(ra) - statistics.mean(rb),
            "spread": 2 * max(statistics.stdev(ra), statistics.stdev(rb)), "seeds": min(len(ra), len(rb))}


def _pair(cmp: dict, a: str, b: str) -> dict:
    if f"{a}-vs-{b}" in cmp["pairs"]:
        return cmp["pairs"][f"{a}-vs-{b}"]
    p = cmp["pairs"][f"{b}-vs-{a}"]
    return {**p, "diff": -p["diff"], "ci95": (-p["ci95"][1], -p["ci95"][0])}


def size_text(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB" if b >= 2**20 else f"{b / 2**10:,.0f} KiB"


POLICY = ("the highest NBA validation score among the points above the strongest validation baseline that keep at "
          "least {keep:.0%} of {what}; when none does, the one that keeps the most while "
          "still {margin:.0%} above the strongest validation baseline{last}")
# what the policy's floor is a share of (eval.keep_measure), as the policy, a reason and a chosen point's note say it
MEASURE_TEXT = {
    "score": ("the base's general validation score", "the base's general score", ""),
    "known": ("the general validation questions the base answers right", "the general questions the base answers right",
              " of the questions the base answers right"),
    "stratified": (("the base's general validation score, reweighted to the test's mix of questions it answers right "
                    "and wrong"), "the base's general score reweighted to the test's mix", ", reweighted to the test's mix"),
}
KEEP_MEASURES = tuple(MEASURE_TEXT)


def general_known(base_correct: list[bool], correct: list[bool]) -> float:
    """The share of the questions the base answered right that a model still answers right (1.0 when the base
    answered none): what it kept of what the base knew, with no credit for questions the base got wrong."""
    if len(base_correct) != len(correct):
        raise ValueError(f"general validation: {len(correct)} answers against the base's {len(base_correct)}")
    right = sum(map(bool, base_correct))
    return sum(1 for b, c in zip(base_correct, correct) if b and c) / right if right else 1.0


def general_stratified(base_correct: list[bool], correct: list[bool], like_test: list[bool]) -> float:
    """A model's general validation score over the base's, with the questions the base answers right and those it
    answers wrong weighted as in the questions drawn like the test (``like_test``): the share of the base's right
    answers kept plus the share of its wrong answers now right times the like-test questions' wrong-to-right ratio.
    Validation's extra bank is harder than the test (the base answers 55% of validation, 64% of its questions drawn
    like the test, 69% of the test), and a plain ratio lets gains on its many wrong answers offset lost facts; over
    16 points of two default runs this estimate ran +2 points from the test's ratio on average (the plain ratio +6,
    the known share -8; BENCHMARKS.md). Equal to the plain ratio when every question is drawn like the test."""
    if not len(base_correct) == len(correct) == len(like_test):
        raise ValueError(f"general validation: {len(correct)} answers, the base's {len(base_correct)}, "
                         f"{len(like_test)} like-test flags")
    right = [i for i, b in enumerate(base_correct) if b]
    wrong = [i for i, b in enumerate(base_correct) if not b]
    if not right:
        return 1.0
    kept = general_known(base_correct, correct)
    gained = sum(1 for i in wrong if correct[i]) / len(wrong) if wrong else 0.0
    like_right = sum(1 for b, t in zip(base_correct, like_test) if b and t)
    like_wrong = sum(1 for b, t in zip(base_correct, like_test) if t and not b)
    odds = like_wrong / like_right if like_right else len(wrong) / len(right)
    return kept + gained * odds


def score_curve(alphas, score, base_general: float, strongest: float, keep: float = 0.9,
                every: bool = False, refine: int = 0, measure: str = "score") -> tuple[list[dict], list]:
    """The curve's points, scored from alpha 1 down by ``score(alpha) -> point``. Alpha 1 and the largest alpha
    below it are always scored (the figure's curve); a lower one only while no scored point is one the policy's
    first rule takes (above ``strongest`` on NBA validation, keeping ``keep`` of the base's general score), or
    with ``every``. A skipped point could have been chosen only by scoring higher on NBA validation than a larger
    alpha the first rule takes: in every default-run curve measured NBA validation fell with alpha. Then ``refine``
    times, the midpoint between the largest alpha the first rule takes and the next larger scored alpha, which
    learned but missed the floor: on a coarse grid one general question decides between 0.75 and 0.5, and the
    midpoint keeps the choice near the floor rather than a grid step below it. ``measure``: as ``operating_point``.
    Returns the points in alpha order and the alphas not scored."""
    def taken(p):
        return _chosen_first(p, base_general, strongest, keep, measure)

    points, skipped = [], []
    for i, a in enumerate(sorted(set(alphas) | {1.0}, reverse=True)):
        if i >= 2 and not every and any(taken(p) for p in points):
            skipped.append(a)
            continue
        points.append(score(a))
    for _ in range(refine):
        lo = max((p for p in points if taken(p)), key=lambda p: p["alpha"], default=None)
        hi = min((p for p in points if lo and p["alpha"] > lo["alpha"]), key=lambda p: p["alpha"], default=None)
        if hi is None or hi["nba_validation"] <= strongest:
            break
        points.append(score(round((lo["alpha"] + hi["alpha"]) / 2, 4)))
    return sorted(points, key=lambda p: p["alpha"]), sorted(skipped)


def _kept(point: dict, base_general: float, measure: str = "score") -> float:
    if measure in ("known", "stratified"):
        if f"general_{measure}" not in point:
            raise ValueError(f"eval.keep_measure: {measure} needs the base's general validation answers; the point at "
                             f"alpha {point['alpha']:g} has none (the base was not evaluated in this run): use score")
        return point[f"general_{measure}"]
    return point["general_validation"] / base_general if base_general else 1.0


def _chosen_first(point: dict, base_general: float, strongest: float, keep: float, measure: str = "score") -> bool:
    """A point the policy's first rule considers: it learned (above the strongest validation baseline, which a
    model that learned nothing scores) and keeps the floor."""
    return point["nba_validation"] > strongest and _kept(point, base_general, measure) >= keep


def operating_point(curve: list[dict], base_general: float, strongest_validation: float, keep: float = 0.9,
                    margin: float = 0.25, tie=lambda p: p["alpha"], measure: str = "score", share: float = 1.0) -> dict:
    """Where to use a technique, from validation alone: ``curve`` is ``[{alpha, nba_validation,
    general_validation}]`` (and ``general_known`` / ``general_stratified`` with that ``measure``). Returns ``{alpha,
    reason, policy, kept, keep, measure}`` (``kept``: what the point keeps by ``measure``, the base's general score
    share, for "known" the share of the base's right answers still right, for "stratified" ``general_stratified``;
    ``kept_known`` / ``kept_stratified`` too when the point has them; ``keep``:
    the policy's floor). Ties go to the larger ``tie(point)``: by default the larger alpha (the less altered model is
    not preferred for free). The learning-rate sweep passes its points with the rate as alpha. The last resort, when
    no point keeps the floor or clears ``margin``: among the points above the baseline whose lead over it is at
    least ``share`` of the best point's, the one that keeps the most (``share`` 1: the best NBA validation score)."""
    if measure not in KEEP_MEASURES:
        raise ValueError(f"keep measure {measure!r}: must be one of {', '.join(KEEP_MEASURES)}")
    if not 0 < share <= 1:
        raise ValueError(f"fallback share {share}: must be in (0, 1]")
    what, short, _ = MEASURE_TEXT[measure]
    last = ("; else the highest NBA validation score" if share == 1 else
            f"; else the one that keeps the most while holding {share:.0%} of the best point's lead over it")
    policy = POLICY.format(keep=keep, margin=margin, what=what, last=last)

    def kept(p):
        return _kept(p, base_general, measure)

    def pick(points, key, reason):
        best = max(points, key=key)
        return {"alpha": best["alpha"], "reason": reason, "policy": policy, "kept": kept(best),
                "keep": keep, "measure": measure, "general_validation": best["general_validation"],
                **({"kept_known": best["general_known"]} if "general_known" in best else {}),
                **({"kept_stratified": best["general_stratified"]} if "general_stratified" in best else {})}

    keeping = [p for p in curve if _chosen_first(p, base_general, strongest_validation, keep, measure)]
    if keeping:
        return pick(keeping, lambda p: (p["nba_validation"], tie(p)),
                    f"above the strongest validation baseline, keeps {keep:.0%} of {what}")
    # a point that keeps the floor but scores no better than a baseline is the base again: never the answer
    above = [p for p in curve if p["nba_validation"] >= strongest_validation + margin]
    if above:
        return pick(above, lambda p: (kept(p), p["nba_validation"], tie(p)),
                    f"no point above the baseline keeps {keep:.0%} of {short}: the one that keeps the "
                    f"most while {margin:.0%} above the strongest validation baseline")
    best = max(p["nba_validation"] for p in curve)
    lead = best - strongest_validation
    if share < 1 and lead > 0:
        holding = [p for p in curve if p["nba_validation"] - strongest_validation >= share * lead - 1e-12]
        return pick(holding, lambda p: (kept(p), p["nba_validation"], tie(p)),
                    f"no point above the baseline keeps {keep:.0%} of {short} or clears it by {margin:.0%}: the one "
                    f"that keeps the most while holding {share:.0%} of the best point's lead over it")
    return pick(curve, lambda p: (p["nba_validation"], tie(p)),
                f"no point above the baseline keeps {keep:.0%} of {short} or clears it by {margin:.0%}: "
                "the best NBA validation score")
