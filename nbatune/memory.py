"""Peak training memory, predicted from the model's config before anything is loaded.

The estimate is the sum of what our training path keeps alive at its peak, per technique:

- weights: ``full`` fp32 master weights (+ the bf16 copies autocast caches for the linear layers);
  ``lora`` the frozen base in the compute dtype + fp32 adapters; ``qlora`` linear weights as NF4
  (0.5 byte/param + quantization constants) + the other weights in the compute dtype (in fp32 with
  ``quant.upcast_frozen``, as PEFT's ``prepare_model_for_kbit_training`` leaves them) + fp32 adapters;
- gradients (fp32) and optimizer states (AdamW: 8 bytes per trainable parameter, 8-bit: 2);
- activations saved for backward, per token and layer. The coefficients below were counted on the
  autograd graph of transformers' Llama under bf16 autocast (saved-tensor hooks, four shapes);
  ``tests/test_memory.py`` recounts them so that a change upstream fails a test;
- output-head logits: positions that get a loss x vocabulary x 16 bytes (bf16 + fp32 logits, the
  softmax and their gradients); with the chunked loss (``train.loss_chunk_tokens``), one chunk of
  answer tokens x vocabulary x 8 bytes, alive only while the loss is computed;
- working memory beyond the saved tensors (gradients of activations during backward, allocator
  slack: on CPU glibc's heap fragments as tensors of varying shapes are freed and allocated again):
  19% of activations + logits;
- a fixed overhead: on CPU 300 MiB plus 3 bytes per parameter (the trainer, the data pipeline and
  caches that grow with the model; fitted, not attributed part by part), on CUDA the context (not
  part of ``max_memory_allocated``, but part of what must fit).

The three constants (19%, 300 MiB, 3 bytes per parameter) were fitted by least squares to ten CPU
peaks (``bench/memory.py``: the embedded model and two random-weight shapes, three techniques, batch
16 and 32); five more cases were held out to check them (BENCHMARKS.md). Returning freed pages to the
OS instead of letting the heap fragment (``mallopt`` mmap threshold 256 KiB) removed most of the
slack but made training 1.5-1.9x slower, so it is not done.

Gradients and activations do not peak together: the trainer frees the gradients before each forward
and the allocator reuses that memory for activations, so the peak is weights + optimizer states +
the larger of (gradients, activations + logits + working memory) + overhead.

It is validated against measured peaks by ``bench/memory.py``; the table is in BENCHMARKS.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import techniques
from .config import frozen_in_fp32

log = logging.getLogger(__name__)

MiB, GiB = 2**20, 2**30

# Bytes saved for backward per token per decoder layer, bf16 autocast: (per hidden unit, per MLP unit,
# per key/value unit). The residual stream is fp32 for full (fp32 master weights), bf16 for LoRA and for QLoRA
# (its other weights kept in bf16), where it saves what LoRA's does; a 4-bit base whose other weights PEFT upcasts
# (``quant.upcast_frozen``) has an fp32 stream, and its 4-bit matmuls keep fp32 copies of the MLP activations
# ("adapter_4bit"). LoRA's adapters read the base layer's own bf16 input (``skip_adapter_input_casts``), so they
# save no copy of it. Keyed by the estimator's kinds (a technique's ``memory_kind``): the whole model trains; an
# adapter on a 16-bit base; an adapter on a 4-bit base
ACT_COEF = {"whole": (36.5, 8.25, 1.75), "adapter": (20.5, 8.25, 2.25), "adapter_4bit": (28.5, 14.25, 2.25)}
# Bytes per (query, key) pair, head and layer that an eager attention kernel keeps for backward (its
# probabilities, masked pairs included), in (bf16/fp16, fp32); counted on the graph. Fused kernels
# (SDPA, flash) keep none. ``nbatune_lean_eager`` is ``attention.lean_eager_attention``; transformers'
# own eager keeps the softmax's fp32 output and its bf16 copy.
ATTN_PAIR_BYTES = {"nbatune_lean_eager": (2, 4), "eager": (6, 4)}
LOGIT_BYTES = 16
CHUNKED_LOGIT_BYTES = 8  # fp32 logits turned into their gradient in place, plus its compute-dtype copy
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values, 8-bit absmax per 64, fp32 per 256 absmax (double quant)
NF4_BYTES_SINGLE = 0.5 + 4 / 64
OPTIMIZER_BYTES = {"adamw_torch": 8, "adamw_torch_fused": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2}
WORKING_FRACTION = 0.19  # of activations + logits: backward's gradients of activations, allocator slack
# What a process holds beyond the counted parts. On a CPU in bf16: 300 MiB plus 3 bytes a parameter (fitted
# 2026-11-29; within -4 to +18% of the default run's peaks on tcmalloc since, AVX512-BF16). On a CPU in fp32 nothing:
# there (2026-12-07, an AVX2 CPU, the default's batches in fresh processes on tcmalloc) the counted parts alone came
# 4-10% over the measured peaks of all three techniques. What bf16 holds beyond its counted parts (about 0.7 GiB on
# SmolLM2-135M) was not found: no CPU with native bf16 was at hand to look.
OVERHEAD = {"cpu": 300 * MiB, "cuda": 500 * MiB}
CPU_OVERHEAD_PER_PARAM = 3
# The estimate is of a process on tcmalloc, which `nbatune run` loads where installed; on glibc's malloc the heap kept
# 0.5-1.1 GiB more over the default's steps (``allocator.advice`` says so in the run's log).
# fp32 activations over the bf16 ones, per kind (the fp32 parts do not grow, the bf16 parts double), counted on the
# autograd graph of SmolLM2-135M at 512 and 1,024 tokens (2026-12-06, an AVX2 CPU where the run trains in fp32): a
# whole model saved 768 MiB per 512 tokens (estimated 840), an adapter model 704 (724), on a 4-bit base too (an fp32
# stream casts nothing); the whole model's scale is set between that and the test's small model (0.91-1.00 there).
FP32_ACT_SCALE = {"whole": 1.55, "adapter": 1.8}


class MemoryBudgetError(RuntimeError):
    """The estimated peak does not fit the memory available; the message says what to change."""


@dataclass
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    gated_mlp: bool = True

    @property
    def linear_params_per_layer(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = self.hidden * q * 2 + self.hidden * kv * 2
        mlp = self.hidden * self.intermediate * (3 if self.gated_mlp else 2)
        return attn + mlp

    @property
    def linear_params(self) -> int:
        return self.layers * self.linear_params_per_layer

    @property
    def other_params(self) -> int:
        """Embeddings, output head (when untied) and norms."""
        emb = self.vocab * self.hidden * (1 if self.tied else 2)
        return emb + self.layers * 2 * self.hidden + self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int) -> int:
        """Adapters on every linear layer of the decoder ('all-linear'): r x (in + out) each."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        shapes = [(h, q), (h, kv), (h, kv), (q, h)] + [(h, i)] * (2 if self.gated_mlp else 1) + [(i, h)]
        return self.layers * sum(r * (a + b) for a, b in shapes)


