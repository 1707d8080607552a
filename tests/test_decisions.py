"""The rules every conclusion rests on, on synthetic results whose answer is known: "learned" (above the
strongest baseline), "real" (paired test after Holm, interval and seed spread, all three), an unknown
seed spread, and the recommendation's sentence for each case."""

from __future__ import annotations

import statistics

import pytest

from nbatune import decisions
from nbatune.decisions import comparison, mcnemar

N = 100


def flags(*runs: tuple[int, bool]) -> list[bool]:
    """``flags((40, True), (60, False))``: 40 right then 60 wrong, in that order."""
    out = [v for n, v in runs for _ in range(n)]
    assert len(out) == N
    return out


def tech(correct: list[bool], seeds: list[float] | None = None, peak_mib: int = 1000, tps: float = 100.0,
         saved_mib: int = 10) -> dict:
    acc = sum(correct) / len(correct)
    seeds = seeds or [acc]
    return {"status": "ok", "correct": correct, "accuracy": acc, "accuracy_mean": statistics.mean(seeds),
            "repeats": [{"seed": i, "accuracy": a} for i, a in enumerate(seeds)],
            "peak_memory_bytes": peak_mib * 2**20, "tokens_per_second": tps, "saved_bytes": saved_mib * 2**20}


def run(baselines: dict[str, list[bool]] | None = None, **techniques) -> dict:
    lines = {k: {"accuracy": sum(v) / len(v), "correct": v} for k, v in (baselines or {}).items()}
    return {"baselines": lines, **techniques}


# a pair that the paired test only just tells apart: 40 both right, 14 only A, 4 only B (p = 0.031)
A_ONLY = flags((40, True), (14, True), (4, False), (42, False))
B_ONLY = flags((40, True), (14, False), (4, True), (42, False))
SEEDS_A, SEEDS_B = [0.54, 0.55, 0.53], [0.44, 0.45, 0.43]


def test_the_marginal_pair_is_what_the_tests_below_assume():
    assert mcnemar(A_ONLY, B_ONLY) == pytest.approx(2 * (1 + 18 + 153 + 816 + 3060) / 2**18)
    pair = comparison(run(full=tech(A_ONLY, SEEDS_A), lora=tech(B_ONLY, SEEDS_B)))["pairs"]["lora-vs-full"]
    assert pair["diff"] == pytest.approx(-0.10) and pair["ci95"][1] < 0  # the interval excludes 0


def test_learned_means_the_interval_clears_the_strongest_baseline_not_the_weakest():
    few_shot = flags((20, True), (80, False))
    trivial = flags((10, True), (90, False))
    clear = flags((60, True), (40, False))
    level = flags((20, True), (80, False))  # ties few-shot, beats trivial by 10 points
    barely = flags((22, True), (78, False))  # 2 more right than few-shot: inside the noise
    cmp = comparison(run({"trivial": trivial, "few_shot": few_shot}, full=tech(clear), lora=tech(level),
                         qlora=tech(barely)))
    assert cmp["strongest_baseline"] == "few_shot"
    learned = cmp["learned"]
    assert learned["full"]["learned"] and learned["full"]["vs"] == "few_shot"
    assert learned["full"]["diff"] == pytest.approx(0.40)
    assert not learned["lora"]["learned"] and learned["lora"]["diff"] == 0
    assert not learned["qlora"]["learned"] and learned["qlora"]["ci95"][0] <= 0 < learned["qlora"]["diff"]
    rec = cmp["recommendation"]
    assert "Strongest baseline: base few-shot at 20.0%" in rec
    assert "full fine-tuning 60.0% (+40.0%" in rec and "LoRA 20.0% (+0.0%" in rec
    assert rec.count("NOT above it") == 2


def test_a_difference_is_real_when_test_interval_and_seeds_all_agree():
    cmp = comparison(run(full=tech(A_ONLY, SEEDS_A), lora=tech(B_ONLY, SEEDS_B)))
    pair = cmp["pairs"]["lora-vs-full"]
    assert pair["p_holm"] == pytest.approx(pair["p_mcnemar"])  # one pair: Holm changes nothing
    assert pair["p_holm"] < 0.05
    assert not pair["within_noise"] and pair["beyond_seed_spread"] and pair["real"]
    assert "exceeds both the paired-test noise and the seed spread" in cmp["recommendation"]
    assert "Best accuracy: full fine-tuning (54.0%)" in cmp["recommendation"]


