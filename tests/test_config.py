"""Configs: every shipped YAML validates, overrides apply, and errors name field, value and choices."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

from nbatune.config import CONFIG_DIR, ConfigError, RunConfig, load_config

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    text = path.read_text()
    assert text.startswith("#") and "Run:" in text.split("\n\n")[0], "each shipped YAML opens with its run command"


def test_quick_config_only_holds_diffs_on_top_of_default():
    quick, default = load_config(CONFIG_DIR / "quick.yaml"), load_config(CONFIG_DIR / "default.yaml")
    assert quick.train.max_steps < default.train.max_steps
    assert quick.lora == default.lora
    # the short run keeps the 60-step sweep's faster rates: one step above the default's each
    assert all(quick.train.learning_rate[m] == 2 * default.train.learning_rate[m] for m in ("full", "lora"))


def test_seeds_config_is_the_default_with_three_training_seeds():
    seeds, default = load_config(CONFIG_DIR / "seeds.yaml").to_dict(), load_config(CONFIG_DIR / "default.yaml").to_dict()
    assert seeds["train"].pop("repeats") == 3 and default["train"].pop("repeats") == 1
    assert seeds == default


def test_default_yaml_spells_out_exactly_the_dataclass_defaults():
    assert load_config(CONFIG_DIR / "default.yaml").to_dict() == RunConfig().to_dict()


def test_mode_picks_the_preset_for_a_yaml_file_and_a_dict_alike(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("mode: quick\nseed: 7\n")
    from_file, from_dict = load_config(p), load_config({"mode": "quick", "seed": 7})
    assert from_file.to_dict() == from_dict.to_dict()
    assert from_file.train.max_steps == load_config(CONFIG_DIR / "quick.yaml").train.max_steps < RunConfig().train.max_steps


def test_none_dict_and_object_give_the_same_defaults():
    a = load_config(None)
    assert load_config({}).to_dict() == a.to_dict() == load_config(a).to_dict()


def test_dotted_overrides_apply_last():
    cfg = load_config(None, ["train.max_steps=7", "train.learning_rate.full=3e-5", "methods=[lora]"])
    assert cfg.train.max_steps == 7 and cfg.train.learning_rate["full"] == 3e-5 and cfg.methods == ["lora"]
    assert cfg.train.learning_rate["lora"] == load_config(None).train.learning_rate["lora"]


def test_all_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config({"methods": ["full", "dpo"], "train": {"precision": "int3", "max_steps": 0},
                     "lora": {"r": 0}, "bogus": 1})
    msg = str(e.value)
    for needle in ("bogus: unknown key", "train.precision: 'int3' is not allowed (allowed: 'auto', 'bf16', 'fp16', 'fp32')"):
        assert needle in msg
    # range checks only run once types are right, so fix types and look again
    with pytest.raises(ConfigError) as e:
        load_config({"methods": ["full", "dpo"], "train": {"max_steps": 0}, "lora": {"r": 0},
                     "eval": {"curve_refine": -1, "keep_measure": "facts", "fallback_share": 0}})
    msg = str(e.value)
    assert "eval.curve_refine: -1 must be an integer >= 0" in msg
    assert "eval.keep_measure: 'facts' must be one of score, known, stratified" in msg
    assert "eval.fallback_share: 0.0 must be in (0, 1] (1: the best NBA validation score)" in msg
    assert "methods: 'dpo' is not a method (allowed: full, lora, qlora, dora," in msg
    assert "train.max_steps: 0 must be >= 1" in msg and "lora.r: 0 must be >= 1" in msg


def test_unknown_method_in_a_per_method_table():
    with pytest.raises(ConfigError, match=r"train.learning_rate.lomo: unknown method"):
        load_config({"train": {"learning_rate": {"lomo": 1e-3}}})


def test_missing_config_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/default.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_scientific_notation_is_a_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: {full: 1e-4}\n")
    assert load_config(p).train.learning_rate["full"] == 1e-4


def test_precision_errors_come_before_any_model_loads(monkeypatch):
    import torch

    from nbatune.runtime import PrecisionError, resolve

    with pytest.raises(PrecisionError, match="fp16 training is not supported on CPU; use 'bf16' or 'fp32'"):
        resolve("cpu", "fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PrecisionError, match="no CUDA device"):
        resolve("cuda", "auto")
    monkeypatch.setattr("nbatune.runtime.cpu_has_native_bf16", lambda: False)
    assert resolve("auto", "auto").precision == "fp32"


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, nbatune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False", out.stderr


def test_the_facade_imports_from_any_directory(tmp_path):
    import subprocess
    import sys

    code = ("from implement_rec_036 import ImplementImplementFullFinetuningLoraAndQloraTechniques as F; "
            "import implement_rec_036, pathlib; print(F.__name__, pathlib.Path(implement_rec_036.__file__).name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert out.stdout.split() == ["ImplementImplementFullFinetuningLoraAndQloraTechniques", "implement_rec_036.py"], \
        out.stderr


def test_a_logger_that_is_not_installed_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"nbatune\[wandb\]"):
        load_config(None, ["train.report_to=[wandb]"])


def test_analyst_config_is_the_default_trained_longer_with_attention_adapters():
    analyst, default = load_config(CONFIG_DIR / "analyst.yaml").to_dict(), load_config(CONFIG_DIR / "default.yaml").to_dict()
    examples = {n: d["train"]["max_steps"] * d["train"]["batch_size"] for n, d in (("analyst", analyst), ("default", default))}
    assert examples["analyst"] > 4 * examples["default"]
    assert analyst["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # pinned to the rates its measured run used (BENCHMARKS.md quotes that run)
    assert {m: analyst["train"]["learning_rate"][m] for m in ("full", "lora", "qlora")} == {
        "full": 2e-4, "lora": 2e-3, "qlora": 4e-3}
    for d in (analyst, default):
        d["train"].pop("max_steps"), d["train"].pop("curve_steps"), d["lora"].pop("target_modules")
        d["train"].pop("batch_size")
        d["train"].pop("learning_rate"), d["train"].pop("learning_rate_source")
    assert analyst == default


def _launch_env(path: Path) -> dict:
    """The environment `accelerate launch --config_file path` gives the training processes, from accelerate's own
    parser, validation and launcher preparation (nothing is launched)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "nbatune.cli", "run"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before deepspeed_launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG_DIR / "accelerate").glob("*.yaml")))
