"""The built-in dataset and user datasets."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from nbatune.config import DataConfig, ModelConfig
from nbatune.data import builtin
from nbatune.data.loading import DataError, load_splits
from nbatune.data.tokenize import tokenize_records


@pytest.fixture(scope="module")
def default_build():
    return builtin.build()


def test_default_build_meets_the_sizes(default_build):
    assert len(default_build["train"]) >= 3000 and len(default_build["test"]) >= 300
    cats = {e.category for e in default_build["test"]}
    assert {"champion", "finals_mvp", "mvp", "true_shooting", "game_score", "win_pct", "definition_abbrev"} <= cats


def test_size_knob_is_exact_and_explanations_are_training_only():
    small = builtin.build(train_size=50, val_size=5, test_size=7)
    assert [len(small[s]) for s in ("train", "validation", "test")] == [50, 5, 7]
    full = builtin.build()
    assert sum(e.category == "metric_caveat" for e in full["train"]) == len(builtin.CAVEATS) * 4
    assert not any(e.category in ("metric_caveat", "season_summary") for e in full["test"])


def test_build_is_byte_identical_for_the_same_seed(tmp_path):
    from nbatune import dataset_card

    a, b = (dataset_card.write(builtin.build(seed=3), tmp_path / d) for d in "ab")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "DATASET_CARD.md"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "test.jsonl").read_bytes() != builtin.write(builtin.build(seed=4), tmp_path / "c").joinpath(
        "test.jsonl").read_bytes()


def test_no_question_text_or_stat_line_is_shared_between_train_and_test(default_build):
    train_q = {(e.instruction, e.input) for e in default_build["train"]}
    train_lines = {e.input for e in default_build["train"] if e.input}
    assert len(train_lines) > 1000
    for split in ("validation", "test"):
        for e in default_build[split]:
            assert (e.instruction, e.input) not in train_q
            assert not e.input or e.input not in train_lines
    # and the question wording itself is held out, not just the combination
    train_instr = {e.instruction for e in default_build["train"]}
    assert not train_instr & {e.instruction for e in default_build["test"]}


def test_no_held_out_stat_line_appears_anywhere_in_training_under_any_task(default_build):
    text = "\n".join(f"{e.instruction}\n{e.input}\n{e.output}" for e in default_build["train"])
    lines = [e.input for s in ("validation", "test") for e in default_build[s] if e.input]
    assert len(lines) > 200 and not [x for x in lines if x in text]
    builtin.check_no_leakage(default_build)
    leaky = {**default_build, "test": default_build["test"] + [default_build["train"][0]]}
    with pytest.raises(AssertionError, match="leaks into test"):
        builtin.check_no_leakage(leaky)
    hidden = default_build["train"][[e.input != "" for e in default_build["train"]].index(True)]
    inside = builtin.Example("x", "other_task", "A new question", hidden.input, "a", "a", "text", 0, "k")
    with pytest.raises(AssertionError, match="leaks into validation"):  # the same line under another task
        builtin.check_no_leakage({**default_build, "validation": [inside]})


def test_no_category_has_an_answer_a_constant_could_ride(default_build):
    from collections import Counter

    for split in ("validation", "test"):
        rows = [e for e in default_build[split] if e.answer_type != "number"]
        sizes = Counter(e.category for e in rows)
        for (cat, answer), k in Counter((e.category, e.answer) for e in rows).items():
            assert k <= (builtin.MAX_SAME_ANSWER if cat in builtin.FACT_PHRASINGS else builtin.DEFINITION_HELDOUT)
            assert split != "test" or k / sizes[cat] <= 0.15, (cat, answer, k, sizes[cat])


def test_every_history_fact_is_taught_in_training(default_build):
    taught = {e.key for e in default_build["train"]}
    assert {e.key for e in default_build["test"] if e.answer_type == "name" and ":" in e.key} <= taught | {
        e.key for e in default_build["test"] if e.category.startswith("definition")}


# ---- independent recomputation of every computed answer ------------------------------------------

def _parse(text: str) -> dict:
    """Read any subset of box-score stats back out of the shown text, independently of the generator."""
    out = {}
    for made, att, kind in re.findall(r"(\d+)-(\d+) (FG|3P|FT)", text):
        k = {"FG": "fg", "3P": "tp", "FT": "ft"}[kind]
        out[k + "m"], out[k + "a"] = int(made), int(att)
    for num, kind in re.findall(r"(-?\d+) (OPP PTS|team MIN|MIN|PTS|OREB|DREB|AST|STL|BLK|TOV|PF)", text):
        out[{"OPP PTS": "opp", "team MIN": "mins"}.get(kind, kind.lower())] = int(num)
    if "pts" in out and "fgm" in out and "tpm" in out and "ftm" in out:
        assert out["pts"] == 2 * out["fgm"] + out["tpm"] + out["ftm"], text
    return out


def _expected(cat: str, text: str) -> float:
    if cat == "win_pct":
        w, l = map(int, re.match(r"(\d+)-(\d+) record", text).groups())
        return w / (w + l)
    if cat in ("possessions", "offensive_rating", "defensive_rating", "net_rating", "pace"):
        t = _parse(text)
        poss = t["fga"] - t["oreb"] + t["tov"] + 0.44 * t["fta"]
        return {"possessions": lambda: poss, "offensive_rating": lambda: 100 * t["pts"] / poss,
                "defensive_rating": lambda: 100 * t["opp"] / poss,
                "net_rating": lambda: 100 * (t["pts"] - t["opp"]) / poss,
                "pace": lambda: 240 * poss / t["mins"]}[cat]()
    p = _parse(text)
    formulas = {
        "true_shooting": lambda: 50 * p["pts"] / (p["fga"] + 0.44 * p["fta"]),
        "effective_fg": lambda: 100 * (p["fgm"] + p["tpm"] / 2) / p["fga"],
        "points_per_shot": lambda: p["pts"] / p["fga"],
        "assist_turnover": lambda: p["ast"] / p["tov"],
        "game_score": lambda: p["pts"] + 0.4 * p["fgm"] - 0.7 * p["fga"] - 0.4 * (p["fta"] - p["ftm"])
        + 0.7 * p["oreb"] + 0.3 * p["dreb"] + p["stl"] + 0.7 * p["ast"] + 0.7 * p["blk"] - 0.4 * p["pf"] - p["tov"],
    }
    return formulas[cat]()


def test_every_computed_answer_recomputes_from_its_stat_line(default_build):
    """The answer is a formula with the line's numbers; computed by the scorer's own parser it must give
    the value an independent implementation gets from the shown line (to 1e-9), and the value quoted at
    the usual precision must pass the tolerance too, while one quoted 1.5 rounding units off must not
    (a tolerance is half a unit)."""
    from nbatune.scoring import scorer

    checked = 0
    for rows in default_build.values():
        for e in rows:
            if e.answer_type != "number":
                continue
            want = _expected(e.category, e.key)
            assert scorer().value_of(e.answer) == pytest.approx(want, rel=1e-9, abs=1e-9), (e.category, e.answer)
            quoted = next(t.fmt for t in builtin.COMPUTE_TASKS if t.category == e.category).format(want)
            assert scorer().is_correct(quoted, e.answer, "number", e.tolerance), (quoted, e.answer)
            for off in (want + 3 * e.tolerance, want - 3 * e.tolerance):
                wrong = next(t.fmt for t in builtin.COMPUTE_TASKS if t.category == e.category).format(off)
                assert not scorer().is_correct(wrong, e.answer, "number", e.tolerance), (wrong, e.answer)
            checked += 1
    assert checked > 1000


def test_stat_lines_are_internally_consistent(default_build):
    for e in default_build["train"]:
        if e.category == "game_score":
            p = _parse(e.key)  # also asserts PTS = 2*FGM + 3PM + FTM
            assert p["fgm"] <= p["fga"] and p["tpm"] <= p["tpa"] <= p["fga"] and p["ftm"] <= p["fta"]
            assert p["tpm"] <= p["fgm"]


def test_every_format_states_the_same_stat_line_as_its_box_score_key(default_build):
    """Whatever format a question shows its line in, parsing it gives every number the formula needs, equal
    to the line's box-score key (from which the answer is recomputed above); shuffled order and extra
    fields change nothing."""
    from nbatune.data import statlines

    by_format = Counter()
    for rows in default_build.values():
        for e in rows:
            if not e.format:
                continue
            shown, key = statlines.parse(e.input, e.format), statlines.parse(e.key, "box")
            assert key and {f: shown.get(f) for f in key} == key, (e.format, e.input, e.key)
            by_format[e.format] += 1
    assert set(by_format) == set(statlines.FORMATS) and min(by_format.values()) >= 60


def test_a_fixed_line_round_trips_through_every_format():
    import random

    from nbatune.data import analytics as A, statlines

    rng = random.Random(5)
    line = A.random_player_line(rng)
    fields = list(A.PLAYER_FIELDS)
    for fmt in statlines.FORMATS:
        got = statlines.parse(statlines.render(line, fields, fmt, rng), fmt)
        assert got == {f: statlines.values(line, f) for f in fields}, fmt
    assert "7/14" in statlines.render(A.PlayerLine(30, 7, 14, 1, 3, 3, 5, 0, 4, 2, 1, 0, 2, 3), ["fg"], "kv", rng)
    with pytest.raises(ValueError, match="allowed: box, prose"):
        statlines.render(line, fields, "xml", rng)


def test_the_unseen_format_is_only_in_test_and_tagged(default_build):
    unseen = [e for e in default_build["test"] if e.unseen]
    assert len(unseen) >= 60 and {e.format for e in unseen} == {builtin.UNSEEN_FORMAT}
    assert {e.category for e in unseen} == {t.category for t in builtin.COMPUTE_TASKS}
    for split in ("train", "validation"):
        assert not any(e.unseen or e.format == builtin.UNSEEN_FORMAT for e in default_build[split])
    assert not any(e.format == builtin.UNSEEN_FORMAT for e in default_build["test"] if not e.unseen)
    from nbatune import dataset_card

    assert f"| {builtin.UNSEEN_FORMAT} (**unseen**) | 0 | 0 | {len(unseen)} |" in dataset_card.card(default_build)
    leaky = {**default_build, "train": default_build["train"] + unseen[:1]}
    with pytest.raises(AssertionError, match="unseen format into train"):
        builtin.check_no_leakage(leaky)
    other = builtin.build(train_size=200, val_size=20, test_size=60, unseen_format="prose")
    assert {e.format for e in other["test"] if e.unseen} == {"prose"}
    assert not any(e.format == "prose" for e in other["train"])
    with pytest.raises(ValueError, match="unseen_format.*allowed"):
        builtin.build(unseen_format="xml")


def test_a_stat_line_in_another_format_still_counts_as_a_leak(default_build):
    """The same test line written in training in another format, under another question: found by its key."""
    e = next(e for e in default_build["test"] if e.format and not e.unseen)
    copy = builtin.Example("x", e.category, "Another question?", "reworded", e.output, e.answer, "number",
                           e.tolerance, e.key, "prose")
    with pytest.raises(AssertionError, match="leaks into test"):
        builtin.check_no_leakage({**default_build, "train": default_build["train"] + [copy]})


def test_config_formats_are_the_builders_formats():
    import typing

    from nbatune.config import DataConfig
    from nbatune.data import statlines

    assert typing.get_args(typing.get_type_hints(DataConfig)["unseen_format"]) == statlines.FORMATS


def test_scores_split_seen_and_unseen_formats():
    from nbatune.scoring import score

    recs = [{"category": c, "answer": "1", "answer_type": "number", "tolerance": 0.0, "unseen": u}
            for c, u in (("a", False), ("a", False), ("b", True), ("b", True), ("a", True))]
    res = score(recs, ["1", "2", "1", "2", "2"])
    assert res["accuracy"] == pytest.approx(2 / 5)
    seen, unseen = res["formats"]["seen"], res["formats"]["unseen"]
    assert (seen["accuracy"], seen["n"], unseen["n"]) == (0.5, 2, 3)
    assert unseen["per_category"]["b"]["accuracy"] == 0.5 and unseen["per_category"]["a"]["accuracy"] == 0.0
    assert "formats" not in score(recs[:2], ["1", "1"])


# ---- user datasets --------------------------------------------------------------------------------

ROWS = {
    "alpaca": [{"instruction": f"Who won title {i}?", "input": "", "output": f"Team {i}"} for i in range(12)],
    "sharegpt": [{"conversations": [{"from": "human", "value": f"Q{i}?"}, {"from": "gpt", "value": f"A{i}"}]}
                 for i in range(12)],
    "messages": [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}"}]}
                 for i in range(12)],
    "prompt_completion": [{"prompt": f"Q{i}?", "completion": f"A{i}"} for i in range(12)],
}


def _write(rows, path):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        ds.to_csv(str(path))
    elif path.suffix == ".parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", list(ROWS))
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", "saved"])
def test_user_formats_load_with_a_carved_test_split(fmt, suffix, tmp_path, caplog):
    path = _write(ROWS[fmt], tmp_path / f"data{suffix if suffix != 'saved' else ''}")
    splits = load_splits(DataConfig(source=str(path), test_fraction=0.25, seed=1), ModelConfig())
    assert len(splits["test"]) == 3 and len(splits["validation"]) >= 1
    assert sum(len(s) for s in splits.values()) == 12
    for rec in splits["train"]:
        assert rec["messages"][0]["role"] == "system" and rec["messages"][-1]["role"] == "assistant"
    assert "carved" in caplog.text
    again = load_splits(DataConfig(source=str(path), test_fraction=0.25, seed=1), ModelConfig())
    assert [r["id"] for r in again["test"]] == [r["id"] for r in splits["test"]]


def test_csv_alpaca_loads(tmp_path):
    path = _write(ROWS["alpaca"], tmp_path / "d.csv")
    splits = load_splits(DataConfig(source=str(path)), ModelConfig())
    assert splits["train"][0]["messages"][-1]["content"].startswith("Team")


@pytest.mark.parametrize("fmt,suffix", [(f, ".jsonl") for f in ROWS] + [("alpaca", s) for s in (".json", ".csv",
                                                                                                 ".parquet", "saved")])
def test_user_data_trains_through_setup(tiny_model_dir, tmp_path, fmt, suffix):
    from tests.helpers import tiny_config
    from nbatune.compare import Comparison

    path = _write(ROWS[fmt] * 3, tmp_path / f"d{suffix if suffix != 'saved' else ''}")
    cfg = tiny_config(tiny_model_dir, tmp_path, **{"data.source": str(path), "train.max_steps": 2,
                                                   "methods": ["lora"], "evaluate_base": False})
    res = Comparison(cfg).execute()
    assert res["lora"]["status"] == "ok", res["lora"]["error"]
    assert res["dataset"]["sizes"]["test"] == 4


@pytest.mark.parametrize("rows,needle", [
    ([{"question": "q", "reply": "a"}], "cannot tell the format from the columns ['question', 'reply']"),
    ([{"instruction": "q", "output": ""}] * 4, "row 0: column 'output' is empty"),
    ([{"conversations": [{"from": "alien", "value": "x"}]}] * 4, "unknown ShareGPT speaker 'alien'"),
    ([{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}] * 4,
     "must end with an assistant turn"),
])
def test_bad_user_rows_name_the_problem(rows, needle, tmp_path):
    path = _write(rows, tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=re.escape(needle)):
        load_splits(DataConfig(source=str(path)), ModelConfig())


def test_missing_file_and_unknown_type_are_clear(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_splits(DataConfig(source=str(tmp_path / "nope.jsonl")), ModelConfig())
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match="not a file type we read"):
        load_splits(DataConfig(source=str(tmp_path / "data.txt")), ModelConfig())


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_splits(DataConfig(source=str(tmp_path / "empty.jsonl")), ModelConfig())


def test_forced_format_must_fit_the_columns(tmp_path):
    path = _write(ROWS["alpaca"], tmp_path / "d.jsonl")
    with pytest.raises(DataError, match=r"missing column\(s\) \['messages'\]"):
        load_splits(DataConfig(source=str(path), format="messages"), ModelConfig())


def test_overlong_examples_are_counted_and_truncated_or_dropped(tiny_model_dir):
    from nbatune.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), ModelConfig())
    recs = load_splits(DataConfig(train_size=40, val_size=4, test_size=4, seed=0), ModelConfig())["train"]
    full, _ = tokenize_records(recs, tok, 10_000, "truncate", "train")
    lengths = sorted(r["length"] for r in full)
    cut = lengths[len(lengths) // 2]  # half the examples are longer than this
    longer = sum(n > cut for n in lengths)
    rows, stats = tokenize_records(recs, tok, cut, "truncate", "train")
    assert 0 < stats.truncated + stats.dropped == longer and all(len(r["input_ids"]) <= cut for r in rows)
    rows, stats = tokenize_records(recs, tok, cut, "drop", "train")
    assert stats.dropped == longer and stats.kept == len(rows) == len(recs) - longer


def test_everything_dropped_gives_a_counted_error(tiny_model_dir):
    from nbatune.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), ModelConfig())
    recs = load_splits(DataConfig(train_size=10, val_size=2, test_size=2, seed=0), ModelConfig())["train"]
    with pytest.raises(DataError, match=r"train dataset is empty after preprocessing \(10 dropped: "):
        tokenize_records(recs, tok, 16, "drop", "train")


def test_missing_chat_template_falls_back_to_chatml(tmp_path, caplog):
    from tests.helpers import tiny_tokenizer
    from nbatune.modeling import load_tokenizer

    tiny_tokenizer(chat_template=None).save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path), ModelConfig())
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                               add_generation_prompt=True)
    assert "no chat template" in caplog.text


def test_chat_template_override_from_a_string_or_a_file(tiny_model_dir, tmp_path):
    from nbatune.config import ConfigError, load_config
    from nbatune.modeling import load_tokenizer

    tpl = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" \
          "{% if add_generation_prompt %}[assistant] {% endif %}"
    (tmp_path / "t.jinja").write_text(tpl)
    for value in (tpl, str(tmp_path / "t.jinja")):
        tok = load_tokenizer(str(tiny_model_dir), ModelConfig(chat_template=value))
        assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True) == "[user] hi\n[assistant] "
    with pytest.raises(ConfigError, match="model.chat_template: .*neither a Jinja template"):
        load_config(None, [f"model.chat_template={tmp_path / 'missing.jinja'}"])


def test_multi_turn_data_learns_every_assistant_turn_by_default(tiny_model_dir):
    from nbatune.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), ModelConfig())
    rec = {"messages": [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "one"},
                        {"role": "user", "content": "second question"}, {"role": "assistant", "content": "two"}]}

    def learned(all_turns):
        row = tokenize_records([rec], tok, 1000, "truncate", "train", all_turns)[0][0]
        return tok.decode([x for x in row["labels"] if x != -100])

    assert "one" in learned(True) and "two" in learned(True) and "question" not in learned(True)
    assert "one" not in learned(False) and "two" in learned(False)


def test_peft_inits_that_need_extra_configs_are_refused_before_anything_runs():
    from nbatune.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="lora.init_lora_weights: 'loftq' is not supported"):
        load_config(None, ["lora.init_lora_weights=loftq"])
    assert load_config(None, ["lora.init_lora_weights=pissa_niter_4"]).lora.init_lora_weights == "pissa_niter_4"
