"""The technique registry: a technique is one entry, and one defined in a test file (not in the package)
trains, saves, reloads to the answers it was scored with, and exports, beside the built-in ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nbatune import techniques
from nbatune.compare import Comparison
from tests.helpers import ANSWERING, tiny_config


def _query_value_lora(lora):
    """Its own PEFT config: rank 4 on the attention's query and value projections only."""
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _train_last_layer_only(model):
    """LLaMA-Factory's `freeze` idea: the whole model is saved, only the top layer trains."""
    model.requires_grad_(False)
    model.model.layers[-1].requires_grad_(True)
    return model


THROWAWAY = [
    techniques.Technique(name="qv_lora", label="LoRA on q/v", precision="frozen base in bf16, fp32 rank-4 adapters",
                         color="#9467bd", adapter=True, learning_rate=5e-3, peft_config=_query_value_lora,
                         memory_kind="adapter"),
    techniques.Technique(name="top_layer", label="top layer only", precision="fp32, one layer trains",
                         color="#8c564b", adapter=False, learning_rate=1e-3, prepare=_train_last_layer_only),
]


@pytest.fixture
def registered():
    for t in THROWAWAY:
        techniques.register(t)
    yield [t.name for t in THROWAWAY]
    for t in THROWAWAY:
        techniques.unregister(t.name)


def test_the_built_in_techniques_are_three_entries_in_the_design_cards_order():
    assert techniques.DEFAULT_METHODS == ("full", "lora", "qlora")
    assert set(techniques.DEFAULT_METHODS) <= set(techniques.names())
    full, lora, qlora = (techniques.get(n) for n in techniques.DEFAULT_METHODS)
    assert not full.adapter and lora.adapter and qlora.adapter and qlora.quantized and not lora.quantized
    assert (full.saved_folder, lora.saved_folder) == ("model", "adapter")
    with pytest.raises(ValueError, match="already registered"):
        techniques.register(lora)
    with pytest.raises(KeyError, match="'lomo' is not a registered technique"):
        techniques.get("lomo")


def test_an_unregistered_technique_is_refused_by_config_validation(tiny_model_dir, tmp_path):
    from nbatune.config import ConfigError

    with pytest.raises(ConfigError, match="methods: 'qv_lora' is not a method"):
        Comparison(tiny_config(tiny_model_dir, tmp_path, methods=["qv_lora"]))


def test_a_technique_defined_in_a_test_file_trains_saves_reloads_and_exports(registered, answering_model_dir,
                                                                               tmp_path):
    from nbatune.evaluation import answer_and_score
    from nbatune.inference import export, load_from_run

    cmp = Comparison(tiny_config(answering_model_dir, tmp_path, methods=["lora", *registered],
                                 **{**ANSWERING, "eval.retention": False}))
    assert cmp.cfg.train.learning_rate["qv_lora"] == 5e-3  # the entry's defaults reach the config
    res = cmp.setup().execute()
    for name in registered:
        assert res[name]["status"] == "ok", res[name]["error"]
        assert res[name]["steps"] == 4 and res[name]["estimated_peak_bytes"] > 0
    qv = res["qv_lora"]
    assert qv["trainable_params"] == 2 * 4 * ((64 + 64) + (64 + 32))  # 2 layers x rank 4 x (q + v)
    assert (Path(qv["saved_path"]) / "adapter_model.safetensors").is_file()
    top = res["top_layer"]
    assert 0 < top["trainable_params"] < top["total_params"]
    assert (Path(top["saved_path"]) / "model.safetensors").is_file()
    assert res["comparison"]["comparisons_made"] == 3 and "LoRA on q/v" in res["comparison"]["recommendation"]
    report = (Path(res["run_dir"]) / "report.md").read_text()
    assert "top layer only" in report and "fp32, one layer trains" in report
    for name in registered:
        model, tok, rt, _ = load_from_run(res["run_dir"], name)
        again = answer_and_score(model, tok, cmp.test_records, rt, cmp.cfg.eval, cmp.pools)["predictions"]
        assert again == res[name]["predictions"], name
        out = export(res["run_dir"], name, tmp_path / f"export-{name}", dtype="float32")
        from transformers import AutoModelForCausalLM

        exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        ids = torch.tensor([cmp.train_rows[0]["input_ids"]])
        with torch.no_grad():
            torch.testing.assert_close(exported(input_ids=ids).logits, model.float()(input_ids=ids).logits,
                                       rtol=1e-4, atol=1e-4)