def test_each_launch_file_loads_in_accelerate_and_the_run_sees_what_its_technique_needs(name, monkeypatch, tmp_path):
    """Every launch file passes accelerate's own config loading and launch validation. The QLoRA ones hand the
    process what FSDP / ZeRO-3 with a 4-bit base need, and nbatune then packs the 4-bit weights in the compute
    dtype (bnb_4bit_quant_storage) by itself; the other files leave them uint8."""
    from accelerate.commands.config.config_args import load_config_from_file

    from nbatune.config import QuantSettings
    from nbatune.modeling import quant_storage
    from nbatune.runtime import Runtime
    from nbatune.training import training_arguments

    path = CONFIG_DIR / "accelerate" / name
    cluster = load_config_from_file(str(path))
    env = _launch_env(path)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    storage = quant_storage(QuantSettings(), Runtime("cpu", "bf16"))
    if name == "fsdp-qlora.yaml":
        assert cluster.distributed_type == "FSDP"
        assert {k: env[k] for k in ("FSDP_USE_ORIG_PARAMS", "FSDP_SYNC_MODULE_STATES", "FSDP_CPU_RAM_EFFICIENT_LOADING")} \
            == {"FSDP_USE_ORIG_PARAMS": "false", "FSDP_SYNC_MODULE_STATES": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
        assert storage == "bfloat16"
    elif name == "deepspeed-zero3-qlora.yaml":
        assert cluster.distributed_type == "DEEPSPEED"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3" and env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
        assert storage == "bfloat16"
    elif name == "fsdp.yaml":  # full fine-tuning: FSDP2, one ordinary checkpoint at the end
        assert env["FSDP_VERSION"] == "2" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    else:
        assert cluster.distributed_type == "MULTI_GPU" and storage == "uint8"
    assert quant_storage(QuantSettings(bnb_4bit_quant_storage="uint8"), Runtime("cpu", "bf16")) == "uint8"
    # the Trainer's arguments the run builds under that launch (transformers reads DeepSpeed's from the
    # environment and needs the package; FSDP's reach the Trainer's Accelerator, not these arguments)
    technique = "full" if name == "fsdp.yaml" else "qlora"
    cfg = load_config(None)
    build = lambda: training_arguments(technique, cfg.train, Runtime("cpu", "bf16"), tmp_path, 0)  # noqa: E731
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(Exception, match="deepspeed"):
            build()
        return
    args = build()
    assert (args.learning_rate, args.optim) == (cfg.train.learning_rate[technique], cfg.train.optimizer[technique])


def test_overrides_leave_the_callers_config_dict_as_it_was():
    """A dict config and overrides (the facade, ``Comparison(results["config"], [...])`` in the benchmarks): the
    override lands in the built config, never in the caller's dict, which a second run may read again."""
    given = {"methods": ["lora"], "eval": {"batch_size": 64}, "train": {"learning_rate": {"lora": 1e-3}}}
    before = copy.deepcopy(given)
    cfg = load_config(given, ["eval.batch_size=32", "train.learning_rate.lora=2e-3"])
    assert (cfg.eval.batch_size, cfg.train.learning_rate["lora"]) == (32, 2e-3)
    assert given == before


def test_a_cpu_without_native_bf16_gets_told_why_the_run_is_slow_and_bf16_there_is_refused_in_words(monkeypatch):
    from nbatune.runtime import Runtime, cpu_precision_advice

    monkeypatch.setattr("nbatune.runtime.cpu_has_native_bf16", lambda: False)
    assert "fp32" in cpu_precision_advice(Runtime("cpu", "fp32")) and "make quick" in cpu_precision_advice(
        Runtime("cpu", "fp32"))
    assert "use 'auto' or 'fp32'" in cpu_precision_advice(Runtime("cpu", "bf16"))
    assert cpu_precision_advice(Runtime("cuda", "bf16")) == ""
    monkeypatch.setattr("nbatune.runtime.cpu_has_native_bf16", lambda: True)
    assert cpu_precision_advice(Runtime("cpu", "bf16")) == ""
