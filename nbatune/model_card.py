"""A model card (``README.md``) in every saved model, adapter and export: the evidence a run has about
that model, in the Hub's metadata format (``huggingface_hub.ModelCard``), merged with the front matter
PEFT already wrote, never replacing it with a blank template."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import decisions, techniques
from .config import frozen_in_fp32
from .decisions import BASELINE_LABEL

DATASET = "nbatune NBA analytics instructions (built-in)"


def figures_at(results: dict, method: str, alpha: float) -> dict | None:
    """``method``'s result with the test figures measured at ``alpha``: the operating point's (top level) or
    the trained model's (``trained``); None when no test figures were measured there."""
    r = results[method]
    chosen = (r.get("operating_point") or {}).get("alpha", 1.0)
    if alpha == chosen:
        return r
    if alpha == 1.0 and r.get("trained"):
        return {**r, **r["trained"]}
    return None


def write(folder: str | Path, results: dict, method: str, note: str = "", alpha: float = 1.0) -> Path:
    """Write (or merge into) ``folder/README.md`` for ``method`` of the run in ``results``.

    Args:
        note: a sentence about this copy (e.g. an export's dtype and merge), put under the title.
        alpha: where on the learning-forgetting curve the folder's weights are (a run saves alpha 1; an
            export is at the operating point unless told otherwise). The card quotes the test figures
            measured at that alpha, and says where the operating point is.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    path = folder / "README.md"
    tech = techniques.get(method)
    r = figures_at(results, method, alpha)
    cfg = results["config"]
    base = (results.get("provenance") or {}).get("upstream") or cfg["model"]["name_or_path"]
    theirs = ModelCard.load(path).data.to_dict() if path.is_file() else {}
    cmp = results.get("comparison") or decisions.comparison(results)
    strongest = cmp.get("strongest_baseline")
    learned = forgot = None
    evals = []
    if r is not None:
        learned, forgot = _learned_forgot(results, r, strongest)
        evals.append(EvalResult(task_type="text-generation", dataset_type="nbatune-nba", dataset_name=DATASET,
                                dataset_split="test", metric_type="accuracy", metric_value=r["accuracy"],
                                metric_name=f"answer accuracy, 95% CI {_ci(r['accuracy_ci95'])}", verified=False))
        for side, f in (r.get("formats") or {}).items():
            evals.append(EvalResult(task_type="text-generation", dataset_type="nbatune-nba", dataset_name=DATASET,
                                    dataset_split="test", metric_type="accuracy", metric_value=f["accuracy"],
                                    metric_name=f"answer accuracy, {side} stat-line formats ({f['n']} questions), "
                                                f"95% CI {_ci(f['accuracy_ci95'])}", verified=False))
    if r is not None and (r.get("retention") or {}).get("accuracy") is not None:
        base_ret = forgot["base"] if forgot else None
        evals.append(EvalResult(task_type="text-generation", dataset_type="nbatune-retention",
                                dataset_name="general-knowledge retention questions", dataset_split="test",
                                metric_type="accuracy", metric_value=r["retention"]["accuracy"],
                                metric_name="general retention" + (f" (base {base_ret:.1%}; forgot "
                                                                   f"{forgot['diff']:+.1%}, 95% CI "
                                                                   f"{_ci(forgot['ci95'], signed=True)})"
                                                                   if forgot else ""), verified=False))
    if strongest:
        b = decisions.baseline_accuracies(results)[strongest]
        evals.append(EvalResult(task_type="text-generation", dataset_type="nbatune-nba", dataset_name=DATASET,
                                dataset_split="test", metric_type="accuracy", metric_value=b["accuracy"],
                                metric_name=f"strongest baseline, not this model: {BASELINE_LABEL.get(strongest)}"
                                            f", 95% CI {_ci(b['accuracy_ci95'])}", verified=False))
    tags = [t for t in theirs.get("tags") or [] if not t.startswith("base_model:")]  # PEFT's names a local path
    tags += [t for t in ("nbatune", method, "basketball", "nba-analytics", "text-generation") if t not in tags]
    data = ModelCardData(**{**theirs, "base_model": base, "library_name": "peft" if tech.adapter else "transformers",
                            "pipeline_tag": "text-generation", "tags": tags, "datasets": [DATASET],
                            "model_name": f"{Path(results['run_dir']).name}-{method}", "eval_results": evals})
    text = _text(results, method, r, alpha, base, learned, strongest, note)
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(path)
    return path


def _learned_forgot(results: dict, r: dict, strongest: str | None) -> tuple[dict | None, dict | None]:
    """Against the strongest baseline and the base's retention, for the figures ``r`` (paired)."""
    from .scoring import paired_difference

    learned = forgot = None
    if strongest:
        d = paired_difference(r["correct"], decisions.baseline_accuracies(results)[strongest]["correct"])
        learned = {**d, "learned": d["ci95"][0] > 0}
    base_ret = (results.get("base") or {}).get("retention") or {}
    if base_ret.get("correct") and (r.get("retention") or {}).get("correct"):
        forgot = {**paired_difference(base_ret["correct"], r["retention"]["correct"]), "base": base_ret["accuracy"]}
    return learned, forgot


