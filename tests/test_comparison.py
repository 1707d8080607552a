"""What makes the comparison trustworthy: parity between techniques, seeds that can be varied on a
fixed test set, baselines, and the statistics that decide what is "real"."""

from __future__ import annotations

import pytest
from tests.helpers import ANSWERING, tiny_config

from nbatune import baselines, scoring
from nbatune.compare import Comparison
from nbatune.decisions import holm, mcnemar


def test_mcnemar_matches_the_exact_binomial():
    a = [True] * 10 + [False] * 2 + [True] * 20
    b = [False] * 10 + [True] * 2 + [True] * 20
    # 10 vs 2 discordant pairs: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096
    assert mcnemar(a, b) == pytest.approx(2 * 79 / 4096)
    assert mcnemar(a, a) == 1.0


def test_holm_multiplies_by_the_number_left_and_stays_monotone():
    adj = holm({"x": 0.01, "y": 0.04, "z": 0.03})
    assert adj == pytest.approx({"x": 0.03, "z": 0.06, "y": 0.06})


def test_trivial_baseline_finds_the_constant_and_the_copied_number():
    def rec(cat, q, a, kind, tol=0.0):
        return {"category": cat, "answer": a, "answer_type": kind, "tolerance": tol,
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    train = [rec("team", "who?", "Boston Celtics", "name")] * 3 + [rec("team", "who?", "Miami Heat", "name")]
    train += [rec("copy", f"{i} PTS, {i + 3} AST", f"AST = {i + 3}", "number", 0.01) for i in range(5)]
    pools = scoring.candidate_pools(train)
    rules = baselines.fit_trivial(train, pools)
    assert rules["team"] == {"rule": "constant", "answer": "Boston Celtics", "train_accuracy": 0.75}
    assert rules["copy"]["rule"] == "copy_number" and rules["copy"]["index"] == 1
    test = [rec("copy", "7 PTS, 10 AST", "AST = 10", "number", 0.01), rec("team", "who?", "Miami Heat", "name")]
    assert baselines.trivial_predictions(rules, test) == ["10", "Boston Celtics"]


def test_trivial_baseline_fits_only_the_categories_asked_for():
    def rec(cat, a):
        return {"category": cat, "answer": a, "answer_type": "name", "tolerance": 0.0,
                "messages": [{"role": "user", "content": "who?"}, {"role": "assistant", "content": a}]}

    train = [rec("team", "Boston Celtics")] * 3 + [rec("team", "Miami Heat")] * 2 + [rec("other", "Orlando Magic")]
    pools = {"team": ["Boston Celtics", "Miami Heat"], "other": ["Orlando Magic"]}
    rules = baselines.fit_trivial(train, pools, {"team"})
    assert rules == {"team": {"rule": "constant", "answer": "Boston Celtics", "train_accuracy": 0.6}}


def test_few_shot_prompts_hold_k_solved_examples_of_the_same_category():
    sys_msg = {"role": "system", "content": "S"}

    def rec(cat, i):
        return {"category": cat, "messages": [sys_msg, {"role": "user", "content": f"{cat} q{i}"},
                                              {"role": "assistant", "content": f"{cat} a{i}"}]}

    train = [rec("a", i) for i in range(5)] + [rec("b", i) for i in range(5)]
    shots = baselines.few_shot_records([rec("a", 99)], train, 3, seed=0)[0]["messages"]
    assert shots[0] == sys_msg and len(shots) == 1 + 2 * 3 + 2
    assert all(m["content"].startswith("a ") for m in shots[1:])
    assert shots[-2]["content"] == "a q99"
    assert baselines.few_shot_records([rec("a", 99)], train, 3, seed=0) == baselines.few_shot_records(
        [rec("a", 99)], train, 3, seed=0)
    # one draw per category: every question of a category gets the same examples, marked as the shared turns
    many = baselines.few_shot_records([rec("a", 98), rec("b", 97), rec("a", 99)], train, 3, seed=0)
    assert many[0]["messages"][:-2] == many[2]["messages"][:-2] != many[1]["messages"][:-2]
    assert [r["shared_turns"] for r in many] == [7, 7, 7]


def test_every_technique_sees_the_same_examples_in_the_same_order(tiny_model_dir, tmp_path, monkeypatch):
    from nbatune.data import tokenize

    seen: dict[str, list] = {}
    current = []
    real_call = tokenize.PackedCollator.__call__

    def recording(self, batch):
        current.append([tuple(b["input_ids"]) for b in batch])
        return real_call(self, batch)

    monkeypatch.setattr(tokenize.PackedCollator, "__call__", recording)
    cmp = Comparison(tiny_config(tiny_model_dir, tmp_path, evaluate_base=False, **{"eval.retention": False}))
    cmp.setup()
    for m in ("full", "lora", "qlora"):
        current.clear()
        res = cmp._run_method(m, cmp.cfg.seed, save=False)
        assert res.status.value == "ok", res.error
        seen[m] = (list(current), res.steps, res.train_tokens)
    assert seen["full"] == seen["lora"] == seen["qlora"]
    assert len(seen["full"][0]) >= cmp.cfg.train.max_steps  # the data loader may collate one batch ahead
    assert seen["full"][1] == cmp.cfg.train.max_steps


def test_another_seed_changes_the_adapter_initialisation_and_the_data_order(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from nbatune.data import tokenize
    from nbatune.modeling import load_model

    batches: list = []
    real_call = tokenize.PackedCollator.__call__
    monkeypatch.setattr(tokenize.PackedCollator, "__call__",
                        lambda self, batch: batches.append([tuple(b["input_ids"]) for b in batch]) or real_call(self, batch))
    cmp = Comparison(tiny_config(tiny_model_dir, tmp_path, evaluate_base=False, **{"eval.retention": False})).setup()
    orders, adapters = {}, {}
    for run, seed in (("a", 0), ("b", 1), ("again", 0)):
        batches.clear()
        assert cmp._run_method("lora", seed, save=False).status.value == "ok"
        orders[run] = list(batches)
        model = load_model(cmp.model_path, "lora", cmp.cfg.model, cmp.rt, cmp.cfg.lora, cmp.cfg.quant, seed)
        adapters[run] = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])
    assert orders["a"] == orders["again"] and orders["a"] != orders["b"]
    assert sorted(map(sorted, orders["a"])) != sorted(map(sorted, orders["b"])) or orders["a"] != orders["b"]
    assert torch.equal(adapters["a"], adapters["again"]) and not torch.equal(adapters["a"], adapters["b"])


