"""The learning-forgetting curve: models between the base (alpha = 0) and the trained one (alpha = 1), the
operating point chosen on validation, and every reload at that point giving the scored answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import ANSWERING, tiny_config
from nbatune import decisions, evaluation
from nbatune.compare import Comparison
from nbatune.data import retention
from nbatune.inference import load_from_run

METHODS = ("full", "lora", "qlora", "dora")  # dora: an adapter moved by interpolation, not by scaling


@pytest.fixture(scope="module")
def run(answering_model_dir, tmp_path_factory):
    cmp = Comparison(tiny_config(answering_model_dir, tmp_path_factory.mktemp("curve"), methods=list(METHODS),
                                 **{**ANSWERING, "eval.curve_alphas": [0.5],
                                    "train.learning_rate": {"full": 1e-3, "lora": 5e-3, "qlora": 5e-3, "dora": 5e-3}}))
    cmp.setup()
    return cmp, cmp.execute()


def _answers(cmp, model, rt):
    return evaluation.answer_and_score(model, cmp.tokenizer, cmp.test_records, rt, cmp.cfg.eval, cmp.pools)["predictions"]


def test_every_technique_has_a_validation_curve_and_an_operating_point(run):
    cmp, res = run
    origin = res["base"]["validation"]
    assert set(origin) == {"alpha", "nba_validation", "general_validation", "general_correct", "seconds"}
    # the origin keeps which general validation questions the base answers right, and its score is their share
    assert len(origin["general_correct"]) == len(cmp.general_val)
    assert origin["general_validation"] == pytest.approx(sum(origin["general_correct"]) / len(cmp.general_val))
    for m in METHODS:
        r = res[m]
        assert [p["alpha"] for p in r["curve"]] == [0.5, 1.0]
        # the curve is validation only: nothing a test split gave can have chosen the point
        assert all(set(p) == {"alpha", "nba_validation", "general_validation", "general_known", "general_stratified"}
                   for p in r["curve"])
        assert all(0 <= p["general_known"] <= 1 and p["general_stratified"] >= 0 for p in r["curve"])
        assert r["operating_point"]["measure"] == "score" and "kept_known" in r["operating_point"]
        op = r["operating_point"]
        assert op["alpha"] in (0.5, 1.0) and op["policy"].startswith("the highest NBA validation score")
        assert bool(r["trained"]) == (op["alpha"] != 1.0)
    # the fixture exercises both cases: a point before the trained model, and the trained model itself
    assert {res[m]["operating_point"]["alpha"] for m in METHODS} == {0.5, 1.0}


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_alpha_zero_gives_the_base_answers_and_alpha_one_the_trained_ones(run, method):
    cmp, res = run
    model, _, rt, _ = load_from_run(res["run_dir"], method, alpha=0.0)
    assert _answers(cmp, model, rt) == res["base"]["predictions"]
    trained = res[method]["trained"].get("predictions") or res[method]["predictions"]
    model, _, rt, _ = load_from_run(res["run_dir"], method, alpha=1.0)
    answers = _answers(cmp, model, rt)
    assert answers == trained and answers != res["base"]["predictions"]


@pytest.mark.parametrize("method", METHODS)
def test_a_reload_without_alpha_gives_the_scored_answers_of_the_chosen_point(run, method):
    cmp, res = run
    model, _, rt, _ = load_from_run(res["run_dir"], method)
    assert _answers(cmp, model, rt) == res[method]["predictions"]


def test_a_point_between_differs_from_both_ends(run):
    cmp, res = run
    model, _, rt, _ = load_from_run(res["run_dir"], "full", alpha=0.5)
    mid = _answers(cmp, model, rt)
    assert mid != res["base"]["predictions"]
    with pytest.raises(ValueError, match="alpha: 1.5 must be in"):
        load_from_run(res["run_dir"], "full", alpha=1.5)


def test_the_operating_point_policy():
    def pt(a, nba, gen):
        return {"alpha": a, "nba_validation": nba, "general_validation": gen}

    curve = [pt(0.25, 0.10, 0.60), pt(0.5, 0.40, 0.56), pt(0.75, 0.55, 0.50), pt(1.0, 0.60, 0.30)]
    op = decisions.operating_point(curve, base_general=0.60, strongest_validation=0.05)
    assert op["alpha"] == 0.5 and op["kept"] == pytest.approx(0.56 / 0.60) and "keeps 90%" in op["reason"]
    assert decisions.operating_point(curve, 0.60, 0.05, keep=0.8)["alpha"] == 0.75
    # nothing keeps 90%: the one keeping the most while 25 points above the strongest baseline
    low = [pt(0.5, 0.20, 0.40), pt(0.75, 0.35, 0.38), pt(1.0, 0.60, 0.20)]
    op = decisions.operating_point(low, 0.60, 0.05)
    assert op["alpha"] == 0.75 and "keeps the most" in op["reason"]
    # nothing clears the margin either: the best NBA score, and the reason says so
    op = decisions.operating_point(low, 0.60, 0.50)
    assert op["alpha"] == 1.0 and "best NBA validation score" in op["reason"]
    # a point that keeps the floor but scores no better than the strongest baseline learned nothing: not chosen
    flat = [pt(0.5, 0.05, 0.58), pt(0.75, 0.20, 0.50), pt(1.0, 0.40, 0.40)]
    op = decisions.operating_point(flat, 0.60, 0.05)
    assert op["alpha"] == 1.0 and "no point above the baseline keeps 90%" in op["reason"]
    assert decisions.operating_point(flat, 0.60, 0.04)["alpha"] == 0.5  # one point above it, and it is taken
    # ties go to the larger alpha
    assert decisions.operating_point([pt(0.5, 0.4, 0.6), pt(1.0, 0.4, 0.6)], 0.6, 0.0)["alpha"] == 1.0


def test_the_policy_can_keep_what_the_base_knew_instead_of_its_score():
    """``eval.keep_measure: known``: the floor is a share of the general questions the base answers right, so a point
    that lost facts cannot make up for them with lucky answers to questions the base got wrong (which lifted the
    score ratio 3-12 points above the retention test's in two default runs)."""
    assert decisions.general_known([True, True, False, False], [True, False, True, False]) == 0.5
    assert decisions.general_known([False, False], [True, False]) == 1.0  # the base knew nothing: nothing to lose
    with pytest.raises(ValueError, match="3 answers against the base's 2"):
        decisions.general_known([True, False], [True, True, False])

    def pt(a, nba, gen, known):
        return {"alpha": a, "nba_validation": nba, "general_validation": gen, "general_known": known}

    # alpha 1 keeps 96% of the base's score but only 80% of what it knew; 0.75 keeps 92% of what it knew
    curve = [pt(0.5, 0.10, 0.52, 0.97), pt(0.75, 0.20, 0.50, 0.92), pt(1.0, 0.30, 0.48, 0.80)]
    score = decisions.operating_point(curve, base_general=0.5, strongest_validation=0.05)
    assert score["alpha"] == 1.0 and score["measure"] == "score" and score["kept_known"] == 0.80
    known = decisions.operating_point(curve, 0.5, 0.05, measure="known")
    assert known["alpha"] == 0.75 and known["kept"] == 0.92 and known["general_validation"] == 0.50
    assert "the general validation questions the base answers right" in known["reason"] + known["policy"]
    # no point keeps 90% of what it knew: the fallback also ranks by that measure
    low = [pt(0.5, 0.40, 0.52, 0.70), pt(0.75, 0.45, 0.50, 0.85), pt(1.0, 0.60, 0.49, 0.60)]
    op = decisions.operating_point(low, 0.5, 0.05, measure="known")
    assert op["alpha"] == 0.75 and "the general questions the base answers right" in op["reason"]
    # the curve scores lower points until one keeps by the same measure
    score_fn, scored = _scorer({1.0: (0.3, 0.48, 0.80), 0.75: (0.2, 0.50, 0.86), 0.5: (0.1, 0.52, 0.97)})
    assert decisions.score_curve([0.5, 0.75], score_fn, 0.5, 0.05, 0.9)[1] == [0.5] and scored == [1.0, 0.75]
    score_fn, scored = _scorer({1.0: (0.3, 0.48, 0.80), 0.75: (0.2, 0.50, 0.86), 0.5: (0.1, 0.52, 0.97)})
    decisions.score_curve([0.5, 0.75], score_fn, 0.5, 0.05, 0.9, measure="known")
    assert scored == [1.0, 0.75, 0.5]
    with pytest.raises(ValueError, match="needs the base's general validation answers.*use score"):
        decisions.operating_point([{"alpha": 1.0, "nba_validation": 0.3, "general_validation": 0.5}], 0.5, 0.05,
                                  measure="known")
    with pytest.raises(ValueError, match="must be one of score, known"):
        decisions.operating_point(curve, 0.5, 0.05, measure="facts")


def _scorer(points: dict[float, tuple]):
    scored = []

    def score(a):
        scored.append(a)
        return {"alpha": a, "nba_validation": points[a][0], "general_validation": points[a][1],
                **({"general_known": points[a][2]} if len(points[a]) > 2 else {})}
    return score, scored


def test_lower_curve_points_are_scored_only_while_no_scored_point_keeps_the_floor():
    alphas = [0.25, 0.5, 0.75]
    # alpha 1 keeps 90% of the base's 0.6: 0.75 is scored for the figure, nothing below it
    score, scored = _scorer({1.0: (0.3, 0.55), 0.75: (0.2, 0.57), 0.5: (0.1, 0.6), 0.25: (0.0, 0.6)})
    points, skipped = decisions.score_curve(alphas, score, base_general=0.6, strongest=0.05, keep=0.9)
    assert scored == [1.0, 0.75] and skipped == [0.25, 0.5] and [p["alpha"] for p in points] == [0.75, 1.0]
    # nothing keeps until 0.5: scored down to it, 0.25 left out
    score, scored = _scorer({1.0: (0.3, 0.40), 0.75: (0.2, 0.50), 0.5: (0.1, 0.55), 0.25: (0.0, 0.6)})
    assert decisions.score_curve(alphas, score, 0.6, 0.05, 0.9)[1] == [0.25] and scored == [1.0, 0.75, 0.5]
    # nothing keeps at all: every point, as the fallbacks need them
    score, scored = _scorer({1.0: (0.3, 0.40), 0.75: (0.2, 0.40), 0.5: (0.1, 0.40), 0.25: (0.0, 0.40)})
    assert decisions.score_curve(alphas, score, 0.6, 0.05, 0.9)[1] == [] and sorted(scored) == [0.25, 0.5, 0.75, 1.0]
    # a point that keeps the floor but learned nothing does not stop the descent: the policy cannot take it
    score, scored = _scorer({1.0: (0.3, 0.40), 0.75: (0.05, 0.57), 0.5: (0.1, 0.55), 0.25: (0.0, 0.6)})
    assert decisions.score_curve(alphas, score, 0.6, 0.05, 0.9)[1] == [0.25] and scored == [1.0, 0.75, 0.5]
    # every=True scores them all even where alpha 1 keeps the floor
    score, scored = _scorer({1.0: (0.3, 0.6), 0.75: (0.2, 0.6), 0.5: (0.1, 0.6), 0.25: (0.0, 0.6)})
    assert decisions.score_curve(alphas, score, 0.6, 0.05, 0.9, every=True)[1] == [] and len(scored) == 4


def test_the_curve_halves_the_gap_between_the_point_it_takes_and_the_larger_one_that_missed_the_floor():
    alphas = [0.5, 0.75]
    # 0.75 learned but kept one question too few (0.53 of 0.6 is 88%); 0.5 keeps: the midpoint is scored and taken
    points = {1.0: (0.22, 0.42), 0.75: (0.19, 0.53), 0.625: (0.15, 0.545), 0.5: (0.11, 0.55), 0.6875: (0.17, 0.535)}
    score, scored = _scorer(points)
    curve, skipped = decisions.score_curve(alphas, score, 0.6, 0.05, 0.9, refine=1)
    assert scored == [1.0, 0.75, 0.5, 0.625] and skipped == [] and [p["alpha"] for p in curve] == [0.5, 0.625, 0.75, 1.0]
    assert decisions.operating_point(curve, 0.6, 0.05)["alpha"] == 0.625
    # a second halving starts from the midpoint it took; one that misses the floor leaves the choice where it was
    score, scored = _scorer(points)
    curve, _ = decisions.score_curve(alphas, score, 0.6, 0.05, 0.9, refine=2)
    assert scored == [1.0, 0.75, 0.5, 0.625, 0.6875] and decisions.operating_point(curve, 0.6, 0.05)["alpha"] == 0.625
    # refine=0 is the grid alone
    score, scored = _scorer(points)
    assert decisions.score_curve(alphas, score, 0.6, 0.05, 0.9)[0][-1]["alpha"] == 1.0 and 0.625 not in scored
    # nothing to halve: alpha 1 keeps the floor; no point keeps it; the larger point learned nothing
    for pts in ({1.0: (0.3, 0.58), 0.75: (0.2, 0.6)}, {1.0: (0.3, 0.4), 0.75: (0.2, 0.4), 0.5: (0.1, 0.4)},
                {1.0: (0.04, 0.4), 0.75: (0.03, 0.5), 0.5: (0.06, 0.58)}):
        score, scored = _scorer(pts)
        decisions.score_curve(alphas, score, 0.6, 0.05, 0.9, refine=1)
        assert set(scored) <= set(pts), pts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), min_size=4, max_size=4),
       st.floats(0.05, 0.5), st.sampled_from([0.8, 0.9, 1.0]))
