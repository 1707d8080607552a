"""What a run leaves behind: loadable with plain transformers/PEFT, and a report that rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import ANSWERING, tiny_config
from nbatune.compare import Comparison

TECHNIQUES = ("full", "lora", "qlora")


@pytest.fixture(scope="module")
def run(answering_model_dir, tmp_path_factory):
    """A run on the answering tiny model, checkpoints on: every model gives non-empty answers, and no two
    models give the same list of answers (checked below), so a reload of the wrong model cannot pass."""
    tmp = tmp_path_factory.mktemp("artifacts")
    cmp = Comparison(tiny_config(answering_model_dir, tmp, methods=list(TECHNIQUES),
                                 **{**ANSWERING, "train.save_steps": 2}))
    cmp.setup()
    res = cmp.execute()
    return cmp, res


def test_the_fixture_models_answer_and_answer_differently(run):
    _, res = run
    answers = {m: res[m]["predictions"] for m in ("base", *TECHNIQUES)}
    assert all(all(a) for a in answers.values()), "every model must answer every question"
    assert len({tuple(a) for a in answers.values()}) == 4, "no two models may give the same answers"
    assert any(res[m]["accuracy"] > 0 for m in answers) and len({res[m]["accuracy"] for m in answers}) > 1


def test_saved_adapter_reloads_with_plain_peft_and_gives_the_same_logits(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cmp, res = run
    base_dir = res["model_path"]
    ids = torch.tensor([cmp.train_rows[0]["input_ids"]])
    # the model as trained, rebuilt in memory from the same base and the saved weights
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, res["lora"]["saved_path"]).eval()
    adapter_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in adapter_b), "the saved adapter must hold trained (non-zero) B weights"
    with torch.no_grad():
        a = reloaded(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)(input_ids=ids).logits
    assert not torch.allclose(a, plain), "the adapter must change the output"
    from nbatune.inference import merge_adapter

    merged_dir = merge_adapter(res["run_dir"], "lora", tmp_path / "merged", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, a, rtol=1e-4, atol=1e-4)
    assert (Path(merged_dir) / "model.safetensors").is_file()
    bf16_dir = merge_adapter(res["run_dir"], "lora", tmp_path / "merged-bf16")
    assert AutoModelForCausalLM.from_pretrained(bf16_dir).dtype == torch.bfloat16  # the default export


@pytest.mark.parametrize("method", TECHNIQUES)
def test_a_reloaded_model_reproduces_its_scored_answers_and_no_other_models(run, method):
    from nbatune.evaluation import answer_and_score
    from nbatune.inference import load_from_run

    cmp, res = run
    model, tok, rt, _ = load_from_run(res["run_dir"], method)
    again = answer_and_score(model, tok, cmp.test_records, rt, cmp.cfg.eval, cmp.pools)
    assert again["predictions"] == res[method]["predictions"] and again["accuracy"] == res[method]["accuracy"]
    for other in ("base", *TECHNIQUES):  # what a reload of the wrong technique, or of the base, would give
        if other != method:
            assert again["predictions"] != res[other]["predictions"], other


@pytest.fixture(scope="module")
def bf16_run(answering_model_dir, tmp_path_factory):
    """The adapters trained and scored in bf16, as the default run on a CPU with bf16: QLoRA's embeddings and norms
    then stay in bf16 (``quant.upcast_frozen: false``), which PEFT's own preparation of a 4-bit base would upcast."""
    cmp = Comparison(tiny_config(answering_model_dir, tmp_path_factory.mktemp("bf16"), methods=["lora", "qlora"],
                                 **{**ANSWERING, "train.precision": "bf16", "eval.retention": False}))
    cmp.setup()
    return cmp, cmp.execute()


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_bf16_adapter_reloads_as_scored_through_nbatune_and_through_its_model_cards_code(bf16_run, method):
    """``load_from_run`` gives the scored answers of a bf16 run, and the "How to load" code in the adapter's model
    card builds the same model (the same logits). Before the fix a bf16 QLoRA reloaded with fp32 embeddings and
    norms answered 269 of the default run's 320 test questions as scored; the card's code, without the load dtype,
    also rounded the 4-bit weights from other values."""
    from nbatune.evaluation import answer_and_score, eval_mode
    from nbatune.inference import load_from_run

    cmp, res = bf16_run
    assert res[method]["status"] == "ok", res[method].get("error")
    model, tok, rt, _ = load_from_run(res["run_dir"], method)
    assert rt.precision == "bf16"
    frozen = {p.dtype for n, p in model.named_parameters() if "lora_" not in n and type(p).__name__ != "Params4bit"}
    assert frozen == {torch.bfloat16}, frozen
    again = answer_and_score(model, tok, cmp.test_records, rt, cmp.cfg.eval, cmp.pools)
    assert again["predictions"] == res[method]["predictions"]
    card = (Path(res[method]["saved_path"]) / "README.md").read_text()
    code = card.split("## How to load", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code.replace('"path/to/this/folder"', repr(res[method]["saved_path"])), namespace)  # noqa: S102
    ids = torch.tensor([cmp.train_rows[0]["input_ids"][:48]])
    with torch.no_grad(), rt.autocast():
        torch.testing.assert_close(eval_mode(namespace["model"])(input_ids=ids).logits, model(input_ids=ids).logits,
                                   rtol=0, atol=0)