def test_repeats_vary_training_seeds_on_one_fixed_test_set(answering_model_dir, tmp_path):
    import statistics

    cfg = tiny_config(answering_model_dir, tmp_path, methods=["lora", "qlora"], evaluate_base=False,
                      **{**ANSWERING, "train.repeats": 2, "eval.retention": False})
    res = Comparison(cfg).setup().execute()
    for m in ("lora", "qlora"):
        reps = res[m]["repeats"]
        assert [r["seed"] for r in reps] == [0, 1]
        assert all(len(r["correct"]) == len(res["test_questions"]) for r in reps)
        # another seed: another adapter initialisation and data order, so other losses from the first step on
        curves = [r["learning_curve"] for r in reps]
        assert reps[0]["final_train_loss"] != reps[1]["final_train_loss"], m
        assert curves[0][-1]["exact_match"] != curves[1][-1]["exact_match"] or reps[0]["correct"] != reps[1]["correct"]
        accs = [r["accuracy"] for r in reps]
        assert res[m]["accuracy_mean"] == pytest.approx(statistics.mean(accs))
        assert res[m]["accuracy_sd"] == pytest.approx(statistics.stdev(accs))
    pair = res["comparison"]["pairs"]["qlora-vs-lora"]
    spread = pair["seeds"]
    assert spread["seeds"] == 2 and "p_holm" in pair
    assert spread["mean_diff"] == pytest.approx(res["qlora"]["accuracy_mean"] - res["lora"]["accuracy_mean"])
    assert spread["spread"] == pytest.approx(2 * max(res["qlora"]["accuracy_sd"], res["lora"]["accuracy_sd"]))
    # another training seed trains differently; another data seed draws another test set
    other = Comparison({**cfg, "seed": 5}).setup()
    assert [r["messages"] for r in other.test_records] == [r["messages"] for r in Comparison(cfg).setup().test_records]
    moved = Comparison({**cfg, "data": {**cfg["data"], "seed": 5}}).setup()
    assert [r["messages"] for r in moved.test_records] != [r["messages"] for r in other.test_records]


