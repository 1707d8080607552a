"""Training one technique as a practitioner would: `nbatune train`, epochs, early stopping, and any
other TrainingArguments field passed through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers import tiny_config

from nbatune.config import ConfigError, TrainConfig, load_config
from nbatune.training import total_steps


def test_epochs_set_the_steps_from_the_data_and_the_batch():
    assert total_steps(TrainConfig(max_steps=7), 1000) == 7
    assert total_steps(TrainConfig(epochs=2.0, batch_size=8, grad_accum=2), 100) == 13  # ceil(200 / 16)
    assert total_steps(TrainConfig(epochs=1.0, batch_size=8), 100, world_size=2) == 7


def test_trainer_args_pass_through_and_unknown_fields_are_named():
    cfg = load_config(None, ["train.trainer_args={dataloader_drop_last: true}"])
    assert cfg.train.trainer_args == {"dataloader_drop_last": True}
    with pytest.raises(ConfigError, match="train.trainer_args.learning_rat: not a transformers TrainingArguments"):
        load_config(None, ["train.trainer_args={learning_rat: 0.1}"])
    with pytest.raises(ConfigError, match="train.trainer_args.learning_rate: set by nbatune .* train.learning_rate"):
        load_config(None, ["train.trainer_args={learning_rate: 0.1}"])


def test_train_command_runs_one_technique_without_base_or_comparison(tiny_model_dir, tmp_path):
    import yaml

    from nbatune.cli import main

    cfg = tiny_config(tiny_model_dir, tmp_path, run_name="one")
    cfg["train"].update({"epochs": 1.0, "curve_steps": 2, "early_stopping_patience": 1, "learning_rate":
                         {"full": 1e-3, "lora": 1e-9, "qlora": 5e-3}, "trainer_args": {"dataloader_drop_last": True}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--method", "lora", "--config", str(path)]) == 0
    res = json.loads((Path(cfg["output_dir"]) / "one" / "results.json").read_text())
    assert res["lora"]["status"] == "ok" and "base" not in res and "full" not in res and "qlora" not in res
    assert "few_shot" not in res["baselines"] and "trivial" in res["baselines"]
    curve = res["lora"]["learning_curve"]
    # an lr of 1e-9 learns nothing: the score never improves, so patience 1 stops at the second measurement
    assert [p["step"] for p in curve] == [2, 4] and curve[-1].get("early_stop")
    assert res["lora"]["steps"] == 4 < 96 // 8  # one epoch would be 12 steps
    assert (Path(cfg["output_dir"]) / "one" / "report.md").is_file()
