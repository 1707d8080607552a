"""The attention kernels training and answering run with.

Training: on CPU, SDPA's fused backward is slower than plain matmuls
for packed rows of a few hundred tokens, and transformers' eager attention keeps 6 bytes per (query, key)
pair and head for backward (the softmax's fp32 output and its bf16 copy). ``lean_eager`` is eager
attention that keeps only the bf16 probabilities: 2 bytes per pair, as fast, and within TRL's peak
memory (BENCHMARKS.md).

Answering: ``row_sdpa`` makes a greedy answer independent of the batch it is generated in, so the answer
``nbatune ask`` gives one question alone is the answer that was scored in a batch of 64. Left padding is
what made them differ (measured on the embedded base: 17 of 64 answers; the same prompts batched without
padding gave bit-identical logits): SDPA over a padded row reduces over keys at other offsets and rounds
differently. ``row_sdpa`` attends over each row's own tokens only, computed the same way whatever else is
in the batch (SDPA per run of equally padded rows while reading prompts, fp32 matmuls over key buckets while
decoding); the linear layers around it are bf16 matmuls, whose rows do not depend on the other rows
(tests/test_comparison.py checks the whole answer, on this CPU)."""

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
    """Attention over each row's own tokens (inference only). ``attention_mask`` is always the boolean
    (batch, 1, queries, keys) mask (``_full_mask``); a left-padded row's real keys and queries are its
    last ones. Reading prompts: SDPA per run of neighbouring rows with the same padding (CPU SDPA computes
    every (row, head) alone, so a row's output does not depend on how many rows share its call; tested
    bitwise). Decoding: ``_one_query_attention``."""
    if kwargs.get("softcap") or getattr(module, "sinks", None) is not None or kwargs.get("sliding_window"):
        raise ValueError("batch-invariant answers: this model uses soft-capping, attention sinks or a sliding "
                         "window, which the row-wise kernel does not implement")
    if query.shape[2] == 1:
        return _one_query_attention(query, key, value, attention_mask, scaling), None
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    batch, heads, q_len, dim = query.shape
    out = query.new_zeros(batch, q_len, heads, dim)
    for b0, b1, qs, ks in _per_mask(attention_mask, _row_groups):
        if ks >= key.shape[2]:
            continue  # rows of padding only
        q, k, v = (t[b0:b1, :, s:].contiguous() for t, s in ((query, qs), (key, ks), (value, ks)))
        if q.shape[2] == k.shape[2]:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:  # queries after a cached prefix: the mask's own causal pattern
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[b0:b1, :, qs:, ks:].contiguous(),
                                               scale=scaling, enable_gqa=gqa)
        out[b0:b1, qs:] = o.transpose(1, 2)
    return out, None


KEY_BUCKET = 64  # a decoding row attends over its key count rounded up to this: one call per bucket


def _one_query_attention(query, key, value, mask, scaling: float) -> torch.Tensor:
    """A decoding step's attention: fp32 matmuls over each row's last ``KEY_BUCKET``-rounded keys, one call
    for all rows in the same bucket. CPU SDPA spends about 53 us per row on one query (1.7 ms for 32 rows of
    150 keys against 0.25 ms here), and one call per row cost as much again as the rest of a decoding step.

    Why a row's result is the same in any batch: it is computed over the same number of keys (its own count,
    rounded up) in the same positions (its real keys last, as left padding leaves them), the keys before them
    masked to probability 0, whatever else is in the batch; the softmax reduces each row alone, and each
    (row, key head) is its own small matmul, which gives the same result in a batch of any size (tested).

    A bucket whose rows are neighbours (``greedy_decode`` keeps rows in order of key count) is read through
    a slice: the fp32 copy is then the only copy of its keys, where gathering its rows first copied them twice."""
    rows, heads, _, dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    out = query.new_empty(rows, 1, heads, dim)
    for bucket, idx, n in _per_mask(mask, _key_buckets):
        k, v, m = key[idx, :, -bucket:], value[idx, :, -bucket:], mask[idx, 0, 0, -bucket:]
        if bucket > width:  # fewer columns than the bucket: pad on the left, masked
            pad = bucket - width
            k, v = (F.pad(t, (0, 0, pad, 0)) for t in (k, v))
            m = F.pad(m, (pad, 0))
        # contiguous fp32 copies: a row alone and a row taken from a padded batch take the same matmul path
        k, v = (t.to(torch.float32, memory_format=torch.contiguous_format) for t in (k, v))
        q = (query[idx].float() * scaling).reshape(n, kv_heads, heads // kv_heads, dim).contiguous()
        scores = torch.matmul(q, k.transpose(2, 3)).masked_fill(~m[:, None, None, :], float("-inf"))
        o = torch.matmul(torch.softmax(scores, -1), v)
        out[idx] = o.to(query.dtype).reshape(n, heads, 1, dim).transpose(1, 2)
    return out


def _key_buckets(mask: torch.Tensor) -> list[tuple[int, slice | torch.Tensor, int]]:
    """(bucket, its rows, how many) for a decoding step's (batch, 1, 1, keys) mask; the rows as a slice when
    they are neighbours, else as indices."""
    counts = mask[:, 0, 0].sum(-1)
    buckets = (counts + KEY_BUCKET - 1) // KEY_BUCKET * KEY_BUCKET
    out = []
    for b in buckets.unique().tolist():
        idx = (buckets == b).nonzero().squeeze(1)
        first, last = int(idx[0]), int(idx[-1])
        out.append((b, slice(first, last + 1) if last - first + 1 == len(idx) else idx, len(idx)))
    return out


def _row_groups(mask: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first real query, first real key) of each run of neighbouring rows with the same
    left padding."""
    first_key = (~mask[:, 0, -1]).sum(-1).tolist()  # the last query sees every real key
    first_query = (~mask[:, 0].any(-1)).sum(-1).tolist()
    runs: list[tuple[int, int, int, int]] = []
    for b, starts in enumerate(zip(first_query, first_key)):
        if runs and runs[-1][2:] == starts:
            runs[-1] = (runs[-1][0], b + 1, *starts)
        else:
            runs.append((b, b + 1, *starts))
    return runs


_read: list = [None, None, None]  # [the mask last read, what read it, the result]; holding the mask keeps its id


def _per_mask(mask: torch.Tensor, read):
    """``read(mask)``, once per forward pass: every layer gets the same mask object."""
    if _read[0] is not mask or _read[1] is not read:
        _read[:] = [mask, read, read(mask)]
    return _read[2]


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
        _read[:] = [None, None, None]
        if model.config._attn_implementation != before:
            model.set_attn_implementation(before)