def _ci(ci, signed: bool = False) -> str:
    fmt = "{:+.1%}" if signed else "{:.1%}"
    return f"{fmt.format(ci[0])} to {fmt.format(ci[1])}"


def _text(results: dict, method: str, r: dict | None, alpha: float, base: str, learned: dict | None,
          strongest: str | None, note: str) -> str:
    tech, cfg, run = techniques.get(method), results["config"], results[method]
    prov = results.get("provenance") or {}
    t = cfg["train"]
    op = run.get("operating_point") or {}
    lines = [f"# {tech.label} of {base} for NBA analytics", "",
             f"Fine-tuned by nbatune's comparison run `{Path(results['run_dir']).name}` with **{tech.label}** "
             f"({tech.precision}). {note}".rstrip(), ""]
    if op:
        here = "these weights" if alpha == op["alpha"] else f"alpha {op['alpha']:g}, not these weights (alpha {alpha:g})"
        lines += [f"Operating point: the run chose **alpha {op['alpha']:g}** on its learning-forgetting curve "
                  f"(0: the base, 1: the trained model) on validation alone ({op['reason']}): {here}. "
                  f"`nbatune export {results['run_dir']} --method {method}` writes the model at the operating point"
                  + (f"; with PEFT, this adapter answers at it inside `with peft.helpers.rescale_adapter_scale("
                     f"model, {op['alpha']:g}):`" if tech.curve == "scale" and tech.adapter else "") + ".", ""]
    if prov.get("note"):
        lines += [f"Base weights: {prov.get('source', '')}; {prov['note']}.", ""]
    lines += [f"## Results at alpha {alpha:g} (greedy answers, scored by the program-aided NBA metric)", ""]
    if r is None:
        lines += [f"No test figures were measured at alpha {alpha:g}; the run's are at alpha "
                  f"{op.get('alpha', 1):g}{' and 1' if run.get('trained') else ''} (its results.json).", ""]
        return _rest(lines, results, method, run, base, tech, cfg, prov, t)
    lines += ["| measure | value |", "|---|---|",
              f"| test accuracy | {r['accuracy']:.1%} (95% CI {_ci(r['accuracy_ci95'])}), {len(r['correct'])} questions |"]
    for side, f in (r.get("formats") or {}).items():
        lines.append(f"| {side} stat-line formats | {f['accuracy']:.1%} (95% CI {_ci(f['accuracy_ci95'])}), "
                     f"{f['n']} questions |")
    if learned and strongest:
        lines.append(f"| vs strongest baseline ({BASELINE_LABEL.get(strongest)}) | {learned['diff']:+.1%} (paired "
                     f"bootstrap 95% CI {_ci(learned['ci95'], signed=True)}){'' if learned['learned'] else ': NOT above it'} |")
    if (r.get("retention") or {}).get("accuracy") is not None:
        lines.append(f"| general retention | {r['retention']['accuracy']:.1%} |")
    reps = [x["accuracy"] for x in r.get("repeats") or [] if x.get("accuracy") is not None]
    if len(reps) > 1:
        lines.append(f"| {len(reps)} training seeds | mean {r['accuracy_mean']:.1%} ± {r['accuracy_sd']:.1%} |")
    lines.append("")
    return _rest(lines, results, method, run, base, tech, cfg, prov, t)