def test_measuring_the_learning_curve_leaves_4bit_weights_trainable(tiny_model_dir, tmp_path):
    """bitsandbytes repacks a 4-bit weight into an inference-only layout on its first eval-mode forward
    on AVX512-BF16 CPUs; a mid-training measurement must not trigger it, or QLoRA stops learning."""
    import torch

    from nbatune.evaluation import teacher_forced_exact_match
    from nbatune.runtime import Runtime
    from tests.helpers import tiny_config as cfg_for

    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    from nbatune.modeling import load_model

    model = load_model(cmp.model_path, "qlora", cmp.cfg.model, Runtime("cpu", "bf16"), cmp.cfg.lora, cmp.cfg.quant, 0)
    model.train()
    teacher_forced_exact_match(model, cmp.tokenizer, cmp.val_rows[:4], Runtime("cpu", "bf16"))
    four_bit = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert four_bit and model.training
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit)
    assert all(m.weight.dtype == torch.uint8 for m in four_bit)


def test_a_dora_adapter_on_a_4bit_base_is_evaluated_on_the_weights_it_reads(tiny_model_dir, tmp_path):
    """DoRA dequantizes its 4-bit base weight inside its forward; once bitsandbytes has repacked that weight for
    inference (eval mode, no gradients, AVX512-BF16 CPU) PEFT reads garbage: QDoRA answered every question with
    an empty line. ``eval_mode`` keeps every 4-bit layer in training mode, QLoRA's too."""
    import torch

    from nbatune.evaluation import _is_4bit, eval_mode
    from nbatune.modeling import load_model
    from nbatune.runtime import Runtime
    from tests.helpers import tiny_config as cfg_for

    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    rt = Runtime("cpu", "bf16")
    ids = torch.tensor([cmp.train_rows[0]["input_ids"]])

    def logits(model):
        with torch.no_grad(), rt.autocast():
            return model(input_ids=ids).logits.float()

    model = load_model(cmp.model_path, "qdora", cmp.cfg.model, rt, cmp.cfg.lora, cmp.cfg.quant, 0).train()
    as_trained = logits(model)  # training mode: the layout training used
    eval_mode(model)
    torch.testing.assert_close(logits(model), as_trained)
    four_bit = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert four_bit and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit)
    model.eval()  # what eval_mode prevents: where bitsandbytes repacks, DoRA's answers go wrong
    repacked = logits(model)
    if any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit):
        assert not torch.allclose(repacked, as_trained, atol=1e-2)

    qlora = eval_mode(load_model(cmp.model_path, "qlora", cmp.cfg.model, rt, cmp.cfg.lora, cmp.cfg.quant, 0))
    logits(qlora)
    assert all(m.training == _is_4bit(m) for m in qlora.modules())
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in qlora.modules() if _is_4bit(m))


@pytest.mark.parametrize("method", ["qlora", "qdora"])
def test_4bit_weights_dequantized_once_per_call_give_the_same_logits_bit_for_bit(tiny_model_dir, tmp_path, method,
                                                                                monkeypatch):
    """Inside ``cached_weight_casts`` a 4-bit layer dequantizes its weight on its first forward and reuses it; the
    logits are bitwise those of bitsandbytes' own forward (which dequantizes at every call), over several
    forwards of different widths, and the layers' own forward is back afterwards."""
    import torch

    from nbatune.evaluation import _is_4bit, cached_weight_casts, eval_mode, teacher_forced_exact_match
    from nbatune.modeling import load_model
    from nbatune.runtime import Runtime
    from tests.helpers import tiny_config as cfg_for

    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    rt = Runtime("cpu", "bf16")
    model = eval_mode(load_model(cmp.model_path, method, cmp.cfg.model, rt, cmp.cfg.lora, cmp.cfg.quant, 0))
    with torch.no_grad():  # adapters that are not zero, so that their path counts too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    batches = [torch.tensor([r["input_ids"][:n] for r in cmp.train_rows[:3]]) for n in (9, 5, 12)]

    def logits():
        with torch.no_grad(), rt.autocast():
            return [model(input_ids=ids).logits.float() for ids in batches]

    own = logits()
    calls = []
    dequantize = torch.ops.bitsandbytes.dequantize_4bit.default
    monkeypatch.setattr(torch.ops.bitsandbytes.dequantize_4bit, "default",
                        lambda *a, **k: calls.append(1) or dequantize(*a, **k))
    with cached_weight_casts(model):
        once = logits()
        with cached_weight_casts(model):  # nested: the enclosing call's copy serves, and it restores the layers
            assert torch.equal(logits()[0], once[0])
        assert all("forward" in vars(m) for m in model.modules() if _is_4bit(m))
    four_bit = [m for m in model.modules() if _is_4bit(m)]
    assert all(torch.equal(a, b) for a, b in zip(once, own))
    assert "forward" not in vars(four_bit[0])
    if method == "qlora":  # DoRA dequantizes the weight again in its own forward, for its norm
        assert len(calls) == len(four_bit)
        calls.clear()  # teacher forcing over three batches: still once per call, not once per batch
        teacher_forced_exact_match(model, cmp.tokenizer, cmp.val_rows[:6], rt, batch_size=2)
        assert len(calls) == len(four_bit)


