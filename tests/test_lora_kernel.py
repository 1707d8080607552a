"""The lean LoRA forward used while training (nbatune/lora_kernel.py) against PEFT's own."""

from __future__ import annotations

import pytest
import torch

from nbatune.config import LoraSettings, ModelConfig, QuantSettings
from nbatune.lora_kernel import lean_adapters
from nbatune.modeling import load_model
from nbatune.runtime import Runtime

IDS = torch.randint(3, 200, (4, 48), generator=torch.Generator().manual_seed(0))


def _adapted(model_dir, method, rt):
    """The tiny model with ``method``'s adapters, B drawn non-zero so that they change the output."""
    model = load_model(str(model_dir), method, ModelConfig(), rt, LoraSettings(), QuantSettings(), 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def _loss_and_grads(model, rt, lean: bool):
    model.zero_grad(set_to_none=True)
    with lean_adapters(model, lean) as n, rt.autocast():
        loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])
    return float(loss.detach()), grads, n


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_lean_forward_trains_like_peft_and_hands_peft_its_layers_back(tiny_model_dir, method, precision):
    """fp32: the same loss and gradients up to summation order. bf16: the sum is rounded once instead of twice, so
    the loss agrees to 0.5% and the gradients point the same way."""
    rt = Runtime("cpu", precision)
    model = _adapted(tiny_model_dir, method, rt)
    peft_loss, peft_grads, _ = _loss_and_grads(model, rt, lean=False)
    lean_loss, lean_grads, n = _loss_and_grads(model, rt, lean=True)
    assert n == 2 * 7  # the tiny model's two layers, seven linear layers each
    if precision == "fp32":
        assert lean_loss == pytest.approx(peft_loss, rel=1e-6)
        torch.testing.assert_close(lean_grads, peft_grads, rtol=1e-4, atol=1e-6)
    else:
        assert lean_loss == pytest.approx(peft_loss, rel=5e-3)
        assert torch.nn.functional.cosine_similarity(lean_grads, peft_grads, dim=0) > 0.999
    assert not any("forward" in vars(m) for m in model.modules())  # PEFT's forward again: evaluation runs it
    assert _loss_and_grads(model, rt, lean=False)[0] == peft_loss


def test_a_layer_the_lean_forward_does_not_cover_runs_pefts_forward_unchanged(tiny_model_dir):
    """DoRA (a LoRA variant) and a disabled adapter go to PEFT's own forward: the same numbers bit for bit."""
    rt = Runtime("cpu", "fp32")
    model = _adapted(tiny_model_dir, "dora", rt)
    with torch.no_grad():
        want = model(input_ids=IDS).logits
        with model.disable_adapter():
            want_off = model(input_ids=IDS).logits
        with lean_adapters(model, True) as n:
            got = model(input_ids=IDS).logits
            with model.disable_adapter():
                got_off = model(input_ids=IDS).logits
    assert n == 14
    assert torch.equal(got, want) and torch.equal(got_off, want_off) and not torch.equal(want, want_off)


def test_training_uses_the_lean_forward_only_when_configured(tiny_model_dir, tmp_path, monkeypatch):
    from nbatune import lora_kernel, training
    from nbatune.compare import Comparison
    from tests.helpers import tiny_config

    calls = []
    real = lora_kernel.lean_lora_forward
    monkeypatch.setattr(lora_kernel, "lean_lora_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    for on in (True, False):
        calls.clear()
        cmp = Comparison(tiny_config(tiny_model_dir, tmp_path, evaluate_base=False, methods=["lora"],
                                     **{"eval.retention": False, "train.lean_adapters": on})).setup()
        model = load_model(cmp.model_path, "lora", cmp.cfg.model, cmp.rt, cmp.cfg.lora, cmp.cfg.quant, 0)
        training.train(model, cmp.tokenizer, cmp.train_rows, "lora", cmp.cfg.train, cmp.rt, tmp_path / f"ckpt-{on}", 0)
        assert bool(calls) == on
        assert not any("forward" in vars(m) for m in model.modules())