def _rest(lines, results, method, r, base, tech, cfg, prov, t) -> str:
    """Training, config, versions and how to load: the same at every alpha."""
    lines += ["## Training", "",
              f"{r['steps']} optimizer steps, {r['train_tokens']:,} tokens (prompts and answers, no padding), seed "
              f"{r.get('seed')}, "
              f"learning rate {t['learning_rate'].get(method)}, optimizer {t['optimizer'].get(method)}, "
              f"{r['train_seconds']:.0f} s of training at {r['tokens_per_second']:.0f} tokens/s, peak memory "
              f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB, on {results.get('environment', {}).get('device', '?')}. "
              f"Trainable parameters: {r['trainable_params']:,} of {r['total_params']:,}.", "",
              "Training config (nbatune `RunConfig`):", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(),
              "```", "", "Framework versions: " + ", ".join(
                  f"{k} {v}" for k, v in (results.get("environment", {}).get("versions") or {}).items() if v) + ".", "",
              "## How to load", ""]
    precision = str(results.get("environment", {}).get("device", "")).rsplit(", ", 1)[-1]
    compute = {"fp32": "torch.float32", "fp16": "torch.float16"}.get(precision, "torch.bfloat16")
    if tech.adapter and tech.quantized:
        q = cfg["quant"]
        # the frozen weights other than the 4-bit ones in the dtype they were trained and scored in
        # (modeling.prepare_4bit_base): left in PEFT's fp32, a reload answers differently
        cast = [] if frozen_in_fp32(q.get("upcast_frozen", True), precision) else [
            "for p in base.parameters():  # embeddings and norms as trained: in the compute dtype, not PEFT's fp32",
            "    if not p.requires_grad and p.dtype == torch.float32 and type(p).__name__ != 'Params4bit':",
            f"        p.data = p.data.to({compute})"]
        lines += ["```python", "import torch", "from peft import PeftModel, prepare_model_for_kbit_training",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig",
                  f"nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={q['bnb_4bit_quant_type']!r}, "
                  f"bnb_4bit_use_double_quant={q['bnb_4bit_use_double_quant']}, bnb_4bit_compute_dtype={compute})",
                  f"base = prepare_model_for_kbit_training(AutoModelForCausalLM.from_pretrained({base!r}, "
                  f"quantization_config=nf4, dtype={compute}), use_gradient_checkpointing=False)", *cast,
                  "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")",
                  f"tokenizer = AutoTokenizer.from_pretrained({base!r})", "```", "",
                  f"The scored model is exactly this (nbatune: `load_from_run(RUN, {method!r})`), on the 4-bit base."]
    elif tech.adapter:
        lines += ["```python", "import torch", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f"base = AutoModelForCausalLM.from_pretrained({base!r}, dtype={compute})",
                  "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")",
                  f"tokenizer = AutoTokenizer.from_pretrained({base!r})", "```", "",
                  f"The scored model is exactly this (nbatune: `load_from_run(RUN, {method!r})`)."]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")", "```"]
    if tech.adapter and prov.get("pre_quantized"):
        lines += ["", f"The adapter was trained on nbatune's fp32 conversion of the {prov['pre_quantized']} GGUF "
                      f"(`{cfg['model']['name_or_path']}`), not on {base}'s original weights: on those its answers "
                      "can differ. `nbatune export` merges it into the base it was trained on."]
    lines += ["", f"llama.cpp / Ollama: `nbatune export {results['run_dir']} --method {method} --gguf q8_0` writes "
                  "a merged checkpoint and `model-q8_0.gguf` (`llama-cli -m model-q8_0.gguf`; an Ollama Modelfile "
                  "starts `FROM ./model-q8_0.gguf`).", ""]
    return "\n".join(lines)