def test_full_model_reloads_with_plain_transformers(run):
    from transformers import AutoModelForCausalLM

    _, res = run
    model = AutoModelForCausalLM.from_pretrained(res["full"]["saved_path"])
    assert sum(p.numel() for p in model.parameters()) == res["full"]["total_params"]


def test_report_rebuilds_from_saved_results_without_retraining(run, tmp_path):
    import shutil

    from nbatune.report import rebuild, table

    _, res = run
    run_dir = Path(shutil.copytree(res["run_dir"], tmp_path / "run"))  # the module's run stays as it was
    first = (run_dir / "report.md").read_text()
    (run_dir / "report.md").unlink()
    again = rebuild(run_dir)
    assert (run_dir / "report.md").read_text() == first
    assert table(again) in first
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    for png in ("loss_curves.png", "accuracy_per_category.png", "cost_bars.png", "pareto.png"):
        assert (run_dir / png).stat().st_size > 1000
    assert "![accuracy against cost](pareto.png)" in first


def test_the_pareto_front_keeps_only_the_points_nothing_cheaper_beats():
    from nbatune.report import front

    # (cost, accuracy): the second is beaten by the first, the fourth by the third; ties are not beaten
    points = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.7), (0.5, 0.1), (0.5, 0.1)]
    assert front(points) == [0, 2, 4, 5]


def test_rebuild_report_gives_the_same_table_from_a_saved_run(run):
    from nbatune.report import table

    cmp, res = run
    again = Comparison({"output_dir": "unused"}).rebuild_report(res["run_dir"])
    assert table(again) == table(res)
    assert again["comparison"]["recommendation"] == res["comparison"]["recommendation"]


@pytest.mark.parametrize("method", TECHNIQUES)
def test_ask_prints_the_answer_that_was_scored(run, capsys, method):
    """One question alone, as a user asks it, gets the answer scored in a batch; the question is one whose
    scored answers differ between every two models, so printing another model's answer would fail."""
    from nbatune.baselines import question_text
    from nbatune.cli import main
    from nbatune.evaluation import answer_budgets

    cmp, res = run
    models = ("base", *TECHNIQUES)
    i = next(i for i in range(len(cmp.test_records))
             if len({res[m]["predictions"][i] for m in models}) == len(models))
    rec = cmp.test_records[i]
    budget = answer_budgets(cmp.tokenizer, [rec], cmp.cfg.eval.max_new_tokens)[0]
    assert main(["ask", res["run_dir"], question_text(rec), "--method", method, "--max-new-tokens", str(budget)]) == 0
    assert capsys.readouterr().out.strip() == res[method]["predictions"][i]


def test_cli_validate_exits_1_with_the_reason(tmp_path, capsys):
    from nbatune.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "reply": "a"}) + "\n")
    assert main(["dataset", "validate", str(bad)]) == 1
    assert "cannot tell the format" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    assert main(["dataset", "validate", str(good)]) == 0
    assert '"format": "alpaca"' in capsys.readouterr().out


def test_two_runs_never_share_an_output_directory(run, tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, run_name="same")
    Comparison(cfg).setup()
    with pytest.raises(FileExistsError, match="already exists"):
        Comparison(cfg).setup()


