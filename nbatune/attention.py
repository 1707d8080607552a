"""The attention kernels training and answering run with.

Training: on CPU On CPU, SDPA's fused backward is slower than plain matmuls
for packed rows of a few hundred tokens, and transformers' eager attention keeps 6 bytes per (query, key)
pair and head for backward (the softmax's fp32 output and its bf16 copy). ``lean_eager`` is eager
attention that keeps only the bf16 probabilities: 2 bytes per pair, as fast, and within TRL's peak
memory (BENCHMARKS.md).

Answering: ``row_sdpa`` makes a greedy answer independent of the batch it is generated in, so the answer
``nbatune ask`` gives one question alone is the answer that was scored in a batch of 32. Left padding is
what made them differ (measured on the embedded base: 17 of 64 answers; the same prompts batched without
padding gave bit-identical logits): SDPA over a padded row reduces over keys at other offsets and rounds
differently. ``row_sdpa`` runs SDPA on each row's own tokens only, so a row's attention is the same call
with the same shapes whatever else is in the batch; the linear layers around it are bf16 matmuls, whose
rows do not depend on the other rows (tests/test_comparison.py checks the whole answer, on this CPU)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

LEAN_EAGER = "nbatune_lean_eager"
ROW_SDPA = "nbatune_row_sdpa"


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


def row_sdpa_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """SDPA on each row's unpadded tokens (inference only). ``attention_mask`` is always the boolean
    (batch, 1, queries, keys) mask (``_full_mask``); a left-padded row's real keys and queries are its
    last ones."""
    if kwargs.get("softcap") or getattr(module, "sinks", None) is not None or kwargs.get("sliding_window"):
        raise ValueError("batch-invariant answers: this model uses soft-capping, attention sinks or a sliding "
                         "window, which the row-wise kernel does not implement")
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    batch, heads, q_len, dim = query.shape
    out = query.new_zeros(batch, q_len, heads, dim)
    for b, (qs, ks) in enumerate(_row_starts(attention_mask)):
        if ks >= key.shape[2]:
            continue  # a row of padding only
        q, k, v = (t[b:b + 1, :, s:].contiguous() for t, s in ((query, qs), (key, ks), (value, ks)))
        if q.shape[2] == 1:
            o = F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=gqa)
        elif q.shape[2] == k.shape[2]:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:  # queries after a cached prefix: the mask's own causal pattern
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[b:b + 1, :, qs:, ks:].contiguous(),
                                               scale=scaling, enable_gqa=gqa)
        out[b, qs:] = o[0].transpose(0, 1)
    return out, None


_starts: list = [None, None]  # [the mask last read, its rows' starts]; holding the mask keeps its id unique


def _row_starts(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(first real query, first real key) of each row: the count of left-padding positions. Every layer of a
    forward pass gets the same mask object; it is read once."""
    if _starts[0] is not mask:
        first_key = (~mask[:, 0, -1]).sum(-1)  # the last query sees every real key
        first_query = (~mask[:, 0].any(-1)).sum(-1)
        _starts[:] = [mask, list(zip(first_query.tolist(), first_key.tolist()))]
    return _starts[1]


def _full_mask(*args, **kwargs):
    """SDPA's boolean mask, never skipped for ``is_causal``: the row-wise kernel reads each row's padding."""
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False})


def register() -> None:
    """Make ``LEAN_EAGER`` (eager's additive mask) and ``ROW_SDPA`` (a boolean mask) transformers attention
    implementations."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(LEAN_EAGER, lean_eager_attention)
    AttentionMaskInterface.register(LEAN_EAGER, eager_mask)
    AttentionInterface.register(ROW_SDPA, row_sdpa_attention)
    AttentionMaskInterface.register(ROW_SDPA, _full_mask)


def training_attention(setting: str, device: str) -> str:
    """The kernel ``train.attention`` means on ``device``: ``auto`` is the lean eager kernel on CPU,
    SDPA elsewhere (fused kernels are the fast path on GPUs)."""
    if setting == "lean_eager" or (setting == "auto" and device == "cpu"):
        return LEAN_EAGER
    return "sdpa" if setting == "auto" else setting


@contextlib.contextmanager
def attention_kernel(model, name: str):
    """Run with ``name`` attention, then give the model its own kernel back (training runs with its kernel,
    answering with ``ROW_SDPA``, and each finds the model as it was)."""
    register()
    before = model.config._attn_implementation
    if name != before:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        _starts[:] = [None, None]
        if model.config._attn_implementation != before:
            model.set_attn_implementation(before)