def _talkative_tiny_model(vocab_size: int):
    """A tiny random model with weights large enough that greedy decoding varies from token to token."""
    import torch

    from tests.helpers import tiny_llama

    model = tiny_llama(vocab_size, seed=3)
    torch.manual_seed(3)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16: LoRA's base
def test_batched_decoding_drops_finished_rows_and_matches_generate_one_by_one(tiny_model_dir, tmp_path, dtype):
    """Rows leave the batch at their own budget or stop token and waiting prompts take their places; every
    answer is exactly what ``generate`` gives the prompt alone."""
    import torch

    from nbatune import evaluation
    from nbatune.attention import ROW_SDPA, attention_kernel
    from tests.helpers import tiny_config as cfg_for

    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    tok, model = cmp.tokenizer, _talkative_tiny_model(len(cmp.tokenizer)).to(getattr(torch, dtype))
    prompts = [evaluation.render_prompt(tok, r["messages"]) for r in cmp.test_records[:6]]
    budgets = [3, 12, 5, 12, 1, 9]
    alone = []
    for p, b in zip(prompts, budgets):
        ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            alone.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=b, do_sample=False,
                                        pad_token_id=tok.pad_token_id, eos_token_id=None)[0, ids.shape[1]:].tolist())
    stop = [alone[1][4]]  # a token one row emits mid-answer: that row must end there, others go on
    want = [a[: a.index(stop[0]) + 1] if stop[0] in a else a for a in alone]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    for batch_size in (6, 3, 1):  # 3: finished rows' places go to the prompts still waiting
        with attention_kernel(model, ROW_SDPA):
            got = evaluation.greedy_decode(model, ids, budgets, stop, tok.pad_token_id, batch_size)
        assert got == want
    assert len({len(g) for g in got}) >= 3