def test_leaving_lower_points_out_chooses_what_the_whole_curve_would_when_learning_rises_with_alpha(
        pairs, strongest, keep):
    alphas = [0.25, 0.5, 0.75, 1.0]
    nba = sorted(p[0] / 100 for p in pairs)  # NBA validation rising with alpha, as every measured curve did
    points = {a: (n, g / 100) for a, n, (_, g) in zip(alphas, nba, pairs)}
    full = [{"alpha": a, "nba_validation": n, "general_validation": g} for a, (n, g) in points.items()]
    lazy, _ = decisions.score_curve(alphas[:3], _scorer(points)[0], 0.6, strongest, keep)
    assert (decisions.operating_point(lazy, 0.6, strongest, keep)["alpha"]
            == decisions.operating_point(full, 0.6, strongest, keep)["alpha"])


def test_retention_has_disjoint_validation_and_test_splits_covering_every_category():
    val, test = retention.records("", "validation"), retention.records("", "test")
    qv, qt = ({r["messages"][0]["content"] for r in rs} for rs in (val, test))
    assert len(qv) == len(val) and len(qt) == len(test)  # no question asked twice
    assert not qv & qt and len(qv) + len(qt) == len(retention.questions()) + len(retention.validation_only())
    assert {r["category"] for r in val} == {r["category"] for r in test}
    # validation large enough to choose on (77 questions misled the choice), test as it was
    assert len(val) >= 220 and len(test) == 149
    with pytest.raises(ValueError, match="allowed: validation, test"):
        retention.records("", "train")


