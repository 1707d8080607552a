"""The attention kernel training runs with. On CPU, SDPA's fused backward is slower than plain matmuls
for packed rows of a few hundred tokens, and transformers' eager attention keeps 6 bytes per (query, key)
pair and head for backward (the softmax's fp32 output and its bf16 copy). ``lean_eager`` is eager
attention that keeps only the bf16 probabilities: 2 bytes per pair, as fast, and within TRL's peak
memory (BENCHMARKS.md)."""

from __future__ import annotations

import contextlib

import torch

LEAN_EAGER = "nbatune_lean_eager"


def lean_eager_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """Eager attention whose softmax runs, and is saved for backward, in the compute dtype. The softmax
    kernel accumulates in fp32 either way; only the stored probabilities are rounded (to bf16, as every
    fused kernel rounds them before multiplying by the values)."""
    from transformers.models.llama.modeling_llama import repeat_kv

    if kwargs.get("softcap") or getattr(module, "sinks", None) is not None:
        raise ValueError("train.attention: the lean eager kernel has no logit soft-capping or attention sinks, "
                         "which this model uses; set train.attention: eager (or sdpa)")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        # the mask has the residual stream's dtype (fp32 for full and QLoRA): added as is, it would
        # promote the scores, and the saved probabilities, to fp32
        scores = scores + attention_mask[:, :, :, : key.shape[-2]].to(scores.dtype)
    with torch.autocast(query.device.type, enabled=False):  # autocast would run softmax in fp32
        probs = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``LEAN_EAGER`` a transformers attention implementation, with eager's additive mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(LEAN_EAGER, lean_eager_attention)
    AttentionMaskInterface.register(LEAN_EAGER, eager_mask)


def training_attention(setting: str, device: str) -> str:
    """The kernel ``train.attention`` means on ``device``: ``auto`` is the lean eager kernel on CPU,
    SDPA elsewhere (fused kernels are the fast path on GPUs)."""
    if setting == "lean_eager" or (setting == "auto" and device == "cpu"):
        return LEAN_EAGER
    return "sdpa" if setting == "auto" else setting


@contextlib.contextmanager
def attention_kernel(model, name: str):
    """Train with ``name`` attention, then give the model its own kernel back, so that evaluation and
    the baselines decode the same way whichever kernel trained."""
    register()
    before = model.config._attn_implementation
    if name != before:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if model.config._attn_implementation != before:
            model.set_attn_implementation(before)
