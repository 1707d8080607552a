"""Load what a run saved, with plain transformers / PEFT, to ask it questions or merge it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import techniques
from .config import load_config
from .evaluation import eval_mode
from .modeling import base_load_kwargs, load_tokenizer, prepare_4bit_base
from .runtime import resolve

log = logging.getLogger(__name__)


def operating_alpha(results: dict, method: str, alpha: float | None = None) -> float:
    """``alpha`` if given, else the run's chosen operating point for ``method`` (1: the trained model)."""
    if alpha is None:
        alpha = ((results.get(method) or {}).get("operating_point") or {}).get("alpha", 1.0)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: {alpha} must be in [0, 1] (0: the base, 1: the trained model)")
    return float(alpha)


def move_to_alpha(model, run_dir: Path, method: str, results: dict, alpha: float):
    """Put a reloaded ``method`` model at ``alpha`` on its learning-forgetting curve (``nbatune.interpolation``)."""
    if alpha == 1.0 or method == techniques.BASE:
        return model
    import torch
    from transformers import AutoModelForCausalLM

    from . import interpolation

    cfg = load_config(results["config"])
    how = interpolation.curve_kind(method, cfg.lora)
    tech = techniques.get(method)
    if how == "scale":
        initial = None
    elif tech.adapter:
        initial = interpolation.load_initial(run_dir / method / tech.saved_folder)
    else:
        base = AutoModelForCausalLM.from_pretrained(results["model_path"], dtype=torch.float32)
        initial = {n: p.detach() for n, p in base.named_parameters()}
    interpolation.AlphaPath(model, how, initial).set(alpha)
    return model


def load_from_run(run_dir: str | Path, method: str, alpha: float | None = None):
    """(model, tokenizer, runtime, system prompt) for ``method`` of a finished run: exactly the model
    that was scored. The base and whole-model techniques: fp32 weights (scored under the run's autocast).
    An adapter: on the base in the compute dtype, or, for a quantized technique, on the same 4-bit base
    prepared as in training (`modeling.prepare_4bit_base`: norms and embeddings in the compute dtype unless
    `quant.upcast_frozen`), not on an unquantized copy.

    Args:
        alpha: where on the technique's learning-forgetting curve (0: the base, 1: the trained model).
            Default: the run's chosen operating point, the one its headline figures are for.
    """
    import torch
    from peft import PeftModel
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
        model = AutoModelForCausalLM.from_pretrained(base, **base_load_kwargs(method, cfg.model, rt, cfg.quant))
        if tech.quantized:
            model = prepare_4bit_base(model, cfg.quant.upcast_frozen, rt)
        model = PeftModel.from_pretrained(model, run_dir / method / tech.saved_folder)
    model = move_to_alpha(model, run_dir, method, results, operating_alpha(results, method, alpha))
    if not (tech and tech.quantized):  # a 4-bit model is placed by bitsandbytes
        model = model.to(rt.device)
    return eval_mode(model), tok, rt, cfg.model.system_prompt


def export(run_dir: str | Path, method: str, out_dir: str | Path | None = None, dtype: str = "bfloat16",
           gguf: str | None = None, alpha: float | None = None) -> Path:
    """A standalone checkpoint of ``method`` that plain ``AutoModelForCausalLM.from_pretrained`` loads:
    the full model, or an adapter merged into the base, cast to ``dtype``, at the run's operating point.

    Args:
        alpha: where on the learning-forgetting curve (default: the run's chosen operating point).
        gguf: also write ``model-<gguf>.gguf`` (``f16`` or ``q8_0``) into the folder, converted from the
            fp32 weights before the cast, for llama.cpp / Ollama.
    """
    import torch

    if method not in techniques.names():
        raise ValueError(f"export: {method!r} is not a trained technique ({', '.join(techniques.names())})")
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg = load_config(results["config"])
    alpha = operating_alpha(results, method, alpha)
    model = _standalone_fp32(run_dir, method, results, alpha)
    tok = load_tokenizer(results["model_path"], cfg.model)
    default = run_dir / method / techniques.get(method).merged_folder.format(dtype=dtype)
    out = Path(out_dir or default)
    if gguf:
        from .gguf_export import GGUFExportError, ollama_modelfile, pre_tokenizer_name, write_gguf

        write_gguf(model, tok, out / f"model-{gguf}.gguf", gguf, name=f"{run_dir.name}-{method}",
                   pre=pre_tokenizer_name(cfg.model.name_or_path))
        try:
            (out / "Modelfile").write_text(ollama_modelfile(f"model-{gguf}.gguf", tok, cfg.model.system_prompt,
                                                            cfg.eval.stop_at_newline))
        except GGUFExportError as e:  # the GGUF is still good for llama.cpp
            log.warning("%s", e)
    model.to(getattr(torch, dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    from . import model_card

    merged = (" into the unquantized base: not the 4-bit model that was scored" if techniques.get(method).quantized
              else " into the base") if techniques.get(method).adapter else ""
    model_card.write(out, results, method, note=f"This folder is a standalone {dtype} export"
                                                 f"{', the adapter merged' + merged if merged else ''}, at alpha "
                                                 f"{alpha:g} of the learning-forgetting curve.", alpha=alpha)
    return out


def merge_adapter(run_dir: str | Path, method: str, out_dir: str | Path | None = None,
                  dtype: str = "bfloat16", alpha: float | None = None) -> Path:
    """Merge an adapter into the base and save a standalone checkpoint in ``dtype`` (bf16: half of fp32 on
    disk). A quantized technique's adapter is merged into the unquantized base: the merged model is not
    the 4-bit model that was scored, and its answers can differ slightly."""
    adapters = [n for n in techniques.names() if techniques.get(n).adapter]
    if method not in adapters:
        raise ValueError(f"merge_adapter: {method!r} has no adapter ({', '.join(adapters)})")
    return export(run_dir, method, out_dir, dtype, alpha=alpha)


def _standalone_fp32(run_dir: Path, method: str, results: dict, alpha: float):
    """The full model, or the adapter merged into the fp32 base, at ``alpha``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tech = techniques.get(method)
    if not tech.adapter:
        model = AutoModelForCausalLM.from_pretrained(run_dir / method / tech.saved_folder, dtype=torch.float32)
        return move_to_alpha(model, run_dir, method, results, alpha)
    base_model = AutoModelForCausalLM.from_pretrained(results["model_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base_model, run_dir / method / tech.saved_folder)
    return move_to_alpha(model, run_dir, method, results, alpha).merge_and_unload()
