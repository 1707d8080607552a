"""Load what a run saved, with plain transformers / PEFT, to ask it questions or merge it."""

from __future__ import annotations

import json
from pathlib import Path

from .config import load_config
from .modeling import load_tokenizer
from .runtime import resolve


def load_from_run(run_dir: str | Path, method: str):
    """(model, tokenizer, runtime, system prompt) for ``method`` of a finished run."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg = load_config(results["config"])
    rt = resolve(cfg.train.device, cfg.train.precision)
    base = results["model_path"]
    tok = load_tokenizer(base, cfg.model)
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(run_dir / "full" / "model", dtype=rt.dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=rt.dtype)
        if method in ("lora", "qlora"):
            model = PeftModel.from_pretrained(model, run_dir / method / "adapter")
    return model.to(rt.device).eval(), tok, rt, cfg.model.system_prompt


def merge_adapter(run_dir: str | Path, method: str = "lora", out_dir: str | Path | None = None) -> Path:
    """Merge a LoRA/QLoRA adapter into an fp32 copy of the base and save a standalone checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    import torch

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(results["model_path"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, run_dir / method / "adapter").merge_and_unload()
    out = Path(out_dir or run_dir / method / "merged")
    merged.save_pretrained(out)
    load_tokenizer(results["model_path"], load_config(results["config"]).model).save_pretrained(out)
    return out
