"""Training one technique as a practitioner would: `nbatune train`, epochs, early stopping, any other
TrainingArguments field passed through, and the attention kernel training runs with."""

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


def test_eager_attention_keeps_packed_examples_apart():
    """Packed rows carry no attention mask, only restarting positions. The lean eager kernel that CPU
    training uses must get the block-diagonal mask from them as SDPA does: each example's logits in a
    packed row equal its logits alone."""
    import torch

    from nbatune.attention import LEAN_EAGER, register
    from nbatune.data.tokenize import PackedCollator
    from tests.helpers import tiny_llama

    register()
    model = tiny_llama(64).eval()
    model.config.use_cache = False  # as load_model leaves it: with a cache, transformers ignores the restarts
    model.set_attn_implementation(LEAN_EAGER)
    examples = [list(range(3, 12)), list(range(20, 27)), list(range(40, 45))]
    batch = PackedCollator(pad_id=2, row_tokens=32)([{"input_ids": e, "labels": e} for e in examples])
    assert batch["input_ids"].shape[0] == 1  # all three share one row
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        at = 0
        for e in sorted(examples, key=len, reverse=True):  # the collator packs longest first
            alone = model(input_ids=torch.tensor([e])).logits[0]
            assert torch.allclose(packed[at:at + len(e)], alone, atol=1e-5)
            at += len(e)


def test_a_packed_row_width_below_one_is_refused():
    with pytest.raises(ConfigError, match="train.pack_row_tokens: 0 must be >= 1"):
        load_config(None, ["train.pack_row_tokens=0"])


def test_packed_row_width_changes_neither_loss_nor_gradients():
    """Rows of 512 against rows of 128: other padding and other neighbours in a row, the same examples attended
    apart, so the same loss and gradients up to summation order (what bench/row_width_ab.py relies on)."""
    import torch

    from nbatune.attention import LEAN_EAGER, register
    from nbatune.data.tokenize import PackedCollator
    from nbatune.loss import answer_only_loss
    from tests.helpers import tiny_llama

    register()
    gen = torch.Generator().manual_seed(0)
    examples = []
    for n in (90, 70, 60, 40, 30):
        ids = torch.randint(3, 64, (n,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    rows, runs = [], []
    for width in (128, 512):
        batch = PackedCollator(pad_id=2, row_tokens=width)(examples)
        batch.pop("real_tokens")
        rows.append(batch["input_ids"].shape[0])
        model = tiny_llama(64)  # the same weights each time
        model.config.use_cache = False
        model.set_attn_implementation(LEAN_EAGER)
        loss, n = answer_only_loss(model, batch, None, 512)
        loss.backward()
        runs.append((loss.detach(), int(n), [p.grad for p in model.parameters()]))
    assert rows[0] > 1 and rows[1] == 1  # several rows of 128, one row of 512
    (la, na, ga), (lb, nb, gb) = runs
    assert na == nb and torch.allclose(la, lb, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(ga, gb))


def test_auto_attention_is_lean_eager_on_cpu_and_sdpa_elsewhere():
    from nbatune.attention import LEAN_EAGER, training_attention

    assert training_attention("auto", "cpu") == training_attention("lean_eager", "cuda") == LEAN_EAGER
    assert training_attention("auto", "cuda") == "sdpa"
    assert training_attention("sdpa", "cpu") == "sdpa" and training_attention("eager", "cpu") == "eager"


def test_lean_eager_attention_matches_sdpa_in_loss_and_gradients():
    """Same loss and gradients as SDPA, in fp32 exactly, under bf16 autocast within rounding (the
    probabilities it keeps are bf16)."""
    import torch

    from nbatune.attention import LEAN_EAGER, register
    from tests.helpers import tiny_llama

    register()
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        runs = {}
        for kernel in ("sdpa", LEAN_EAGER):
            model = tiny_llama(64)
            model.config.use_cache = False
            model.set_attn_implementation(kernel)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            runs[kernel] = (loss.detach(), [p.grad for p in model.parameters()])
        (la, ga), (lb, gb) = runs.values()
        assert torch.allclose(la, lb, atol=tol, rtol=tol)
        assert all(torch.allclose(a, b, atol=tol, rtol=10 * tol) for a, b in zip(ga, gb))


@pytest.mark.parametrize("setting", ["auto", "sdpa"])
def test_training_runs_with_the_configured_attention_and_gives_the_model_its_own_back(
        tiny_model_dir, tmp_path, monkeypatch, setting):
    from nbatune import attention, training
    from nbatune.compare import Comparison
    from nbatune.modeling import load_model

    eager_calls = []
    real = attention.lean_eager_attention
    monkeypatch.setattr(attention, "lean_eager_attention", lambda *a, **k: eager_calls.append(1) or real(*a, **k))
    cmp = Comparison(tiny_config(tiny_model_dir, tmp_path, evaluate_base=False, methods=["lora"],
                                 **{"eval.retention": False, "train.attention": setting})).setup()
    model = load_model(cmp.model_path, "lora", cmp.cfg.model, cmp.rt, cmp.cfg.lora, cmp.cfg.quant, 0)
    assert model.config._attn_implementation == "sdpa"
    training.train(model, cmp.tokenizer, cmp.train_rows, "lora", cmp.cfg.train, cmp.rt, tmp_path / "ckpt", 0)
    assert bool(eager_calls) == (setting == "auto")  # tests run on CPU, where auto means lean eager
    assert model.config._attn_implementation == "sdpa"  # evaluation decodes as before


def test_compiled_layers_train_to_the_eager_losses_measure_uncompiled_and_hand_the_layers_back(tiny_model_dir,
                                                                                                tmp_path):
    import dataclasses

    import torch
    from torch._dynamo.utils import counters
    from transformers.modeling_layers import GradientCheckpointingLayer

    from nbatune import evaluation, training
    from nbatune.compare import Comparison
    from nbatune.modeling import load_model

    cmp = Comparison(tiny_config(tiny_model_dir, tmp_path, evaluate_base=False, methods=["lora"],
                                 **{"eval.retention": False, "train.curve_steps": 2})).setup()
    losses, graphs = {}, {}
    for on in (False, True):
        cfg = dataclasses.replace(cmp.cfg.train, compile={**cmp.cfg.train.compile, "lora": on})
        model = load_model(cmp.model_path, "lora", cmp.cfg.model, cmp.rt, cmp.cfg.lora, cmp.cfg.quant, 0)
        torch._dynamo.reset()
        counters.clear()
        out = training.train(model, cmp.tokenizer, cmp.train_rows, "lora", cfg, cmp.rt, tmp_path / f"ckpt-{on}", 0,
                             curve=lambda m: evaluation.teacher_forced_exact_match(m, cmp.tokenizer, cmp.curve_rows,
                                                                                   cmp.rt))
        losses[on], graphs[on] = [loss for _, loss in out.loss_curve], counters["stats"]["unique_graphs"]
        assert len(out.learning_curve) == 2
        assert all(m._compiled_call_impl is None for m in model.modules() if isinstance(m, GradientCheckpointingLayer))
    # one graph for the first layer (its input needs no gradient: the embeddings are frozen), one for all the others,
    # whatever the packed width; the curve's no-grad measurements did not compile more
    assert graphs == {False: 0, True: 2}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)  # fp32 here: fusion alone moves the last bits


def test_lean_eager_attention_refuses_soft_capped_models_and_names_the_fix():
    import torch

    from nbatune.attention import lean_eager_attention

    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="train.attention: eager"):
        lean_eager_attention(torch.nn.Module(), q, q, q, None, 0.5, softcap=30.0)