def model_shape(config) -> ModelShape:
    """Shape of a decoder-only model from a transformers config, a dict, or a path / hub id.

    Raises:
        ValueError: the config lacks the sizes needed (not a decoder-only transformer).
    """
    if isinstance(config, ModelShape):
        return config
    if isinstance(config, dict):
        from transformers import AutoConfig

        config = AutoConfig.for_model(**config)
    elif isinstance(config, str):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(config)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read a model config from {config!r}: {str(e).splitlines()[0]} "
                             "(give a local checkpoint directory, or a hub id where the hub is reachable)") from e
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None)), None)  # noqa: E731
    h, layers, heads, vocab = (get("hidden_size", "n_embd"), get("num_hidden_layers", "n_layer"),
                               get("num_attention_heads", "n_head"), get("vocab_size"))
    if not all((h, layers, heads, vocab)):
        raise ValueError(f"{type(config).__name__} has no hidden_size/num_hidden_layers/num_attention_heads/"
                         "vocab_size: not a decoder-only transformer this estimator knows")
    model_type = getattr(config, "model_type", "")
    return ModelShape(
        hidden=h, intermediate=get("intermediate_size", "n_inner") or 4 * h, layers=layers, heads=heads,
        kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or h // heads, vocab=vocab,
        tied=bool(getattr(config, "tie_word_embeddings", True)),
        gated_mlp=model_type not in ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi"))


@dataclass
class MemoryEstimate:
    method: str
    device: str
    parts: dict[str, int] = field(default_factory=dict)  # name -> bytes

    @property
    def total(self) -> int:
        p = self.parts
        transient = max(p["gradients"], p["activations"] + p["logits"] + p["working"])
        return p["weights"] + p["optimizer"] + transient + p["overhead"]

    def describe(self) -> str:
        body = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v)
        return f"{self.method}: {self.total / GiB:.2f} GiB ({body} GiB)"


