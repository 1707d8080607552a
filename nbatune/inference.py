"""Load what a run saved, with plain transformers / PEFT, to ask it questions or merge it."""

from __future__ import annotations

import json
from pathlib import Path

from . import techniques
from .config import load_config
from .modeling import load_tokenizer, quantization_config
from .runtime import resolve


def load_from_run(run_dir: str | Path, method: str):
    """(model, tokenizer, runtime, system prompt) for ``method`` of a finished run: exactly the model
    that was scored. The base and whole-model techniques: fp32 weights (scored under the run's autocast).
    An adapter: on the base in the compute dtype, or, for a quantized technique, on the same 4-bit base
    prepared as in training (norms and embeddings in fp32), not on an unquantized copy."""
    import torch
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg = load_config(results["config"])
    rt = resolve(cfg.train.device, cfg.train.precision)
    base = results["model_path"]
    tok = load_tokenizer(base, cfg.model)
    tech = None if method == techniques.BASE else techniques.get(method)
    if tech is None or not tech.adapter:
        path = base if tech is None else run_dir / method / tech.saved_folder
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        kwargs = {"dtype": rt.dtype}
        if tech.quantized:
            kwargs["quantization_config"] = quantization_config(cfg.quant, rt)
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        if tech.quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = PeftModel.from_pretrained(model, run_dir / method / tech.saved_folder)
    if not (tech and tech.quantized):  # a 4-bit model is placed by bitsandbytes
        model = model.to(rt.device)
    return model.eval(), tok, rt, cfg.model.system_prompt


def export(run_dir: str | Path, method: str, out_dir: str | Path | None = None, dtype: str = "bfloat16",
           gguf: str | None = None) -> Path:
    """A standalone checkpoint of ``method`` that plain ``AutoModelForCausalLM.from_pretrained`` loads:
    the full model, or an adapter merged into the base, cast to ``dtype``.

    Args:
        gguf: also write ``model-<gguf>.gguf`` (``f16`` or ``q8_0``) into the folder, converted from the
            fp32 weights before the cast, for llama.cpp / Ollama.
    """
    import torch

    if method not in techniques.names():
        raise ValueError(f"export: {method!r} is not a trained technique ({', '.join(techniques.names())})")
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg = load_config(results["config"])
    model = _standalone_fp32(run_dir, method, results["model_path"])
    tok = load_tokenizer(results["model_path"], cfg.model)
    default = run_dir / method / techniques.get(method).merged_folder.format(dtype=dtype)
    out = Path(out_dir or default)
    if gguf:
        from .gguf_export import pre_tokenizer_name, write_gguf

        write_gguf(model, tok, out / f"model-{gguf}.gguf", gguf, name=f"{run_dir.name}-{method}",
                   pre=pre_tokenizer_name(cfg.model.name_or_path))
    model.to(getattr(torch, dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    from . import model_card

    merged = (" into the unquantized base: not the 4-bit model that was scored" if techniques.get(method).quantized
              else " into the base") if techniques.get(method).adapter else ""
    model_card.write(out, results, method, note=f"This folder is a standalone {dtype} export"
                                                 f"{', the adapter merged' + merged if merged else ''}.")
    return out


def merge_adapter(run_dir: str | Path, method: str, out_dir: str | Path | None = None,
                  dtype: str = "bfloat16") -> Path:
    """Merge an adapter into the base and save a standalone checkpoint in ``dtype`` (bf16: half of fp32 on
    disk). A quantized technique's adapter is merged into the unquantized base: the merged model is not
    the 4-bit model that was scored, and its answers can differ slightly."""
    adapters = [n for n in techniques.names() if techniques.get(n).adapter]
    if method not in adapters:
        raise ValueError(f"merge_adapter: {method!r} has no adapter ({', '.join(adapters)})")
    return export(run_dir, method, out_dir, dtype)


def _standalone_fp32(run_dir: Path, method: str, base: str):
    """The full model, or the adapter merged into the fp32 base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tech = techniques.get(method)
    if not tech.adapter:
        return AutoModelForCausalLM.from_pretrained(run_dir / method / tech.saved_folder, dtype=torch.float32)
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(base_model, run_dir / method / tech.saved_folder).merge_and_unload()