def test_prompts_that_share_their_examples_read_them_once_and_answer_as_if_read_whole(tiny_model_dir, tmp_path):
    """Few-shot prompts: each category's examples are read once and the questions attend over that cache; in fp32
    the answers are those of every prompt read whole, whatever the batch (a prompt alone, rows of several
    categories together, rows whose own part is shorter than others' and reads the end of its prefix again)."""
    from nbatune import baselines, evaluation
    from nbatune.attention import ROW_SDPA, attention_kernel
    from tests.helpers import tiny_config as cfg_for

    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    tok, model = cmp.tokenizer, _talkative_tiny_model(len(cmp.tokenizer))
    records = baselines.few_shot_records(cmp.test_records[:8], cmp.records["train"], 2, seed=0)
    prompts = [evaluation.render_prompt(tok, r["messages"]) for r in records]
    shared = [evaluation.shared_prefix_tokens(tok, r["messages"][:r["shared_turns"]], p)
              for r, p in zip(records, prompts)]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    assert all(0 < s < len(i) for s, i in zip(shared, ids)) and len({tuple(i[:s]) for i, s in zip(ids, shared)}) > 1
    budgets = [6] * len(ids)
    calls, real = [], evaluation.prefill
    with attention_kernel(model, ROW_SDPA), pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluation, "prefill", lambda *a: calls.append(a[1].shape) or real(*a))
        whole = evaluation.greedy_decode(model, ids, budgets, [], tok.pad_token_id, 8)
        read_whole = sum(r * w for r, w in calls)
        prefixes = {len(i[:s]) for i, s in zip(ids, shared)}
        for batch_size in (8, 3, 1):
            calls.clear()
            assert evaluation.greedy_decode(model, ids, budgets, [], tok.pad_token_id, batch_size,
                                            shared=shared) == whole
            if batch_size == 8:  # each prefix read once, and fewer tokens read in all
                assert sorted(w for r, w in calls if w in prefixes) == sorted(prefixes)
                assert sum(r * w for r, w in calls) < read_whole
    # the seam: a prefix that does not tokenize as the prompt's start is not shared
    assert evaluation.shared_prefix_tokens(tok, records[0]["messages"][:1], "something else") == 0


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_an_answer_is_the_same_alone_as_in_any_batch(tiny_model_dir, tmp_path, method):
    """What ``nbatune ask`` prints for one question alone is what was scored in a batch: in bf16, left
    padding alone changed 17 of 64 answers of the embedded base before attention ran row by row. Bitwise:
    the same logits, so the same text, for every batch size."""
    import torch

    from nbatune import evaluation
    from nbatune.modeling import load_model
    from nbatune.runtime import Runtime
    from tests.helpers import tiny_config as cfg_for

    rt = Runtime("cpu", "bf16")
    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    cfg = cmp.cfg
    model = load_model(cmp.model_path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed)
    torch.manual_seed(5)
    for name, p in model.named_parameters():  # a model that talks: random weights of a visible size
        if p.dtype.is_floating_point and ("lora_B" in name or method == "full"):
            p.data.normal_(0, 0.3 if method == "full" else 0.5)
    records = cmp.test_records[:10]
    lengths = {len(evaluation.render_prompt(cmp.tokenizer, r["messages"])) for r in records}
    assert len(lengths) >= 5  # prompts of many lengths: the batches are padded
    scored = evaluation.generate_answers(model, cmp.tokenizer, records, rt, 12, batch_size=10)
    for bs in (1, 3):
        assert evaluation.generate_answers(model, cmp.tokenizer, records, rt, 12, batch_size=bs) == scored
    assert len(set(scored)) >= 3 and all(scored)


@pytest.mark.parametrize("kernel", ["row", "sdpa"])
def test_row_attention_gives_each_row_its_logits_alone_and_padded_sdpa_does_not(tiny_model_dir, tmp_path, kernel):
    """Bitwise, at the logits: a padded row's next-token logits (prefill, then two decode steps) equal the
    prompt's alone under ``ROW_SDPA``; plain SDPA over the padded batch does not (the failure it fixes).
    Prompts of equal length share one attention call and still get their own logits."""
    import torch

    from nbatune import evaluation
    from nbatune.attention import ROW_SDPA, attention_kernel
    from nbatune.runtime import Runtime
    from tests.helpers import tiny_config as cfg_for

    rt = Runtime("cpu", "bf16")
    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    tok, model = cmp.tokenizer, _talkative_tiny_model(len(cmp.tokenizer))
    prompts = [evaluation.render_prompt(tok, r["messages"]) for r in cmp.test_records[:8]]
    tok.padding_side = "left"

    def logits(batch):
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        out = []
        with attention_kernel(model, ROW_SDPA if kernel == "row" else "sdpa"), rt.autocast(), \
                evaluation.cached_weight_casts(model):
            ids, mask = enc["input_ids"], enc["attention_mask"]
            step, cache = evaluation.prefill(model, ids, mask)
            out.append(step)
            for _ in range(2):
                token = step.argmax(-1)
                mask = torch.cat([mask, mask.new_ones(len(ids), 1)], dim=1)
                res = model(input_ids=token[:, None], attention_mask=mask,
                            position_ids=mask.sum(-1, keepdim=True) - 1, cache=cache, use_cache=True)
                step, cache = res.logits[:, -1], res.cache
                out.append(step)
        return torch.stack(out, 1)

    batched = logits(prompts)
    # alone as ``greedy_decode`` answers it: beside a ghost copy, since a one-row bf16 matmul rounds differently
    same = [torch.equal(batched[i], logits([p, p])[0]) for i, p in enumerate(prompts)]
    assert all(same) if kernel == "row" else not all(same)