def estimate_memory(config, method: str, *, tokens: int, logit_tokens: int | None = None, loss_chunk_tokens: int = 0,
                    precision: str = "bf16", device: str = "cpu", optimizer: str = "adamw_torch_fused",
                    gradient_checkpointing: bool = False, lora_r: int = 16, double_quant: bool = True,
                    attention: str = "sdpa", row_width: int = 0, upcast_frozen: bool = False) -> MemoryEstimate:
    """Predict the peak memory of one training process.

    Args:
        config: a transformers config, a dict of its fields, a local checkpoint path, a hub id, or
            a ``ModelShape``.
        method: a registered technique (nbatune.techniques); its ``memory_kind`` picks the counting.
        tokens: positions in one micro-batch (rows x width, padding included).
        logit_tokens: positions whose logits are computed. Default: all ``tokens`` (the standard
            recipe); our trainer computes only answer positions (see ``batch_footprint``).
        loss_chunk_tokens: > 0 for the chunked loss: logits of at most this many positions at a time.
        precision: ``bf16``/``fp16`` (autocast) or ``fp32``.
        gradient_checkpointing: keep only each layer's input, recompute the rest in backward.
        attention: the attention implementation training runs with; an eager one keeps
            ``heads x row_width`` probabilities per position (``ATTN_PAIR_BYTES``).
        row_width: positions per row of the micro-batch.
        upcast_frozen: a 4-bit model's other weights in fp32 (``quant.upcast_frozen``): an fp32 residual stream.
    """
    if method not in techniques.names():
        raise ValueError(f"method must be a registered technique ({', '.join(techniques.names())}), not {method!r}")
    kind = techniques.get(method).memory_kind
    s = shape = model_shape(config)
    half = precision in ("bf16", "fp16")
    compute = 2 if half else 4
    lora = shape.lora_params(lora_r)
    if kind == "whole":
        weights = 4 * shape.params + (2 * shape.linear_params if half else 0)  # + autocast's cached bf16 copies
        trainable = shape.params
    elif kind == "adapter":
        weights = compute * shape.params + 4 * lora
        trainable = lora
    else:
        nf4 = NF4_BYTES if double_quant else NF4_BYTES_SINGLE
        fp32_other = frozen_in_fp32(upcast_frozen, precision)
        weights = int(nf4 * shape.linear_params) + (4 if fp32_other else compute) * shape.other_params + 4 * lora
        trainable = lora
        if not fp32_other or not half:  # a bf16 stream, or an fp32 one uncast, saves what LoRA's does (the graph)
            kind = "adapter"
    a_h, a_i, a_kv = ACT_COEF[kind]
    per_layer = a_h * s.hidden + a_i * s.intermediate + a_kv * s.kv_heads * s.head_dim
    if not half:
        per_layer *= FP32_ACT_SCALE[kind]
    if attention in ATTN_PAIR_BYTES:
        per_layer += ATTN_PAIR_BYTES[attention][0 if half else 1] * s.heads * row_width
    if gradient_checkpointing:  # every layer's input, plus one layer's activations while it is recomputed
        residual = 2 if kind == "adapter" and half else 4
        acts = tokens * (s.layers * s.hidden * residual + per_layer)
    else:
        acts = tokens * s.layers * per_layer
    positions = tokens if logit_tokens is None else logit_tokens
    if loss_chunk_tokens:
        logits = min(positions, loss_chunk_tokens) * s.vocab * CHUNKED_LOGIT_BYTES
    else:
        logits = positions * s.vocab * LOGIT_BYTES
    opt = OPTIMIZER_BYTES.get(optimizer, 8) * trainable
    if device == "cuda":
        overhead = OVERHEAD["cuda"]
    elif half:
        overhead = OVERHEAD["cpu"] + CPU_OVERHEAD_PER_PARAM * shape.params
    else:
        overhead = 0
    return MemoryEstimate(method, device, {
        "weights": int(weights), "gradients": 4 * trainable, "optimizer": opt, "activations": int(acts),
        "logits": int(logits), "working": int(WORKING_FRACTION * (acts + logits)), "overhead": int(overhead)})