MORE = ["dora", "rslora", "pissa", "ia3", "vera", "oft", "qdora", "freeze"]


@pytest.mark.parametrize("name", MORE)
def test_each_registered_technique_trains_saves_reloads_to_its_answers_and_exports(name, answering_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from nbatune.evaluation import answer_and_score
    from nbatune.inference import export, load_from_run

    tech = techniques.get(name)
    cmp = Comparison(tiny_config(answering_model_dir, tmp_path, methods=[name], evaluate_base=False,
                                 **{**ANSWERING, "eval.retention": False}))
    res = cmp.setup().execute()
    r = res[name]
    assert r["status"] == "ok", r["error"]
    assert r["steps"] == 4 and all(loss == loss for _, loss in r["loss_curve"])
    assert 0 < r["trainable_params"] < r["total_params"]
    if tech.adapter:
        assert (Path(r["saved_path"]) / "adapter_model.safetensors").is_file()
        assert not (Path(r["saved_path"]) / "model.safetensors").exists()
    else:  # freeze: the top two decoder layers and nothing else
        model = AutoModelForCausalLM.from_pretrained(r["saved_path"])
        assert r["trainable_params"] == sum(p.numel() for p in model.model.layers[-2:].parameters())
    model, tok, rt, _ = load_from_run(res["run_dir"], name)
    again = answer_and_score(model, tok, cmp.test_records, rt, cmp.cfg.eval, cmp.pools)["predictions"]
    assert all(again) and again == r["predictions"]
    out = export(res["run_dir"], name, tmp_path / "export", dtype="float32")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    if not tech.quantized:  # merged into the fp32 base: the same function as the model that was scored
        ids = torch.tensor([cmp.train_rows[0]["input_ids"]])
        with torch.no_grad():
            torch.testing.assert_close(exported(input_ids=ids).logits, model.float()(input_ids=ids).logits,
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,why", [("qvera", "no bitsandbytes 4-bit layer for VeRA"),
                                      ("qoft", "no bitsandbytes 4-bit layer for OFT"),
                                      ("qfull", "4-bit weights cannot be trained"),
                                      ("qfreeze", "4-bit weights cannot be trained"),
                                      ("qpissa", "PiSSA's SVD needs the unquantized weights")])
def test_a_4bit_variant_peft_cannot_run_is_refused_by_config_validation_with_the_reason(name, why, tiny_model_dir,
                                                                                         tmp_path):
    from nbatune.config import ConfigError

    with pytest.raises(ConfigError, match=f"methods: '{name}' \\(the 4-bit variant of .*\\) cannot run: .*{why}"):
        Comparison(tiny_config(tiny_model_dir, tmp_path, methods=["lora", name]))


def test_pissa_is_saved_as_the_plain_lora_it_amounts_to_on_the_untouched_base(answering_model_dir, tmp_path):
    """PiSSA rewrites the base at initialisation (the residual stays, the top singular directions train); the run
    saves B A - B0 A0 as a rank-2r LoRA for the original base, so alpha 0 of its curve is the base itself and a
    user's ``PeftModel.from_pretrained(base, adapter)`` is the model that was scored."""
    import json

    from transformers import AutoModelForCausalLM

    from nbatune.inference import load_from_run

    cmp = Comparison(tiny_config(answering_model_dir, tmp_path, methods=["pissa"], evaluate_base=False,
                                 **{**ANSWERING, "eval.retention": False, "lora.r": 4, "lora.alpha": 8}))
    res = cmp.setup().execute()
    r = res["pissa"]
    assert r["status"] == "ok", r["error"]
    saved = Path(r["saved_path"])
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["init_lora_weights"] is True
    assert not any(p.name.startswith("initial-adapter") for p in saved.parent.iterdir())  # only the conversion used it
    base = AutoModelForCausalLM.from_pretrained(answering_model_dir, dtype=torch.float32)
    ids = torch.tensor([cmp.train_rows[0]["input_ids"]])
    with torch.no_grad():
        at_zero, _, _, _ = load_from_run(res["run_dir"], "pissa", alpha=0.0)
        torch.testing.assert_close(at_zero.float()(input_ids=ids).logits, base(input_ids=ids).logits)
        trained, _, _, _ = load_from_run(res["run_dir"], "pissa", alpha=1.0)
        assert not torch.allclose(trained.float()(input_ids=ids).logits, base(input_ids=ids).logits)