def test_not_real_when_only_the_seed_spread_disagrees():
    wide = [0.44, 0.05, 0.60]  # same test answers, but a technique whose seeds scatter
    pair = comparison(run(full=tech(A_ONLY, SEEDS_A), lora=tech(B_ONLY, wide)))["pairs"]["lora-vs-full"]
    assert pair["p_holm"] < 0.05 and not pair["within_noise"]
    assert pair["seeds"]["spread"] == pytest.approx(2 * statistics.stdev(wide))
    assert pair["beyond_seed_spread"] is False and pair["real"] is False


def test_not_real_when_only_the_interval_disagrees(monkeypatch):
    real_difference = decisions.paired_difference
    monkeypatch.setattr(decisions, "paired_difference", lambda a, b: {**real_difference(a, b), "within_noise": True})
    pair = comparison(run(full=tech(A_ONLY, SEEDS_A), lora=tech(B_ONLY, SEEDS_B)))["pairs"]["lora-vs-full"]
    assert pair["p_holm"] < 0.05 and pair["beyond_seed_spread"]
    assert pair["real"] is False


def test_not_real_when_only_holm_over_the_pairs_made_disagrees():
    """The same pair is real among two techniques and not among three: Holm multiplies the smallest of
    three p-values by three (0.031 -> 0.093)."""
    three = comparison(run(full=tech(A_ONLY, SEEDS_A), lora=tech(B_ONLY, SEEDS_B), qlora=tech(A_ONLY, SEEDS_A)))
    assert three["comparisons_made"] == 3
    pair = three["pairs"]["lora-vs-full"]
    assert pair["p_holm"] == pytest.approx(3 * pair["p_mcnemar"])
    assert not pair["within_noise"] and pair["beyond_seed_spread"]
    assert pair["real"] is False
    assert three["pairs"]["qlora-vs-full"]["p_mcnemar"] == 1.0  # identical answers


def test_one_seed_leaves_the_spread_unknown_and_no_difference_real():
    far_apart = flags((90, True), (10, False)), flags((10, True), (90, False))
    cmp = comparison(run(full=tech(far_apart[0]), lora=tech(far_apart[1], peak_mib=500)))
    pair = cmp["pairs"]["lora-vs-full"]
    assert pair["p_holm"] < 1e-10 and not pair["within_noise"]
    assert pair["seeds"] is None and pair["beyond_seed_spread"] is None and pair["real"] is False
    rec = cmp["recommendation"]
    assert "Its lead over LoRA is not established (one training seed, so the seed spread is unknown" in rec
    assert "prefer" not in rec  # LoRA is cheaper but answers far worse on the same questions


def test_a_cheap_technique_below_the_strongest_baseline_is_never_the_one_preferred():
    """The 2026-12-05 eleven-technique run recommended freeze (2.8%, under the 3-shot baseline's 7.2%) over full
    fine-tuning (38.8%) because with one seed no lead was established; only a technique the paired test cannot
    tell from the best, and that learned something, may stand in for it."""
    best, worse = flags((40, True), (60, False)), flags((3, True), (97, False))
    cmp = comparison(run({"few_shot": flags((7, True), (93, False))},
                         full=tech(best, peak_mib=5000), freeze=tech(worse, peak_mib=3000),
                         lora=tech(best, peak_mib=4000)))
    rec = cmp["recommendation"]
    assert not cmp["learned"]["freeze"]["learned"]
    assert "prefer LoRA" in rec and "prefer freeze" not in rec


def test_when_quality_is_not_told_apart_the_cheaper_technique_is_preferred():
    same = flags((50, True), (50, False))
    cmp = comparison(run(full=tech(same, [0.5, 0.52, 0.48], peak_mib=4000, saved_mib=500),
                         lora=tech(same, [0.49, 0.51, 0.5], peak_mib=3000, saved_mib=20, tps=300)))
    rec = cmp["recommendation"]
    assert "is not established (paired test (Holm-adjusted) and seed spread)" in rec
    assert "prefer LoRA: less peak memory (3,000 MiB vs 4,000 MiB) and a 20 MiB artefact" in rec
    assert cmp["winners"] == {"quality": "full", "memory": "lora", "speed": "lora", "disk": "lora"}