def test_retention_answers_are_never_words_of_questions_in_their_group_and_test_scoring_ignores_the_bank():
    """A sentence that repeats its question must not name a competitor; and the validation-only bank's answers
    are not competitors when scoring (test figures stay comparable across runs)."""
    import re

    rows = retention.questions() + retention.validation_only()
    for cat in {q["category"] for q in rows if q["answer_type"] == "name"}:
        group = [q for q in rows if q["category"] == cat]
        answers = {q["answer"].lower() for q in group}
        for q in group:
            words = set(re.findall(r"[a-z]+", q["question"].lower()))
            assert not {a for a in answers if set(a.split()) <= words}, q["question"]
    pools = retention.pools()
    bank_only = {q["answer"] for q in retention.validation_only()} - {q["answer"] for q in retention.questions()}
    assert bank_only and not bank_only & {a for pool in pools.values() for a in pool}


# ---- replay: the base's own answers to general prompts -------------------------------------------------

def test_replay_prompts_are_disjoint_from_both_retention_splits():
    from nbatune.data import replay

    asked = replay.prompts()
    assert len(asked) == len(set(asked)) >= 150
    questions = [q["question"] for q in retention.questions() + retention.validation_only()]
    assert not [p for p in asked if any(q in p or p in q for q in questions)]
    # nor about anything a retention question asks about
    for extra in ("", "MORE_"):  # the split questions and the validation-only bank
        capitals, languages, symbols, opposites, plurals = (
            set(getattr(retention, extra + n)) for n in ("CAPITALS", "LANGUAGES", "SYMBOLS", "OPPOSITES", "PLURALS"))
        assert not (set(replay.CAPITALS) | set(replay.LANGUAGES)) & (capitals | languages)
        assert not set(replay.ELEMENTS) & symbols
        assert not (set(replay.PAST_TENSES) | set(replay.SYNONYMS)) & (opposites | plurals)


