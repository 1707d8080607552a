"""The base's evaluation kept between runs (nbatune.basecache): read back only when everything it depends on is
the same, said so in the results, and measured again otherwise."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from nbatune import basecache
from nbatune.compare import Comparison
from nbatune.report import phases_line
from tests.helpers import tiny_config

BASE_KEYS = ("accuracy", "per_category", "formats", "predictions", "correct", "retention", "validation", "few_shot",
             "eval_loss")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBATUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "base-results"


def _cfg(model_dir, tmp_path, name, **over):
    return {**tiny_config(model_dir, tmp_path, methods=["lora"], **{"train.max_steps": 2, "eval.reuse_base": True,
                                                                      "eval.curve_alphas": [0.5], "eval.few_shot": 1,
                                                                      **over}),
            "run_name": name}


def test_a_second_run_reads_the_bases_evaluation_and_says_where_it_came_from(tiny_model_dir, tmp_path, cache, caplog):
    first = Comparison(_cfg(tiny_model_dir, tmp_path, "first")).execute()
    assert "reused_from" not in first["base"] and len(list(cache.glob("*.json"))) == 1
    with caplog.at_level(logging.INFO, logger="nbatune.compare"):
        again = Comparison(_cfg(tiny_model_dir, tmp_path, "again")).execute()
    assert "base: reused from" in caplog.text
    assert again["base"]["reused_from"]["run_dir"] == first["run_dir"]
    written = json.loads((Path(first["run_dir"]) / "results.json").read_text())  # JSON's lists, not tuples
    for k in BASE_KEYS:
        assert again["base"][k] == written["base"][k], k
    assert again["baselines"]["few_shot"] == written["baselines"]["few_shot"]
    assert again["baselines"]["zero_shot"] == written["baselines"]["zero_shot"]
    # the technique's curve starts at the reused origin, and the run's time says the base was not measured
    assert again["lora"]["operating_point"]["base_general_validation"] == first["base"]["validation"]["general_validation"]
    assert again["phases"]["base"]["reused_s"] == pytest.approx(first["phases"]["base"]["wall_s"])
    assert f"reused: {Path(first['run_dir']).name} measured it in" in phases_line(again)


def test_what_the_base_reads_or_runs_on_changing_measures_it_again(tiny_model_dir, tmp_path, cache):
    first = Comparison(_cfg(tiny_model_dir, tmp_path, "first"))
    first.execute()
    env = first.results["environment"]
    names = iter(range(100))

    def key(model_dir=tiny_model_dir, environment=env, **over):
        cmp = Comparison(_cfg(model_dir, tmp_path, f"k{next(names)}", **over)).setup()
        cmp.results = {"environment": environment}
        return cmp._base_key()

    k0 = first._base_key()
    assert key() == k0  # the same inputs, another Comparison: the same key
    assert key(**{"eval.keep_general": 0.5, "eval.keep_measure": "known", "eval.curve_alphas": [0.25],
                  "eval.curve_refine": 0, "eval.fallback_share": 0.5,
                  "eval.reuse_base": False}) == k0
    assert key(**{"eval.max_new_tokens": 9}) != k0
    assert key(**{"data.seed": 1}) != k0  # other test questions
    assert key(**{"model.system_prompt": "Be brief."}) != k0
    assert key(environment={**env, "versions": {**env["versions"], "torch": "0.0"}}) != k0
    assert key(environment={**env, "matmul": {**env["matmul"], "features": ["amx_bf16"]}}) != k0
    # the same files but one byte of the weights changed
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    weights = next(other.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert key(model_dir=other) != k0


def test_an_unreadable_entry_or_reuse_base_false_measures_the_base_again(tiny_model_dir, tmp_path, cache):
    Comparison(_cfg(tiny_model_dir, tmp_path, "first")).execute()
    entry = next(cache.glob("*.json"))
    entry.write_text("{not json")
    res = Comparison(_cfg(tiny_model_dir, tmp_path, "second")).execute()
    assert "reused_from" not in res["base"] and res["base"]["status"] == "ok"
    assert json.loads(entry.read_text())["run_dir"] == res["run_dir"]  # rewritten whole by the measuring run
    res = Comparison(_cfg(tiny_model_dir, tmp_path, "third", **{"eval.reuse_base": False})).execute()
    assert "reused_from" not in res["base"]
    assert basecache.load(entry.stem)["run_dir"] == res["run_dir"]


def test_a_model_that_is_not_a_local_folder_is_never_cached():
    # a hub id names no bytes this machine can hash, and a new revision would keep the id
    assert basecache.key("HuggingFaceTB/SmolLM2-135M-Instruct", {}, {}) is None
