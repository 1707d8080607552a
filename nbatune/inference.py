"""Load what a run saved, with plain transformers / PEFT, to ask it questions or merge it."""

from __future__ import annotations

import json
from pathlib import Path

from .config import load_config
from .modeling import load_tokenizer, quantization_config
from .runtime import resolve


def load_from_run(run_dir: str | Path, method: str):
    """(model, tokenizer, runtime, system prompt) for ``method`` of a finished run: exactly the model
    that was scored. Full fine-tuning: its fp32 weights (scored under the run's autocast). LoRA: the
    adapter on the base in the compute dtype. QLoRA: the adapter on the same 4-bit NF4 base, prepared
    as in training (norms and embeddings in fp32), not on an unquantized copy."""
    import torch
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg = load_config(results["config"])
    rt = resolve(cfg.train.device, cfg.train.precision)
    base = results["model_path"]
    tok = load_tokenizer(base, cfg.model)
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(run_dir / "full" / "model", dtype=torch.float32)
    else:
        kwargs = {"dtype": rt.dtype}
        if method == "qlora":
            kwargs["quantization_config"] = quantization_config(cfg.quant, rt)
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        if method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if method in ("lora", "qlora"):
            model = PeftModel.from_pretrained(model, run_dir / method / "adapter")
    if method != "qlora":  # a 4-bit model is placed by bitsandbytes
        model = model.to(rt.device)
    return model.eval(), tok, rt, cfg.model.system_prompt


def export(run_dir: str | Path, method: str, out_dir: str | Path | None = None, dtype: str = "bfloat16") -> Path:
    """A standalone checkpoint of ``method`` that plain ``AutoModelForCausalLM.from_pretrained`` loads:
    the full model cast to ``dtype``, or an adapter merged into the base (``merge_adapter``)."""
    if method in ("lora", "qlora"):
        return merge_adapter(run_dir, method, out_dir, dtype)
    if method != "full":
        raise ValueError(f"export: {method!r} is not a trained technique (full, lora, qlora)")
    import torch
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "full" / "model", dtype=getattr(torch, dtype))
    out = Path(out_dir or run_dir / "full" / f"export-{dtype}")
    model.save_pretrained(out)
    results = json.loads((run_dir / "results.json").read_text())
    load_tokenizer(results["model_path"], load_config(results["config"]).model).save_pretrained(out)
    return out


def merge_adapter(run_dir: str | Path, method: str = "lora", out_dir: str | Path | None = None,
                  dtype: str = "bfloat16") -> Path:
    """Merge a LoRA/QLoRA adapter into the base and save a standalone checkpoint in ``dtype`` (bf16:
    half of fp32 on disk). A QLoRA adapter is merged into the unquantized base: the merged model is not
    the 4-bit model that was scored, and its answers can differ slightly."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(results["model_path"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, run_dir / method / "adapter").merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    out = Path(out_dir or run_dir / method / "merged")
    merged.save_pretrained(out)
    load_tokenizer(results["model_path"], load_config(results["config"]).model).save_pretrained(out)
    return out