def test_default_run_folders_never_collide_even_in_the_same_second(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path)
    dirs = {Comparison(cfg).setup().run_dir for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() for d in dirs)


def test_a_failing_method_is_recorded_and_the_others_still_run(tiny_model_dir, tmp_path):
    # a learning rate that blows the weights up makes 'full' fail on a real non-finite loss
    cfg = tiny_config(tiny_model_dir, tmp_path, methods=["full", "lora"], evaluate_base=False)
    cfg["train"]["learning_rate"]["full"] = 1e9
    cfg["train"]["max_steps"] = 12
    cfg["train"]["lr_scheduler"] = "constant"
    res = Comparison(cfg).execute()
    assert res["full"]["status"] == "failed" and "non-finite loss" in res["full"]["error"]
    assert "at step 2" in res["full"]["error"]  # caught at the first step after the blow-up, not at the end
    assert res["lora"]["status"] == "ok"
    on_disk = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    assert on_disk["full"]["status"] == "failed" and on_disk["lora"]["accuracy"] is not None
    assert (Path(res["run_dir"]) / "full-error.txt").is_file()


def test_results_json_is_written_atomically(tmp_path, monkeypatch):
    import os

    from nbatune.results import write_json_atomic

    path = tmp_path / "results.json"
    write_json_atomic(path, {"v": 1})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.slow
