"""Behaviour of the facade and of the three techniques, on a tiny random Llama (CPU, offline).

The integration test at the bottom (marked slow; `make test` and CI run it) uses the real
embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tests.helpers import ANSWERING, tiny_config

from implement_rec_036 import ConfigError, ImplementImplementFullFinetuningLoraAndQloraTechniques
from nbatune.config import load_config
from nbatune.data.loading import load_splits
from nbatune.data.tokenize import IGNORE, PadCollator, tokenize_records
from nbatune.modeling import load_model, load_tokenizer
from nbatune.runtime import Runtime
from nbatune.loss import answer_only_loss
from nbatune.training import train

FP32 = Runtime("cpu", "fp32")
METHOD_KEYS = {"trainable_params", "total_params", "loss_curve", "final_train_loss", "eval_loss", "perplexity",
               "accuracy", "accuracy_ci95", "train_seconds", "eval_seconds", "tokens_per_second",
               "peak_memory_bytes", "saved_bytes", "saved_path", "status", "per_category"}


@pytest.fixture(scope="module")
def executed(answering_model_dir, tmp_path_factory):
    """One full setup()/execute() of base + full + LoRA + QLoRA on the answering tiny model, checkpoints on
    (they are artefacts too)."""
    tmp = tmp_path_factory.mktemp("facade")
    impl = ImplementImplementFullFinetuningLoraAndQloraTechniques(
        config=tiny_config(answering_model_dir, tmp, **{**ANSWERING, "train.save_steps": 2}))
    impl.setup()
    return impl, impl.execute()


def _parts(model_dir, tmp_path, method, **over):
    cfg = load_config(tiny_config(model_dir, tmp_path, **over))
    tok = load_tokenizer(str(model_dir), cfg.model)
    recs = load_splits(cfg.data, cfg.model)
    rows, _ = tokenize_records(recs["train"], tok, cfg.model.max_length, "truncate", "train")
    model = load_model(str(model_dir), method, cfg.model, FP32, cfg.lora, cfg.quant, cfg.seed,
                       cfg.train.gradient_checkpointing[method])
    return cfg, tok, rows, model


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- the facade -------------------------------------------------------------------------------

def test_execute_returns_every_method_with_documented_keys(executed):
    impl, res = executed
    for m in ("base", "full", "lora", "qlora"):
        assert res[m]["status"] == "ok", res[m].get("error")
        assert METHOD_KEYS <= set(res[m]), METHOD_KEYS - set(res[m])
        assert 0.0 <= res[m]["accuracy"] <= 1.0
        lo, hi = res[m]["accuracy_ci95"]
        assert 0.0 <= lo <= res[m]["accuracy"] <= hi <= 1.0
        assert math.isfinite(res[m]["eval_loss"]) and res[m]["perplexity"] == pytest.approx(math.exp(res[m]["eval_loss"]))
    for m in ("full", "lora", "qlora"):
        r = res[m]
        assert r["train_seconds"] > 0 and r["tokens_per_second"] > 0 and r["peak_memory_bytes"] > 0
        assert r["estimated_peak_bytes"] > r["weights_bytes"]  # predicted in setup(), before training
        assert len(r["loss_curve"]) == 4 and all(math.isfinite(loss) for _, loss in r["loss_curve"])
        assert Path(r["saved_path"]).is_dir() and r["saved_bytes"] > 0
    assert res["full"]["trainable_params"] == res["full"]["total_params"]
    assert res["lora"]["trainable_params"] == res["qlora"]["trainable_params"] < res["full"]["trainable_params"]
    assert res["base"]["trainable_params"] == 0
    assert {"config", "environment", "dataset", "comparison", "report"} <= set(res)


def test_results_json_matches_returned_dict(executed):
    impl, res = executed
    on_disk = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    assert on_disk["schema_version"] == 3
    for m in ("full", "lora", "qlora"):
        assert on_disk[m]["accuracy"] == res[m]["accuracy"]


def test_results_carry_baselines_retention_learning_curves_and_provenance(executed):
    _, res = executed
    n = len(res["base"]["correct"])
    b = res["baselines"]
    assert set(b) == {"trivial", "zero_shot", "few_shot"}
    for name, v in b.items():
        assert len(v["correct"]) == n and 0 <= v["accuracy"] <= 1 and v["per_category"], name
    assert b["zero_shot"]["correct"] == res["base"]["correct"]
    assert b["few_shot"]["k"] == 3 and len(b["few_shot"]["predictions"]) == n
    assert {q["category"] for q in res["test_questions"]} <= set(b["trivial"]["rules"])
    cmp = res["comparison"]
    assert cmp["strongest_baseline"] == max(b, key=lambda k: b[k]["accuracy"])
    for m in ("full", "lora", "qlora"):
        assert len(res[m]["retention"]["correct"]) == len(res["base"]["retention"]["correct"]) >= 140
        fm = res[m]["formats"]  # seen and unseen stat-line formats, apart: together the whole test
        assert fm["seen"]["n"] + fm["unseen"]["n"] == n and fm["unseen"]["n"] >= 4
        unseen = [c for c, q in zip(res[m]["correct"], res["test_questions"]) if q.get("unseen")]
        assert fm["unseen"]["accuracy"] == pytest.approx(sum(unseen) / len(unseen))
        learned = cmp["learned"][m]
        assert learned["diff"] == pytest.approx(res[m]["accuracy"] - b[cmp["strongest_baseline"]]["accuracy"])
        forgot = cmp["forgot"][m]
        assert forgot["diff"] == pytest.approx(res["base"]["retention"]["accuracy"] - res[m]["retention"]["accuracy"])
        curve = res[m]["learning_curve"]
        assert [p["step"] for p in curve] == [4]  # curve_steps 10 > max_steps 4: only the last step
        assert curve[0]["tokens"] == res[m]["train_tokens"] and 0 <= curve[0]["exact_match"] <= 1
        assert [r["seed"] for r in res[m]["repeats"]] == [0]
    assert cmp["comparisons_made"] == 3
    # the answering tiny model: the comparison's numbers are not all the same zero
    assert len({res[m]["accuracy"] for m in ("base", "full", "lora", "qlora")}) > 1
    assert any(cmp["learned"][m]["diff"] != 0 for m in ("full", "lora", "qlora"))
    assert any(p["diff"] != 0 for p in cmp["pairs"].values())
    report = (Path(res["run_dir"]) / "report.md").read_text()
    assert "Every technique trained the same steps on the same examples in the same order: 4 steps" in report
    assert "Strongest baseline" in report and "Forgetting" in report and "NF4" in report
    assert res["provenance"]["nf4_error"]["relative_error"] > 0
    assert res["provenance"]["name"] == str(Path(res["model_path"])) or res["provenance"]["path"] == res["model_path"]


def test_models_are_safetensors_and_checkpoints_pickle_only_torch_state(executed):
    from nbatune.training import PICKLED_CHECKPOINT_FILES

    _, res = executed
    files = {p.name for p in Path(res["lora"]["saved_path"]).iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert "model.safetensors" not in files
    run = Path(res["run_dir"])
    pickles = [p for p in run.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    checkpoints = {p.parent for p in pickles}
    assert {c.name for c in checkpoints} == {"checkpoint-2", "checkpoint-4"}
    assert all(c.parent.name == "checkpoints" for c in checkpoints) and len(checkpoints) == 6  # 3 techniques x 2
    assert all(p.name in PICKLED_CHECKPOINT_FILES for p in pickles)
    assert all((c / "training_args.json").is_file() for c in checkpoints)


def test_seed_example_config_is_accepted():
    cfg = load_config({"enabled": True, "mode": "production"})
    assert cfg.enabled and cfg.mode == "production" and cfg.methods == ["full", "lora", "qlora"]


def test_disabled_config_runs_nothing(tmp_path):
    impl = ImplementImplementFullFinetuningLoraAndQloraTechniques({"enabled": False, "output_dir": str(tmp_path)})
    assert impl.execute()["status"] == "disabled"
    assert not any(tmp_path.iterdir())


def test_unknown_key_and_wrong_type_are_named_together():
    with pytest.raises(ConfigError) as e:
        ImplementImplementFullFinetuningLoraAndQloraTechniques({"train": {"max_stepz": 3, "batch_size": "8"}})
    msg = str(e.value)
    assert "train.max_stepz: unknown key" in msg and "max_steps" in msg
    assert "train.batch_size: '8' has the wrong type (expected int)" in msg


# ---- what each technique trains -----------------------------------------------------------------

def test_full_finetuning_changes_every_parameter(tiny_model_dir, tmp_path):
    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, "full")
    before = _snapshot(model)
    train(model, tok, rows, "full", cfg.train, FP32, tmp_path / "ckpt", cfg.seed)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_train_and_base_weights_stay_bit_identical(tiny_model_dir, tmp_path, method):
    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    train(model, tok, rows, method, cfg.train, FP32, tmp_path / "ckpt", cfg.seed)
    for n, p in model.named_parameters():
        if n in trainable:
            if "lora_B" in n:  # B starts at zero, so any training moves it
                assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), f"base weight {n} changed"


def test_qlora_linear_layers_really_are_4bit(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    *_, model = _parts(tiny_model_dir, tmp_path, "qlora")
    linears = [m for n, m in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                    "up_proj", "down_proj"))]
    assert len(linears) == 2 * 7
    for m in linears:
        assert isinstance(m.base_layer, bnb.nn.Linear4bit)
        assert m.base_layer.weight.__class__.__name__ == "Params4bit"
        assert m.base_layer.weight.quant_state.quant_type == "nf4"
        assert m.base_layer.weight.quant_state.nested  # double quantization


def test_lora_trainable_count_matches_closed_form(tiny_model_dir, tmp_path):
    *_, model = _parts(tiny_model_dir, tmp_path, "lora")
    r, h, i, kv = 16, 64, 128, 32  # kv: 2 kv heads x 16 head dim
    per_layer = r * ((h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * per_layer


@pytest.mark.parametrize("method,lora", [("full", {}), ("qlora", {"r": 64, "alpha": 128})])
@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizers_keep_8bit_state_for_large_tensors_on_cpu(tiny_model_dir, tmp_path, monkeypatch, optimizer,
                                                                   method, lora):
    """bitsandbytes keeps 32-bit state for tensors under its min_8bit_size (4,096 elements): the tiny model's
    64 x 64 and 64 x 128 weights (full) and rank-64 adapters (QLoRA) are at or above it. A paged optimizer
    has no paged memory on CPU: bitsandbytes warns and keeps ordinary buffers. Embeddings stay 32-bit on
    purpose (the Trainer registers that override with bitsandbytes, as the 8-bit optimizer paper advises).
    The four cases share a process: a stale override from an earlier model must not reach a later one."""
    import warnings

    from nbatune.training import AnswerOnlyTrainer

    built = []
    real_create = AnswerOnlyTrainer.create_optimizer
    monkeypatch.setattr(AnswerOnlyTrainer, "create_optimizer",
                        lambda self, *a, **k: built.append(real_create(self, *a, **k)) or built[-1])
    over = {"train.optimizer": {method: optimizer}, "train.max_steps": 2, "lora": lora}
    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, method, **over)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train(model, tok, rows, method, cfg.train, FP32, tmp_path / "ckpt", cfg.seed)
    assert out.steps == 2 and all(math.isfinite(loss) for _, loss in out.loss_curve)
    opt = built[-1]
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    trained = [p for p in model.parameters() if p.requires_grad and id(p) not in embeddings]
    large = [p for p in trained if p.numel() >= 4096]
    assert all(opt.state[p]["state1"].dtype == torch.float32 for p in model.parameters()
               if id(p) in embeddings and p.requires_grad)
    assert large and all(opt.state[p]["state1"].dtype == torch.uint8 for p in large)
    assert all(opt.state[p]["state2"].dtype == torch.uint8 and "absmax1" in opt.state[p] for p in large)
    assert all(opt.state[p]["state1"].dtype == torch.float32 for p in trained if p.numel() < 4096)
    paged_warning = any("Paged optimizers are not supported on CPU" in str(w.message) for w in caught)
    assert paged_warning == (optimizer == "paged_adamw_8bit")


@pytest.mark.parametrize("lora", [{"use_dora": True}, {"use_rslora": True}, {"init_lora_weights": "pissa"},
                                  {"init_lora_weights": "gaussian", "r": 4, "alpha": 8}])
def test_peft_lora_variants_pass_through_the_config(tiny_model_dir, tmp_path, lora):
    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, "lora", lora=lora, **{"train.max_steps": 2})
    peft_cfg = model.peft_config["default"]
    for k, v in lora.items():
        assert getattr(peft_cfg, {"alpha": "lora_alpha"}.get(k, k)) == v
    out = train(model, tok, rows, "lora", cfg.train, FP32, tmp_path / "ckpt", cfg.seed)
    assert out.steps == 2


def test_same_config_and_seed_give_the_same_losses_and_accuracy(tiny_model_dir, tmp_path):
    runs = [ImplementImplementFullFinetuningLoraAndQloraTechniques(
        tiny_config(tiny_model_dir, tmp_path / str(i), methods=["lora"], evaluate_base=False)).execute() for i in (0, 1)]
    assert runs[0]["lora"]["loss_curve"] == runs[1]["lora"]["loss_curve"]
    assert runs[0]["lora"]["predictions"] == runs[1]["lora"]["predictions"]
    assert runs[0]["fingerprint"] == runs[1]["fingerprint"]


def test_loss_goes_down_on_a_repeated_batch(tiny_model_dir, tmp_path):
    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, "full")
    batch = PadCollator(tok.pad_token_id)(rows[:8])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = answer_only_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0] and losses[-1] < min(losses[:5])


def test_prompt_tokens_are_excluded_from_the_loss(tiny_model_dir, tmp_path):
    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, "full")
    row = rows[0]
    n_prompt = row["labels"].index(next(x for x in row["labels"] if x != IGNORE))
    assert all(x == IGNORE for x in row["labels"][:n_prompt]) and n_prompt > 5
    batch = PadCollator(tok.pad_token_id)([row])
    loss_a, n_a = answer_only_loss(model, batch)
    assert n_a == len(row["input_ids"]) - n_prompt
    # Reference: full-vocab loss over answer positions only, computed the slow, obvious way.
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
    tgt = torch.tensor(row["labels"][1:])
    ref = torch.nn.functional.cross_entropy(logits[tgt != IGNORE], tgt[tgt != IGNORE])
    torch.testing.assert_close(loss_a, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_packed_batches_give_the_same_loss_and_gradients_as_padded(tiny_model_dir, tmp_path, method):
    from nbatune.data.tokenize import PackedCollator

    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, method)
    batch = rows[:12]
    packed = PackedCollator(tok.pad_token_id, row_tokens=192)(batch)
    assert packed["input_ids"].shape[0] < len(batch)  # several examples share a row
    assert int(packed["real_tokens"]) == sum(len(r["input_ids"]) for r in batch)
    padded = PadCollator(tok.pad_token_id)(batch)
    grads = []
    for inputs in (padded, {k: v for k, v in packed.items() if k != "real_tokens"}):
        model.zero_grad()
        loss, n = answer_only_loss(model, inputs)
        loss.backward()
        trained = [p for p in model.parameters() if p.requires_grad]
        grads.append((loss.detach(), n, torch.cat([p.grad.flatten() for p in trained])))
    (la, na, ga), (lb, nb, gb) = grads
    assert na == nb
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_final_eos_is_a_label_even_though_pad_equals_eos(tiny_model_dir, tmp_path):
    cfg, tok, rows, _ = _parts(tiny_model_dir, tmp_path, "full")
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.eos_token_id in [x for x in rows[0]["labels"] if x != IGNORE]


# ---- integration on the real embedded model -----------------------------------------------------

@pytest.mark.slow
def test_embedded_smollm2_runs_all_three_techniques(tmp_path):
    pytest.importorskip("gguf")
    impl = ImplementImplementFullFinetuningLoraAndQloraTechniques(
        config="configs/quick.yaml",
        overrides=[f"output_dir={tmp_path}", "train.max_steps=4", "train.batch_size=4", "train.logging_steps=1",
                   "eval.max_test_examples=8", "data.val_size=8", "eval.max_new_tokens=16"])
    impl.setup()
    res = impl.execute()
    for m in ("base", "full", "lora", "qlora"):
        assert res[m]["status"] == "ok", res[m].get("error")
    assert res["full"]["total_params"] == 134_515_008  # SmolLM2-135M, tied embeddings counted once
    for m in ("full", "lora", "qlora"):
        assert len(res[m]["loss_curve"]) == 4
        # four steps already teach the answer format: validation loss falls below the untouched model's
        assert res[m]["eval_loss"] < res["base"]["eval_loss"], (m, res[m]["eval_loss"], res["base"]["eval_loss"])
    assert (Path(res["run_dir"]) / "report.html").is_file()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_chunked_head_loss_gives_the_same_loss_and_gradients_as_full_logits(tiny_model_dir, tmp_path, method):
    """The chunked output head (default) against the model's own logits: same loss, same gradients
    for the hidden layers and, in full fine-tuning, for the (tied) head/embedding weight."""
    from nbatune.data.tokenize import PackedCollator

    cfg, tok, rows, model = _parts(tiny_model_dir, tmp_path, method)
    inputs = {k: v for k, v in PackedCollator(tok.pad_token_id, 96)(rows[:12]).items() if k != "real_tokens"}
    results = []
    for chunk in (0, 7):  # 7: several chunks, the last one short
        model.zero_grad()
        loss, n = answer_only_loss(model, inputs, chunk_tokens=chunk)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), n, grads))
    (la, na, ga), (lb, nb, gb) = results
    assert na == nb > 14
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and len(ga) > 0
    if method == "full":
        assert any("embed_tokens" in k for k in ga)  # the tied head's gradient arrives
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6, msg=k)
