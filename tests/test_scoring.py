"""The answer-match metric (loaded through `evaluate` by path) and the statistics on top of it."""

from __future__ import annotations

import pytest

from nbatune.evaluation import answer_metric, paired_difference, score, wilson


def ok(pred, ref, kind="text", tol=0.0) -> bool:
    return answer_metric().compute(predictions=[pred], references=[ref], answer_types=[kind],
                                   tolerances=[tol])["correct"][0]


@pytest.mark.parametrize("pred,ref,tol,want", [
    ("TS% = 55.0%", "55.0%", 1.0, True),
    ("TS% = 55.9%", "55.0%", 1.0, True),
    ("TS% = 56.2%", "55.0%", 1.0, False),
    ("W% = .524", "0.524", 0.01, True),
    ("0.53", "0.524", 0.01, True),
    ("GmSc = -3.4", "-3.4", 0.5, True),
    ("Pythagorean wins = 54.2 wins", "54.2", 1.5, True),
    ("about fifty", "54.2", 1.5, False),
    ("", "54.2", 1.5, False),
])
def test_numbers_are_checked_within_tolerance(pred, ref, tol, want):
    assert ok(pred, ref, "number", tol) is want


@pytest.mark.parametrize("pred,ref,want", [
    ("Los Angeles Lakers", "Los Angeles Lakers", True),
    ("The Lakers.", "Los Angeles Lakers", True),
    ("lakers", "Minneapolis Lakers", True),
    ("Los Angeles Lakers", "Minneapolis Lakers", False),
    ("Boston Celtics (def. Los Angeles Lakers 4-2)", "Los Angeles Lakers", False),
    ("Philadelphia 76ers", "Philadelphia 76ers", True),
    ("Sixers", "Philadelphia 76ers", True),
    ("Nikola Jokić", "Nikola Jokic", True),
    ("Shaquille O'Neal", "Shaquille O'Neal", True),
    ("Shaq", "Shaquille O'Neal", True),
    ("Magic Johnson", "Dennis Johnson", False),
    ("true shooting percentage", "true shooting percentage", True),
    ("True Shooting Percentage (TS%)", "true shooting percentage", True),
    ("\n\n", "Boston Celtics", False),
    ("Boston", "Boston Celtics", False),
])
def test_names_use_normalised_match_with_aliases(pred, ref, want):
    assert ok(pred, ref, "name") is want


@pytest.mark.parametrize("pred,want", [
    ("Player B (TS% 65.4% vs 44.6%)", True),
    ("player b, clearly", True),
    ("Player A was worse than Player B", False),
    ("neither", False),
])
def test_choice_takes_the_first_player_named(pred, want):
    assert ok(pred, "Player B", "choice") is want


def test_series_results_need_an_exact_match():
    assert ok("4-3", "4-3") and not ok("4-2", "4-3") and ok(" 4-3 \nmore", "4-3")


def test_malformed_output_is_wrong_not_a_crash():
    for junk in ["", "=", "%%%", "=-", "\x00", "1e309", "(((("]:
        for kind in ("number", "name", "choice", "text"):
            assert ok(junk, "55.0%" if kind == "number" else "Boston Celtics", kind, 1.0) in (True, False)


def test_score_reports_per_category_with_intervals():
    recs = [{"answer": "4-3", "answer_type": "text", "tolerance": 0, "category": c} for c in "aab"]
    s = score(recs, ["4-3", "4-2", "4-3"])
    assert s["accuracy"] == pytest.approx(2 / 3) and s["correct"] == [True, False, True]
    assert s["per_category"]["a"]["accuracy"] == 0.5 and s["per_category"]["b"]["n"] == 1
    lo, hi = s["accuracy_ci95"]
    assert lo < 2 / 3 < hi


def test_wilson_interval_matches_known_values():
    # 8/10 at 95%: (0.4902, 0.9433), a textbook value
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (0.0, 0.0)
    assert wilson(0, 50)[0] == 0.0 and wilson(50, 50)[1] == 1.0


def test_paired_difference_says_when_a_gap_is_noise():
    same = [True, False] * 50
    assert paired_difference(same, same)["within_noise"]
    better = [True] * 90 + [False] * 10
    worse = [True] * 40 + [False] * 60
    d = paired_difference(better, worse)
    assert d["diff"] == pytest.approx(0.5) and not d["within_noise"] and d["ci95"][0] > 0