def test_replay_mixes_the_bases_own_answers_at_the_share_and_caches_them(answering_model_dir, tmp_path,
                                                                          monkeypatch, caplog):
    import logging

    from nbatune import replay
    from nbatune.data import replay as replay_prompts

    monkeypatch.setenv("NBATUNE_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(answering_model_dir, tmp_path, **{**ANSWERING, "train.replay_share": 0.2})
    plain = Comparison(tiny_config(answering_model_dir, tmp_path / "plain", **ANSWERING)).setup()
    with caplog.at_level(logging.INFO, logger="nbatune.replay"):
        first = Comparison(cfg).setup()
        assert "generating the base's answers" in caplog.text
        caplog.clear()
        cfg["run_name"] = "again"
        again = Comparison(cfg).setup()
        assert "from" in caplog.text and "generating" not in caplog.text
    nba = len(plain.train_rows)
    mixed = first.rows_for("lora")
    assert mixed[:nba] == plain.train_rows and again.rows_for("lora") == mixed
    added = mixed[nba:]
    assert len(added) == round(0.2 / 0.8 * nba) == first.replay_info["rows"]["lora"]
    # each replayed answer is the base's greedy answer to its prompt
    model = __import__("nbatune.modeling", fromlist=["load_model"]).load_model(
        first.model_path, "base", first.cfg.model, first.rt, first.cfg.lora, first.cfg.quant, 0)
    shell = {"messages": [{"role": "system", "content": first.cfg.model.system_prompt},
                          {"role": "user", "content": replay_prompts.prompts()[0]}, {"role": "assistant", "content": ""}]}
    want = evaluation.generate_answers(model, first.tokenizer, [shell], first.rt, replay.MAX_NEW_TOKENS, 1,
                                       stop_at_newline=True)[0]
    rec = replay.records(first.cfg.model.system_prompt, replay.base_answers(first.model_path, first.tokenizer,
                                                                            first.cfg, first.rt))
    assert rec[0]["messages"][-1]["content"] == want.strip()


def test_cards_quote_the_figures_of_the_alpha_their_folder_holds(run, tmp_path):
    from huggingface_hub import ModelCard

    from nbatune.inference import export

    _, res = run
    moved = [m for m in ("full", "lora") if res[m]["operating_point"]["alpha"] != 1.0]
    assert moved, "the fixture must move full or LoRA off alpha 1"
    m = moved[0]
    r = res[m]

    def accuracies(folder):
        card = ModelCard.load(folder / "README.md")
        metrics = {x["name"].split(",")[0] + ("" if "formats" not in x["name"] else x["name"].split(",")[1]): x["value"]
                   for e in card.data.to_dict()["model-index"][0]["results"] for x in e["metrics"]}
        return card.text, metrics

    text, metrics = accuracies(Path(r["saved_path"]))  # the run saves the trained model (alpha 1)
    assert metrics["answer accuracy"] == r["trained"]["accuracy"] and "not these weights (alpha 1)" in text
    out = export(res["run_dir"], m, tmp_path / "at-point", dtype="float32")  # at the operating point
    text, metrics = accuracies(out)
    assert metrics["answer accuracy"] == r["accuracy"] and "): these weights" in text
    assert metrics["answer accuracy unseen stat-line formats (%d questions)" % r["formats"]["unseen"]["n"]] == \
        r["formats"]["unseen"]["accuracy"]
    text, metrics = accuracies(export(res["run_dir"], m, tmp_path / "other", dtype="float32", alpha=0.75))
    assert "answer accuracy" not in metrics and "No test figures were measured at alpha 0.75" in text


def test_the_report_shows_the_operating_points_and_the_tradeoff_figure(run):
    _, res = run
    report = (Path(res["run_dir"]) / "report.md").read_text()
    assert "| model | alpha (chosen on validation) | seen formats | unseen format |" in report
    assert (Path(res["run_dir"]) / "tradeoff.png").stat().st_size > 10_000
    assert "Operating points (chosen on validation)" in res["comparison"]["recommendation"]
    assert "Not scored" not in report  # one alpha below 1: nothing left out
    # the chosen point's own general validation and known share travel with it
    op = res["lora"]["operating_point"]
    chosen = next(p for p in res["lora"]["curve"] if p["alpha"] == op["alpha"])
    assert (op["general_validation"], op["kept_known"]) == (chosen["general_validation"], chosen["general_known"])
    assert op["kept_stratified"] == chosen["general_stratified"]
    # a technique whose lower points were left out says which, and why
    import copy

    from nbatune.report import operating_table
    lazy = copy.deepcopy(res)
    lazy["lora"]["operating_point"]["not_scored"] = [0.25, 0.5]
    assert "a larger alpha already kept the floor (`eval.curve_every_point`): LoRA: alpha 0.25, 0.5." in (
        operating_table(lazy))
    # both measures of what a chosen point kept of the base's general validation (the tiny base answers none of
    # it right, so the run's own report has no such line: a share of nothing)
    assert "General validation kept at the chosen points" not in report
    lazy["lora"]["operating_point"].update(base_general_validation=0.5, general_validation=0.45, kept_known=0.8)
    lazy["lora"]["operating_point"].pop("kept_stratified")  # a run from before the third measure
    assert "the base answers right (the second gives no credit for questions the base got wrong, " \
           "`eval.keep_measure`): LoRA 90% / 80%." in operating_table(lazy)
    lazy["lora"]["operating_point"]["kept_stratified"] = 0.85
    assert "/ of the base's score reweighted to the test's mix (the second gives no credit for questions the base got " \
           "wrong, `eval.keep_measure`): LoRA 90% / 80% / 85%." in operating_table(lazy)


def test_the_policy_can_weigh_general_validation_as_the_test_is_mixed():
    """``eval.keep_measure: stratified``: validation's extra bank is harder than the test, so its many questions the
    base gets wrong let a model's lucky answers lift the plain ratio above the test's. Reweighted to the like-test
    questions' mix of right and wrong, the ratio is kept plus gained times that mix's wrong-to-right ratio."""
    base = [True, True, True, True, False, False, False, False]
    like = [True, True, True, False, True, False, False, False]  # like-test: 3 right, 1 wrong; the bank: 1 / 3
    model = [True, True, False, False, True, True, False, False]  # kept 2 of 4, gained 2 of 4
    assert decisions.general_stratified(base, model, like) == pytest.approx(0.5 + 0.5 * 1 / 3)
    # the plain ratio, 4 / 4, is what it gives when every question is drawn like the test
    assert decisions.general_stratified(base, model, [True] * 8) == pytest.approx(1.0)
    assert decisions.general_stratified([False, False], [True, False], [True, True]) == 1.0  # nothing to lose
    # no like-test question the base answers right: the whole split's mix
    assert decisions.general_stratified(base, model, [False] * 4 + [True] * 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 answers, the base's 2, 2 like-test flags"):
        decisions.general_stratified([True, False], [True, True, False], [True, True])

    def pt(a, nba, gen, strat):
        return {"alpha": a, "nba_validation": nba, "general_validation": gen, "general_stratified": strat}

    # alpha 1 keeps 96% of the base's score, 86% reweighted; 0.75 keeps 93% reweighted
    curve = [pt(0.5, 0.10, 0.52, 0.97), pt(0.75, 0.20, 0.50, 0.93), pt(1.0, 0.30, 0.48, 0.86)]
    assert decisions.operating_point(curve, 0.5, 0.05)["alpha"] == 1.0
    op = decisions.operating_point(curve, 0.5, 0.05, measure="stratified")
    assert op["alpha"] == 0.75 and op["kept"] == 0.93 and op["kept_stratified"] == 0.93
    assert "reweighted to the test's mix" in op["policy"]
    with pytest.raises(ValueError, match="stratified needs the base's general validation answers.*use score"):
        decisions.operating_point([{"alpha": 1.0, "nba_validation": 0.3, "general_validation": 0.5}], 0.5, 0.05,
                                  measure="stratified")


def test_the_last_resort_can_keep_the_most_among_points_holding_a_share_of_the_lead():
    """``eval.fallback_share``: when no point keeps the floor or clears the margin, the last resort was the best NBA
    validation score, the point that forgets most (QLoRA at alpha 1 keeping 61% in the AVX2 default run). With a
    share below 1 it takes the most-keeping point among those whose lead over the baseline is at least that share of
    the best point's; 1 is the old rule exactly."""
    def pt(a, nba, gen):
        return {"alpha": a, "nba_validation": nba, "general_validation": gen}

    # the AVX2 default run's QLoRA curve (runs/production-20261207-030422): baseline 4.4%, base general 55.0%
    curve = [pt(0.5, 0.05625, 0.4719), pt(0.75, 0.1875, 0.3939), pt(1.0, 0.24375, 0.3377)]
    old = decisions.operating_point(curve, 0.5498, 0.04375)
    assert old["alpha"] == 1.0 and "the best NBA validation score" in old["reason"]
    assert old == decisions.operating_point(curve, 0.5498, 0.04375, share=1.0)
    op = decisions.operating_point(curve, 0.5498, 0.04375, share=0.5)
    # 0.75 holds 14.4 of the best's 20.0 points of lead (0.5 only 1.2) and keeps more than alpha 1
    assert op["alpha"] == 0.75 and "holding 50% of the best point's lead" in op["reason"] + op["policy"]
    assert decisions.operating_point(curve, 0.5498, 0.04375, share=0.75)["alpha"] == 1.0  # 72% of the lead: short
    assert decisions.operating_point(curve, 0.5498, 0.04375, share=0.05)["alpha"] == 0.5  # every point above it
    # the first two rules come first, whatever the share
    keeping = [pt(0.75, 0.20, 0.50), pt(1.0, 0.30, 0.40)]
    assert decisions.operating_point(keeping, 0.5, 0.05, share=0.5)["alpha"] == 0.75
    # no point above the baseline: the best NBA score, as before
    flat = [pt(0.5, 0.02, 0.50), pt(1.0, 0.03, 0.40)]
    assert decisions.operating_point(flat, 0.5, 0.05, share=0.5)["alpha"] == 1.0
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="must be in \\(0, 1\\]"):
            decisions.operating_point(curve, 0.5, 0.05, share=bad)


def test_general_validation_marks_the_questions_drawn_like_the_test():
    from nbatune.data import retention

    recs = retention.records("", "validation")
    like = retention.like_test(recs)
    assert len(like) == len(recs) and sum(like) == len(recs) - len(retention.validation_only())
    assert all(like[:sum(like)]) and not any(like[sum(like):])  # the bank comes last
    assert all(retention.like_test(retention.records("", "test")))


def test_qlora_starts_from_the_4bit_base_measured_beside_the_base_and_its_forgetting_splits_in_two(run):
    """QLoRA's alpha 0 is the 4-bit base, not the base: it is measured in the base's job (validation point and
    retention test), its retention answers are those of the saved QLoRA at alpha 0, and QLoRA's forgetting splits
    into the 4-bit base's and training's, adding up to the whole."""
    cmp, res = run
    q = res["base"]["quantized_base"]
    assert q["method"] == "qlora" and set(q["validation"]) == {"alpha", "nba_validation", "general_validation",
                                                                "general_known", "general_stratified"}  # against the base
    model, _, rt, _ = load_from_run(res["run_dir"], "qlora", alpha=0.0)
    again = evaluation.answer_and_score(model, cmp.tokenizer, cmp.retention_records, rt, cmp.cfg.eval,
                                        cmp.retention_pools, "retention", evaluation.RETENTION_MAX_NEW_TOKENS)
    assert again["predictions"] == q["retention"]["predictions"] and any(again["predictions"])
    forgot = res["comparison"]["forgot"]
    split = forgot["qlora"]["split"]
    assert split["quantization"]["diff"] + split["training"]["diff"] == pytest.approx(forgot["qlora"]["diff"])
    assert split["quantized_base"] == q["retention"]["accuracy"]
    assert all("split" not in forgot[m] for m in ("full", "lora", "dora"))
    assert "QLoRA (4-bit)'s forgetting splits into its 4-bit base's" in res["comparison"]["recommendation"]
    report = (Path(res["run_dir"]) / "report.md").read_text()
    assert "| 4-bit base (untrained: alpha 0 of QLoRA (4-bit)) | 0 | not measured |" in report
    assert res["phases"]["base"]["quantized_base_s"] == q["seconds"] > 0


def test_results_keep_each_phases_wall_time(run):
    from nbatune.report import phases_line

    _, res = run
    ph = res["phases"]
    assert set(ph) == {"base", *METHODS, "report"}
    for m in METHODS:
        p = ph[m]
        assert p["train_s"] == res[m]["train_seconds"] and p["eval_s"] == res[m]["eval_seconds"]
        # the retention test's answers have their own phase, both evaluations' where the point is not alpha 1
        assert p["retention_s"] == res[m]["retention_seconds"] >= res[m]["retention"]["seconds"] > 0
        assert (p["retention_s"] > res[m]["retention"]["seconds"]) == bool(res[m]["trained"])
        assert p["curve_s"] > 0 and p["other_s"] >= 0
        assert p["load_s"] == res[m]["load_seconds"] > 0 and p["save_s"] == res[m]["save_seconds"] > 0
        assert p["learning_curve_s"] == res[m]["learning_curve_seconds"] > 0  # measured at the last step
        assert p["train_setup_s"] == res[m]["train_setup_seconds"] > 0
        assert p["wall_s"] == pytest.approx(sum(v for k, v in p.items() if k != "wall_s"))
    assert ph["base"]["few_shot_s"] > 0 and ph["base"]["load_s"] > 0 and ph["base"]["retention_s"] > 0
    assert ph["base"]["curve_s"] == res["base"]["validation"]["seconds"] > 0  # the curves' shared origin
    assert sum(p["wall_s"] for k, p in ph.items() if k != "report") <= res["total_seconds"]
    line = phases_line(res)
    assert line.startswith("Wall time: base (untouched)") and "report" in line and "total" in line
    longer = {**res, "phases": {**ph, "full": {**ph["full"], "retention_s": 7.0}}}  # the tiny run's are under 0.5 s
    assert "retention 7" in phases_line(longer)


def test_replay_with_a_base_that_answers_nothing_trains_without_it(tiny_model_dir, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("NBATUNE_CACHE", str(tmp_path / "cache"))
    plain = Comparison(tiny_config(tiny_model_dir, tmp_path / "a")).setup()
    with caplog.at_level(logging.WARNING, logger="nbatune.replay"):
        cmp = Comparison(tiny_config(tiny_model_dir, tmp_path / "b", **{"train.replay_share": 0.2})).setup()
    assert "training without replay" in caplog.text and not cmp.replay_info["rows"]
    assert cmp.rows_for("lora") == plain.train_rows


def test_teacher_forced_exact_match_batches_rows_by_length_and_scores_each_as_alone(run):
    """The curve's NBA measure sorts rows by length (half the padding, half the time on real validation rows);
    that must not change which rows count as hits."""
    import statistics

    cmp, res = run
    model, tok, rt, _ = load_from_run(res["run_dir"], "full", alpha=1.0)
    rows = cmp.select_rows[::-1]
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    batched = evaluation.teacher_forced_exact_match(model, tok, rows, rt, batch_size=4)
    hook.remove()
    alone = statistics.mean(evaluation.teacher_forced_exact_match(model, tok, [r], rt, batch_size=1) for r in rows)
    assert batched == pytest.approx(alone) and 0 < alone < 1
    by_length = sorted(r["length"] for r in rows)
    assert widths == [(len(by_length[s:s + 4]), max(by_length[s:s + 4])) for s in range(0, len(rows), 4)]


@pytest.mark.parametrize("packed", [True, False])
def test_collators_put_each_replay_distribution_on_its_answer_tokens(packed):
    from nbatune.data.tokenize import IGNORE, PackedCollator, PadCollator

    nba = {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE, IGNORE, 7, 8, 9], "soft_ids": [], "soft_probs": []}
    rep = {"input_ids": [1, 2, 3, 4], "labels": [IGNORE, IGNORE, 3, 4],
           "soft_ids": [[3, 11], [4, 12]], "soft_probs": [[0.75, 0.25], [0.5, 0.5]]}
    collate = PackedCollator(0, 16) if packed else PadCollator(0)
    plain = collate([{k: v for k, v in nba.items() if not k.startswith("soft")}] * 2)
    assert "soft_ids" not in plain and "soft_ids" not in collate([nba, nba])  # without replay: today's batch
    out = collate([nba, rep])
    labels, sid, sp = out["labels"], out["soft_ids"], out["soft_probs"]
    at = {int(labels[r, c]): (sid[r, c].tolist(), sp[r, c].tolist()) for r, c in (labels != IGNORE).nonzero().tolist()}
    assert sorted(at) == [3, 4, 7, 8, 9]
    assert all(at[t] == ([t, 0], [1.0, 0.0]) for t in (7, 8, 9))  # an NBA answer token: its label alone
    assert at[3] == ([3, 11], [0.75, 0.25]) and at[4] == ([4, 12], [0.5, 0.5])  # a replay token: the base's
    assert float(sp[labels == IGNORE].sum()) == 0.0


def test_replay_toward_the_bases_distribution_trains_and_its_top_token_is_the_replayed_answer(answering_model_dir,
                                                                                               tmp_path, monkeypatch):
    from nbatune import replay

    monkeypatch.setenv("NBATUNE_CACHE", str(tmp_path / "cache"))
    cmp = Comparison(tiny_config(answering_model_dir, tmp_path, evaluate_base=False, methods=["lora"],
                                 **{**ANSWERING, "train.replay_share": 0.2, "train.replay_targets": "distribution",
                                    "eval.retention": False})).setup()
    soft = [r for r in cmp.rows_for("lora") if r["soft_ids"]]
    assert soft and cmp.replay_info["targets"] == "distribution"
    for r in soft:
        answer = [t for t in r["labels"] if t != -100]
        assert len(r["soft_ids"]) == len(answer) and all(len(k) == replay.TOP_K for k in r["soft_ids"])
        assert all(abs(sum(p) - 1) < 1e-5 for p in r["soft_probs"])
    # the base's own greedy answers: its most likely token is the answer token nearly everywhere (a re-tokenized
    # answer may split differently from the generated tokens)
    tops = [ids[0] == t for r in soft for ids, t in zip(r["soft_ids"], [t for t in r["labels"] if t != -100])]
    assert sum(tops) / len(tops) > 0.9
    res = cmp._run_method("lora", cmp.cfg.seed, save=False)
    assert res.status.value == "ok", res.error


def test_each_technique_trains_on_its_own_replay_share(answering_model_dir, tiny_model_dir, tmp_path, monkeypatch):
    """``train.replay_share`` as a table: each technique's rows carry its share of replay rows (the NBA rows the
    same for all), the unnamed get 0.2, and a share out of range or a technique that does not exist is refused."""
    from nbatune.config import ConfigError

    monkeypatch.setenv("NBATUNE_CACHE", str(tmp_path / "cache"))
    cmp = Comparison(tiny_config(answering_model_dir, tmp_path, methods=["full", "lora", "qlora"],
                                 **{**ANSWERING, "train.replay_share": {"lora": 0.0, "qlora": 0.4}})).setup()
    assert cmp.replay_rows
    nba = len(cmp.train_rows)
    assert cmp.rows_for("lora") == cmp.train_rows
    for m, share in (("full", 0.2), ("qlora", 0.4)):
        rows = cmp.rows_for(m)
        assert rows[:nba] == cmp.train_rows and len(rows) - nba == round(share / (1 - share) * nba)
        assert cmp.replay_info["rows"][m] == len(rows) - nba
    assert cmp.rows_for("full") is cmp.rows_for("full")  # mixed once per share
    for bad, msg in (({"qlora": 0.6}, "train.replay_share.qlora: 0.6 must be a number in [0, 0.5]"),
                     ({"nosuch": 0.1}, "train.replay_share.nosuch: unknown method")):
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            Comparison(tiny_config(tiny_model_dir, tmp_path / "bad", **{"train.replay_share": bad}))


def test_the_bench_script_scores_a_point_on_test_as_the_run_scored_it(run, tmp_path):
    """``bench/point_on_test.py``, whose figures judge a policy change (another point's test answers), scores the
    run's chosen point as the run itself did."""
    import json
    import subprocess
    import sys

    _, res = run
    alpha = res["lora"]["operating_point"]["alpha"]
    out = tmp_path / "points.json"
    done = subprocess.run([sys.executable, "bench/point_on_test.py", res["run_dir"], "lora", str(alpha), "--json",
                           str(out)], capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    point = json.loads(out.read_text())["points"][f"{res['run_dir']}|lora|{alpha:g}"]
    assert point["correct"] == res["lora"]["correct"]
    assert point["accuracy"] == res["lora"]["accuracy"] and point["retention"] == res["lora"]["retention"]["accuracy"]