def test_a_cheaper_technique_that_forgets_more_is_not_the_one_preferred():
    """The 2026-12-05 default run preferred QLoRA for its memory over full fine-tuning and LoRA, all three tied on
    the NBA questions, though QLoRA kept 50% of the general questions where the others kept 63-65%."""
    same = flags((30, True), (70, False))
    kept, lost = {"correct": flags((65, True), (35, False))}, {"correct": flags((45, True), (55, False))}
    cmp = comparison(run(full=tech(same, peak_mib=4000) | {"retention": kept},
                         lora=tech(same, peak_mib=2500) | {"retention": kept},
                         qlora=tech(same, peak_mib=2400) | {"retention": lost}))
    rec = cmp["recommendation"]
    assert "prefer LoRA" in rec and "prefer QLoRA" not in rec
    assert "Not preferred although cheaper, for forgetting more of the general questions than full fine-tuning: " \
           "QLoRA (4-bit) (-20.0%" in rec
    cmp = comparison(run(full=tech(same, peak_mib=4000) | {"retention": kept},
                         qlora=tech(same, peak_mib=2400) | {"retention": kept}))
    assert "prefer QLoRA" in cmp["recommendation"] and "Not preferred" not in cmp["recommendation"]


def test_the_quality_winner_is_chosen_on_the_seed_mean_not_one_seed():
    better_once = flags((60, True), (40, False))
    steady = flags((55, True), (45, False))
    cmp = comparison(run(full=tech(better_once, [0.60, 0.40, 0.41]), lora=tech(steady, [0.55, 0.56, 0.54])))
    assert cmp["winners"]["quality"] == "lora"


def test_a_technique_that_failed_is_named_and_the_others_still_compared():
    res = run({"trivial": flags((10, True), (90, False))}, full=tech(A_ONLY), lora=tech(B_ONLY),
              qlora={"status": "failed", "error": "RuntimeError: DefaultCPUAllocator: can't allocate memory"})
    cmp = comparison(res)
    assert set(cmp["learned"]) == {"full", "lora"} and list(cmp["pairs"]) == ["lora-vs-full"]
    assert cmp["comparisons_made"] == 1
    assert cmp["recommendation"].endswith(
        "Not compared: QLoRA (4-bit) failed (RuntimeError: DefaultCPUAllocator: can't allocate memory).")


def test_no_technique_finished_says_so_and_names_each_failure():
    res = run(full={"status": "failed", "error": "NonFiniteLossError: step 3"},
              lora={"status": "interrupted", "error": "interrupted (Ctrl-C)"})
    rec = comparison(res)["recommendation"]
    assert rec.startswith("No technique finished")
    assert "full fine-tuning failed (NonFiniteLossError: step 3)" in rec and "LoRA interrupted" in rec


def test_forgetting_is_the_base_minus_the_technique_on_the_retention_set():
    base_ret = flags((70, True), (30, False))
    kept = flags((65, True), (35, False))  # 5 fewer right than the base
    res = run({"trivial": flags((10, True), (90, False))},
              base={**tech(flags((1, True), (99, False))), "retention": {"accuracy": 0.70, "correct": base_ret}},
              full={**tech(A_ONLY), "retention": {"accuracy": 0.65, "correct": kept}},
              lora=tech(B_ONLY))  # no retention measured: no forgetting figure, not a zero
    cmp = comparison(res)
    assert set(cmp["forgot"]) == {"full"}
    f = cmp["forgot"]["full"]
    assert f["diff"] == pytest.approx(0.05) and (f["base"], f["after"]) == (0.70, 0.65)
    assert f["ci95"][0] <= 0.05 <= f["ci95"][1]
    assert cmp["baselines"] == {"trivial": 0.10}
    assert (f"Forgetting (general questions, base minus technique): full fine-tuning +5.0% "
            f"({f['ci95'][0]:+.1%} to {f['ci95'][1]:+.1%}).") in cmp["recommendation"]
    assert "base" not in cmp["learned"] and set(cmp["learned"]) == {"full", "lora"}