def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = Path(__file__).parent.parent
    monkeypatch.setenv("NBATUNE_QUICKSTART_OVERRIDES", f"output_dir={tmp_path} train.max_steps=3 train.batch_size=4 "
                                                        "eval.max_test_examples=8 data.val_size=8 eval.max_new_tokens=12")
    nb = nbformat.read(root / "examples" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "QLoRA (4-bit)" in outputs and "lora:" in outputs
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_training_metrics_reach_tensorboard_when_asked(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_config(tiny_model_dir, tmp_path, methods=["lora"], evaluate_base=False,
                      **{"train.report_to": ["tensorboard"], "train.max_steps": 2})
    res = Comparison(cfg).execute()
    assert res["lora"]["status"] == "ok", res["lora"]["error"]
    events = list(Path(res["run_dir"]).rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_export_writes_a_bf16_checkpoint_plain_transformers_loads(run, method, capsys):
    from transformers import AutoModelForCausalLM

    from nbatune.cli import main

    _, res = run
    out = Path(res["run_dir"]) / f"export-{method}"
    assert main(["export", res["run_dir"], "--method", method, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "bfloat16" in said and ("unquantized base" in said) == (method == "qlora")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and not any("lora" in n for n, _ in model.named_parameters())


# A GGUF written with the gguf package, read back by transformers' own GGUF loader: the same logits as the
# merged model within the rounding of the format (measured maxima in BENCHMARKS.md), the same tokens.
# (max |logit difference| / logit standard deviation, share of positions with the same greedy next token)
GGUF_TOLERANCE = {"f16": (0.02, 1.0), "q8_0": (0.25, 0.9)}


def _gguf_round_trip(model, tok, gguf_path: Path, texts: list[str]) -> tuple[float, float]:
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    alone = gguf_path.parent / f"{gguf_path.stem}-alone"  # as a llama.cpp user gets it: no tokenizer.json beside
    alone.mkdir()
    shutil.copy(gguf_path, alone / gguf_path.name)
    back = AutoModelForCausalLM.from_pretrained(alone, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    back_tok = AutoTokenizer.from_pretrained(alone, gguf_file=gguf_path.name)
    for t in texts:
        assert back_tok(t, add_special_tokens=False)["input_ids"] == tok(t, add_special_tokens=False)["input_ids"], t
    assert back_tok.eos_token_id == tok.eos_token_id
    ids = tok(" ".join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want, got = model.eval()(input_ids=ids).logits, back(input_ids=ids).logits
    same_next = float((want.argmax(-1) == got.argmax(-1)).float().mean())
    return float((want - got).abs().max() / want.std()), same_next


def _within(measured: tuple[float, float], qtype: str) -> bool:
    max_diff, same_next = GGUF_TOLERANCE[qtype]
    return measured[0] < max_diff and measured[1] >= same_next


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_gguf_export_reads_back_with_the_merged_models_logits(run, qtype, capsys):
    from transformers import AutoModelForCausalLM

    from nbatune.cli import main
    from nbatune.modeling import load_tokenizer

    cmp, res = run
    out = Path(res["run_dir"]) / f"gguf-{qtype}"
    assert main(["export", res["run_dir"], "--method", "lora", "--out", str(out), "--dtype", "float32",
                 "--gguf", qtype]) == 0
    assert f"model-{qtype}.gguf" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = load_tokenizer(str(out), cmp.cfg.model)
    texts = [cmp.tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in cmp.test_records[:3]]
    measured = _gguf_round_trip(merged, tok, out / f"model-{qtype}.gguf", texts)
    assert _within(measured, qtype), measured


def _render_ollama_chatml(template: str, system: str, messages: list[dict]) -> str:
    """The three constructs CHATML_TEMPLATE uses, as Ollama's Go template engine executes them."""
    import re

    m = re.fullmatch(r"\{\{- if \.System \}\}(.*?)\{\{ end \}\}\{\{- range \.Messages \}\}(.*?)\{\{ end \}\}(.*)",
                     template, re.S)
    assert m, template
    head, each, tail = m.groups()
    out = head.replace("{{ .System }}", system) if system else ""
    for msg in messages:
        out += each.replace("{{ .Role }}", msg["role"]).replace("{{ .Content }}", msg["content"])
    return out + tail


def test_the_ollama_modelfile_beside_the_gguf_prompts_as_the_model_was_trained(run):
    """FROM the GGUF beside it, the run's system prompt, the end-of-turn stop and greedy decoding; its TEMPLATE
    renders a conversation to the very text the tokenizer's chat template gives (what the model saw)."""
    import re

    from nbatune.cli import main

    cmp, res = run
    out = Path(res["run_dir"]) / "gguf-ollama"
    assert main(["export", res["run_dir"], "--method", "lora", "--out", str(out), "--gguf", "f16"]) == 0
    text = (out / "Modelfile").read_text()
    assert re.search(r"^FROM \./model-f16\.gguf$", text, re.M) and (out / "model-f16.gguf").is_file()
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.M | re.S).group(1)
    assert system == cmp.cfg.model.system_prompt
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)[0] == "<|im_end|>"
    assert re.search(r"^PARAMETER temperature 0$", text, re.M)
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.M | re.S).group(1)
    question = cmp.test_records[0]["messages"]
    user = [m for m in question if m["role"] == "user"]
    want = cmp.tokenizer.apply_chat_template([{"role": "system", "content": system}, *user], tokenize=False,
                                             add_generation_prompt=True)
    assert _render_ollama_chatml(template, system, user) == want


def test_no_ollama_template_is_guessed_for_a_chat_format_it_does_not_know():
    from nbatune.gguf_export import GGUFExportError, ollama_modelfile
    from tests.helpers import tiny_tokenizer

    tok = tiny_tokenizer("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(GGUFExportError, match="ChatML"):
        ollama_modelfile("model-f16.gguf", tok, "sys")


def test_gguf_export_refuses_a_non_llama_model_and_names_the_alternative(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from nbatune.gguf_export import GGUFExportError, write_gguf
    from tests.helpers import tiny_tokenizer

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=512))
    with pytest.raises(GGUFExportError, match="convert_hf_to_gguf"):
        write_gguf(model, tiny_tokenizer(), tmp_path / "x.gguf", "f16")
    with pytest.raises(GGUFExportError, match="q4_k"):
        write_gguf(model, tiny_tokenizer(), tmp_path / "x.gguf", "q4_k")


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_gguf_export_of_the_embedded_model_round_trips(tmp_path, qtype):
    """SmolLM2 with its real tokenizer (49152 tokens, digit-splitting pre-tokenizer, chat template)."""
    from transformers import AutoModelForCausalLM

    from nbatune.config import ModelConfig
    from nbatune.gguf_export import pre_tokenizer_name, write_gguf
    from nbatune.modeling import load_tokenizer, resolve_model_path

    cfg = ModelConfig()
    path = resolve_model_path(cfg)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = load_tokenizer(path, cfg)
    out = write_gguf(model, tok, tmp_path / f"smollm2-{qtype}.gguf", qtype,
                     pre=pre_tokenizer_name(cfg.name_or_path))
    texts = [tok.apply_chat_template([{"role": "user", "content": "What was Stephen Curry's TS% in 2015-16?"}],
                                     tokenize=False, add_generation_prompt=True),
             "The Bulls went 72-10 in 1995-96; 1,234 points, 3.5% and émigré."]
    measured = _gguf_round_trip(model, tok, out, texts)
    assert _within(measured, qtype), measured


def test_sample_answers_are_marked_in_plain_text_that_any_font_renders(run):
    _, res = run
    text = (Path(res["run_dir"]) / "report.md").read_text() + (Path(res["run_dir"]) / "report.html").read_text()
    assert "(right):" in text or "(wrong):" in text
    assert not any(ch in text for ch in "✅❌✓✗✔✘")


def test_each_technique_leaves_predictions_and_a_train_log_that_pandas_reads(run):
    import pandas as pd

    _, res = run
    run_dir = Path(res["run_dir"])
    for m in ("base", *TECHNIQUES):
        preds = pd.read_json(run_dir / f"predictions-{m}.jsonl", lines=True)
        assert list(preds.columns) == ["question", "category", "format", "unseen", "reference", "prediction", "correct"]
        assert preds["unseen"].tolist() == [q["unseen"] for q in res["test_questions"]] and preds["unseen"].any()
        assert preds["prediction"].tolist() == res[m]["predictions"]
        assert preds["correct"].mean() == pytest.approx(res[m]["accuracy"])
        assert preds["reference"].tolist() == [q["answer"] for q in res["test_questions"]]
    assert not (run_dir / "train_log-base.jsonl").exists()
    for m in TECHNIQUES:
        log = pd.read_json(run_dir / f"train_log-{m}.jsonl", lines=True)
        assert log["step"].tolist() == [s for s, _ in res[m]["loss_curve"]] == [1, 2, 3, 4]
        assert log["loss"].tolist() == pytest.approx([loss for _, loss in res[m]["loss_curve"]])
        assert log["tokens"].is_monotonic_increasing and log["tokens"].iloc[-1] == res[m]["train_tokens"]
        assert log["elapsed_s"].is_monotonic_increasing and (log["learning_rate"] > 0).all()


@pytest.mark.parametrize("method", TECHNIQUES)
def test_every_saved_model_and_export_has_a_model_card_with_the_runs_evidence(run, method, tmp_path):
    import yaml
    from huggingface_hub import ModelCard

    from nbatune.inference import export

    _, res = run
    r = res[method]
    for folder in (Path(r["saved_path"]), export(res["run_dir"], method, tmp_path / "export", dtype="float32")):
        card = ModelCard.load(folder / "README.md")
        d = card.data.to_dict()
        assert d["base_model"] == res["config"]["model"]["name_or_path"]  # a local path here; upstream id if embedded
        assert d["library_name"] == ("transformers" if method == "full" else "peft")
        assert d["pipeline_tag"] == "text-generation" and {"nbatune", method} <= set(d["tags"])
        assert not any(t.startswith("base_model:") for t in d["tags"])
        results = {m["name"]: m["value"] for x in d["model-index"][0]["results"] for m in x["metrics"]}
        results = {k.split(", 95%")[0]: v for k, v in results.items()}
        assert results["answer accuracy"] == r["accuracy"]
        unseen = next(v for k, v in results.items() if k.startswith("answer accuracy, unseen"))
        assert unseen == r["formats"]["unseen"]["accuracy"]
        assert any(k.startswith("general retention") and v == r["retention"]["accuracy"] for k, v in results.items())
        strongest = res["comparison"]["strongest_baseline"]
        assert any(k.startswith("strongest baseline") and v == res["baselines"][strongest]["accuracy"]
                   for k, v in results.items())
        assert "[More Information Needed]" not in card.text and "## How to load" in card.text
        config = yaml.safe_load(card.text.split("```yaml\n", 1)[1].split("```", 1)[0])
        assert config == json.loads(json.dumps(res["config"]))
        assert f"{r['steps']} optimizer steps" in card.text


def test_the_embedded_models_card_names_its_upstream_id_and_its_q4_1_origin():
    from nbatune.config import ModelConfig
    from nbatune.provenance import origin

    prov = origin(ModelConfig(), "/somewhere/smollm2-135m-instruct")
    assert prov["upstream"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "Q4_1" in prov["note"]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lm_eval_harness_scores_a_run_as_the_run_scored_itself(run, method, capsys):
    """The run's test and retention splits as lm-eval tasks, answered through lm-eval's own request pipeline
    (task YAML, prompts, stop sequences, process_results hook, aggregation): the same accuracy as the run's
    own evaluation on the same questions, and the CLI prints both."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional extra nbatune[harness]")
    from nbatune.cli import main
    from nbatune.harness import evaluate

    cmp, res = run
    got = evaluate(res["run_dir"], method)
    assert set(got) == {"nbatune_nba", "nbatune_retention"}
    assert got["nbatune_nba"]["n"] == len(cmp.test_records) and got["nbatune_retention"]["n"] == 149
    assert got["nbatune_nba"]["acc"] == pytest.approx(res[method]["accuracy"]) == got["nbatune_nba"]["nbatune"]
    assert 0 < got["nbatune_nba"]["acc"] < 1  # the answering fixture: some right, some wrong
    assert got["nbatune_retention"]["acc"] == pytest.approx(res[method]["retention"]["accuracy"])
    assert main(["harness", res["run_dir"], "--method", method, "--limit", "5"]) == 0
    assert "nbatune_nba: lm-eval acc" in capsys.readouterr().out


def test_every_run_names_its_matmul_kind_and_measures_the_peak_its_mfu_divides_by(run):
    """The CPU kind (AMX or not) and the bf16/fp32 matmul peak measured in the same run: each technique's MFU
    is its training FLOP/s over that peak (issue 21: figures from different machines do not compare)."""
    from pathlib import Path

    from nbatune.measure import cpu_matmul_features
    from nbatune.runtime import resolve

    _, res = run
    m = res["environment"]["matmul"]
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    assert m["kind"] == ("AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else m["kind"])
    assert m["features"] == cpu_matmul_features() and m["fp32_flops"] > 1e9
    assert m["bf16_flops"] > 1e9 or m["emulated"] == ["bf16"]  # AVX2: bf16 in software, measured small
    precision = resolve(res["config"]["train"]["device"], res["config"]["train"]["precision"]).precision
    for method in ("full", "lora", "qlora"):
        r = res[method]
        peak = m["fp32_flops"] if precision == "fp32" else m["bf16_flops"]
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * r["train_flops_per_token"] / peak)
        assert 0 < r["mfu"] < 1
    # a whole model: 6 FLOPs per parameter and token; an adapter technique (frozen base, same shape plus the
    # adapters): 4
    assert res["full"]["train_flops_per_token"] / 6 < res["lora"]["train_flops_per_token"] / 4


def test_llama_cpp_gives_the_scored_answers_from_the_exported_gguf(run):
    """The exported f16 GGUF in real llama.cpp (llama-cpp-python), prompted through the GGUF's own chat template
    (create_chat_completion reads it from the file), greedy, stopped at the line break as the run was: at least
    90% of the test answers are the scored ones (the export is merged and f16, the scored model bf16 unmerged)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp is the optional extra nbatune[llamacpp] "
                                                        "(built from source; .ci/run installs it)")
    from nbatune.cli import main
    from nbatune.evaluation import answer_budgets

    cmp, res = run
    out = Path(res["run_dir"]) / "gguf-llamacpp"
    assert main(["export", res["run_dir"], "--method", "lora", "--out", str(out), "--gguf", "f16"]) == 0
    llm = llama_cpp.Llama(model_path=str(out / "model-f16.gguf"), n_ctx=512, n_threads=2, verbose=False)
    budgets = answer_budgets(cmp.tokenizer, cmp.test_records, cmp.cfg.eval.max_new_tokens)
    got = [llm.create_chat_completion(messages=r["messages"][:-1], temperature=0.0, max_tokens=b,
                                      stop=["\n"])["choices"][0]["message"]["content"].strip()
           for r, b in zip(cmp.test_records, budgets)]
    scored = res["lora"]["predictions"]
    same = sum(g == s for g, s in zip(got, scored))
    assert same >= 0.9 * len(scored), list(zip(got, scored))
    assert sum(bool(g) for g in got) == len(got)  # every question answered: the template and stop work