def batch_footprint(rows: list[dict], collator, batch_size: int, chunked: bool, samples: int = 256,
                    seed: int = 0) -> tuple[int, int, int]:
    """The most positions, logit positions and row width over ``samples`` random micro-batches, built by
    the trainer's own collator: padding and packing are counted as they will happen."""
    import random

    from .loss import logit_positions

    rng = random.Random(seed)
    tokens = logits = width = 0
    for _ in range(samples):
        labels = collator(rng.sample(rows, min(batch_size, len(rows))))["labels"]
        tokens, logits = max(tokens, labels.numel()), max(logits, logit_positions(labels, chunked))
        width = max(width, labels.shape[-1])
    return tokens, logits, width


def available_bytes(device: str) -> int:
    """Memory this process can still take: free CUDA memory, or the OS's available RAM."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free
    import psutil

    return psutil.virtual_memory().available


def memory_fixes(method: str, batch_size: int, grad_accum: int, gradient_checkpointing: bool) -> list[str]:
    """What to change when ``method`` does not fit: the advice before training and after an OOM."""
    tips = [f"train.batch_size: {batch_size} -> {max(1, batch_size // 2)} and train.grad_accum: {grad_accum} -> "
            f"{grad_accum * 2} (the same effective batch)"]
    if not gradient_checkpointing:
        tips.append(f"train.gradient_checkpointing.{method}: true (about 30% slower, far less activation memory)")
    tip = techniques.get(method).oom_tip if method in techniques.names() else ""
    return tips + ([tip] if tip else [])


def check_fits(est: MemoryEstimate, budget: int, batch_size: int, policy: str = "refuse",
               gradient_checkpointing: bool = False, grad_accum: int = 1) -> None:
    """Refuse (or warn about) a run whose estimated peak exceeds ``budget`` bytes.

    Raises:
        MemoryBudgetError: ``policy == 'refuse'`` and the estimate does not fit.
    """
    if policy == "skip" or est.total <= budget:
        return
    m = est.method
    tips = memory_fixes(m, batch_size, grad_accum, gradient_checkpointing)
    msg = (f"{m} needs about {est.total / GiB:.1f} GiB at its peak ({est.describe()}), but "
           f"{budget / GiB:.1f} GiB is available on {est.device}. Try: " + "; ".join(tips) +
           ". Set train.memory_check: warn to try anyway.")
    if policy == "refuse":
        raise MemoryBudgetError(msg)
    log.warning(msg)


def estimate_for_config(cfg, method: str, model, tokens: int, logit_tokens: int | None, device: str,
                        precision: str, width: int) -> MemoryEstimate:
    """``estimate_memory`` with the technique's settings taken from a ``RunConfig``; ``width``: the
    micro-batch's row width."""
    from .attention import training_attention

    t = cfg.train
    return estimate_memory(model, method, tokens=tokens, logit_tokens=logit_tokens,
                           loss_chunk_tokens=t.loss_chunk_tokens, precision=precision, device=device,
                           optimizer=t.optimizer[method], gradient_checkpointing=t.gradient_checkpointing[method],
                           lora_r=cfg.lora.r, double_quant=cfg.quant.bnb_4bit_use_double_quant,
                           attention=training_attention(t.attention, device), row_width=width,
                           upcast_frozen=cfg.quant.upcast_frozen)


def estimate_for_run(cfg, model_path: str, train_rows, pad_id: int, device: str,
                     precision: str) -> dict[str, MemoryEstimate]:
    """The estimate for each technique of a configured run, with the micro-batch sized by the trainer's own
    collator over the tokenized training rows (model config read once, each list of rows once). ``train_rows``:
    one list for every technique, or ``method -> rows`` (each technique's replay share)."""
    from .data.tokenize import make_collator

    t = cfg.train
    collator = make_collator(t, pad_id, device)
    rows_of = train_rows if callable(train_rows) else (lambda m: train_rows)
    shape, footprints, out = model_shape(model_path), {}, {}
    for m in cfg.methods:
        rows = rows_of(m)
        if id(rows) not in footprints:
            footprints[id(rows)] = batch_footprint(rows, collator, t.batch_size, t.loss_chunk_tokens > 0, seed=cfg.seed)
        tokens, logit_tokens, width = footprints[id(rows)]
        out[m] = estimate_for_config(cfg, m, shape, tokens, logit_tokens, device, precision, width)
    return out