@pytest.mark.parametrize("queries", ["prefill", "decode"])
def test_row_attention_shares_calls_between_rows_and_still_gives_each_row_its_result_alone(queries, monkeypatch):
    """Reading prompts, rows with the same left padding share one SDPA call; decoding, rows whose key counts round
    up to the same bucket share one call although their counts differ. Each row's output is still bitwise the one
    it gets alone beside a ghost copy, and it is attention (close to SDPA over the row's own tokens)."""
    import types

    import torch
    import torch.nn.functional as F

    from nbatune import attention

    monkeypatch.setattr(attention, "KEY_BUCKET", 4)  # counts 9, 9, 9, 12, 12, 7: buckets 12 (five rows) and 8
    torch.manual_seed(0)
    pads, width = [3, 3, 3, 0, 0, 5], 12
    q_len = width if queries == "prefill" else 1
    module = types.SimpleNamespace(num_key_value_groups=2)
    calls = []
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, _sdpa=F.scaled_dot_product_attention, **k: calls.append(a[0].shape[0]) or _sdpa(*a, **k))
    monkeypatch.setattr(attention.torch, "softmax",
                        lambda *a, _softmax=torch.softmax, **k: calls.append(a[0].shape[0]) or _softmax(*a, **k))

    def run(rows, cut=0):  # cut: leading padding columns left out (the row as it is alone)
        n, w = len(rows), width - cut
        q, k, v = (torch.stack([t[r, :, cut if t is not Q or q_len > 1 else 0:] for r in rows]) for t in (Q, K, V))
        keys = torch.arange(w)[None, :] >= torch.tensor([pads[r] - cut for r in rows])[:, None]
        mask = keys[:, None, None, :].expand(n, 1, q_len - (cut if q_len > 1 else 0), w)
        if queries == "prefill":
            mask = mask & torch.ones(w, w, dtype=torch.bool).tril()[None, None] & keys[:, None, :, None]
        return attention.row_sdpa_attention(module, q, k, v, mask.contiguous(), scaling=0.25)[0]

    Q = torch.randn(6, 4, q_len, 16).bfloat16()
    K, V = (torch.randn(6, 2, width, 16).bfloat16() for _ in range(2))
    batched = run(range(6))
    assert sorted(calls) == ([1, 2, 3] if queries == "prefill" else [1, 5])
    order = [5, 0, 3, 1, 4, 2]  # no bucket's rows neighbours: gathered by index, not sliced
    assert all(torch.equal(o, batched[r]) for o, r in zip(run(order), order))
    for r in range(6):
        p = pads[r]
        assert torch.equal(batched[r, -(width - p) if q_len > 1 else 0:], run([r, r], cut=p)[0])
        want = F.scaled_dot_product_attention(Q[r:r + 1, :, p if q_len > 1 else 0:], K[r:r + 1, :, p:],
                                              V[r:r + 1, :, p:], is_causal=q_len > 1, scale=0.25, enable_gqa=True)
        torch.testing.assert_close(batched[r, -want.shape[2]:].float(), want[0].transpose(0, 1).float(),
                                   atol=2e-2, rtol=2e-2)


def test_cached_weight_casts_change_no_answer_and_leave_the_model_frozen(tiny_model_dir, tmp_path, monkeypatch):
    """Frozen fp32 weights are marked as requiring grad only while decoding, so that autocast casts them
    once per batch instead of once per step; the answers are the same as without, and the model stays frozen."""
    import contextlib

    import torch

    from nbatune import evaluation
    from nbatune.runtime import Runtime
    from tests.helpers import tiny_config as cfg_for

    rt = Runtime("cpu", "bf16")
    cmp = Comparison(cfg_for(tiny_model_dir, tmp_path, evaluate_base=False)).setup()
    model = _talkative_tiny_model(len(cmp.tokenizer))
    records = cmp.test_records[:6]
    cached = evaluation.generate_answers(model, cmp.tokenizer, records, rt, 10, batch_size=4)
    assert not any(p.requires_grad for p in model.parameters())
    monkeypatch.setattr(evaluation, "cached_weight_casts", lambda m: contextlib.nullcontext())
    assert evaluation.generate_answers(model, cmp.tokenizer, records, rt, 10, batch_size=4) == cached
    assert any(cached) and all(p.dtype == torch.float32 for p in model.parameters())
