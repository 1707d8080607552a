"""LoRA's forward while training, without PEFT's full-width extras.

PEFT computes ``result + lora_B(lora_A(x)) * scaling``: the scaling multiplies, and the sum adds, a tensor as wide
as the layer's output (1,536 for SmolLM2's MLP), in forward and again in backward, and its 4-bit layer first clones
the base layer's output. ``lean_lora_forward`` scales the rank-r product instead, and lets the up-projection add
itself to the base output inside one ``addmm``. The same function: in fp32 the same numbers up to summation order;
in bf16 the sum is rounded once instead of twice. Training only (``train.lean_adapters``): evaluation, reloads and
the model cards run PEFT's own forward, so what is scored is what ships.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _lean_types() -> tuple[type, ...]:
    from peft.tuners.lora import Linear

    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # bitsandbytes absent: no 4-bit layers to speed up
        return (Linear,)
    return Linear, Linear4bit


def lean_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A vanilla LoRA layer's forward (one active adapter, not merged, no bias on B); anything else goes to PEFT."""
    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    if (args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A or name in self.lora_variant
            or self.lora_B[name].bias is not None):
        return type(self).forward(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if x.dtype != a.dtype and not torch.is_autocast_enabled(x.device.type):
        return type(self).forward(self, x)  # PEFT casts the input to the adapter's dtype; autocast would make it moot
    result = self.base_layer(x)
    h = F.linear(self.lora_dropout[name](x), a) * self.scaling[name]
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.t())
    return out.view(result.shape).to(result.dtype)  # autocast's addmm is bf16; an fp32 stream stays fp32


@contextmanager
def lean_adapters(model, on: bool):
    """Every LoRA layer of ``model`` runs ``lean_lora_forward`` while the block lasts (when ``on``); PEFT's after.
    Yields how many layers run it."""
    kinds = _lean_types() if on else ()
    layers = [m for m in model.modules() if type(m) in kinds]
    for layer in layers:
        layer.forward = types.MethodType(lean_lora_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