# Evaluation (no gradients): what a call adds above the loaded model (``estimate_eval_memory``).
EVAL_LOGIT_BYTES = 10  # the eval loss's chunk of logits: compute-dtype logits, their fp32 copy, its log-softmax
# Fitted on two CPU peaks (full and LoRA, the default run's models, 64 answers at a time, each in a fresh process
# on tcmalloc; bench/eval_memory.py) and checked on six more (BENCHMARKS.md): the process holds about 1.9x the
# bytes counted live, because the KV cache's tensors grow by one key a step, and each step frees every layer's and
# allocates it a little larger, which the heap's free spans rarely fit. CUDA: not measured, the live bytes only.
EVAL_SLACK = {"cpu": 1.9, "cuda": 1.0}
EVAL_OVERHEAD = {"cpu": 250 * MiB, "cuda": 0}


class EvalMemoryEstimate(MemoryEstimate):
    """Peak memory of one model's evaluation above the loaded model: the weight copies a call keeps (autocast's
    casts of fp32 weights, 4-bit weights dequantized once per call) plus the larger of answering (the KV cache
    and the next-token logits) and the eval loss (one chunk of logits), times the heap's slack, plus a fixed
    part."""

    @property
    def total(self) -> int:
        p = self.parts
        live = p["weight_copies"] + max(p["answering"], p["eval_loss"])
        return int(EVAL_SLACK[self.device] * live) + p["overhead"]


def estimate_eval_memory(config, method: str, *, cache_cells: int, answer_rows: int, loss_chunk_tokens: int = 512,
                         precision: str = "bf16", device: str = "cpu", lora_r: int = 16,
                         upcast_frozen: bool = False) -> EvalMemoryEstimate:
    """Predict what evaluating one model adds to its loaded weights (``evaluation.evaluate_model``).

    Args:
        method: ``base`` or a registered technique.
        cache_cells: the most KV-cache cells (rows x key positions) answering holds at once
            (``evaluation.answering_cells``).
        answer_rows: answers decoded together (``eval.batch_size``, or fewer questions).
        loss_chunk_tokens: answer positions whose logits the eval loss holds at once.
        upcast_frozen: a 4-bit base's other weights in fp32 (``quant.upcast_frozen``; fp16 always).
    """
    if method != techniques.BASE and method not in techniques.names():
        raise ValueError(f"method must be base or a registered technique ({', '.join(techniques.names())}), "
                         f"not {method!r}")
    kind = "whole" if method == techniques.BASE else techniques.get(method).memory_kind
    s = model_shape(config)
    half = precision in ("bf16", "fp16")
    head = s.vocab * s.hidden
    lora = s.lora_params(lora_r)
    if not half:  # fp32 weights are read as they are; only 4-bit ones are dequantized
        copies = 4 * s.linear_params if kind == "adapter_4bit" else 0
    elif kind == "whole":  # every fp32 matmul weight cast once per call, the tied head included
        copies = 2 * (s.linear_params + head)
    elif kind == "adapter":  # a base already in the compute dtype: only the fp32 adapters are cast
        copies = 2 * lora
    else:  # the 4-bit weights dequantized and the adapters cast, and the head when PEFT's upcast left it fp32
        copies = 2 * (s.linear_params + lora + (head if frozen_in_fp32(upcast_frozen, precision) else 0))
    # Keys are rotated in the residual stream's dtype (fp32 where the embeddings are fp32: whole models, and
    # 4-bit bases whose embeddings PEFT upcasts), values come out of the projection in the compute dtype.
    fp32_stream = kind == "whole" or (kind == "adapter_4bit" and frozen_in_fp32(upcast_frozen, precision))
    key_bytes = 4 if fp32_stream or not half else 2
    value_bytes = 2 if half else 4
    cell = s.layers * s.kv_heads * s.head_dim * (key_bytes + value_bytes)
    answering = cache_cells * cell + answer_rows * s.vocab * ((2 if half else 4) + 4)
    loss = loss_chunk_tokens * s.vocab * EVAL_LOGIT_BYTES
    return EvalMemoryEstimate(method, device, {"weight_copies": int(copies), "answering": int(answering),
                                               "eval_loss": int(loss), "overhead": EVAL_OVERHEAD[device]})


def memory_budget(train_cfg, device: str) -> int:
    """Bytes a training process may use: ``train.memory_budget_gib``, else what ``device`` has free."""
    return int(train_cfg.memory_budget_gib * GiB) if train_cfg.memory_budget_gib else available_bytes(device)
