"""Evaluation, identical for the base model and every technique: eval loss and perplexity on the
validation split, greedy-answer accuracy on the test split with confidence intervals."""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attention import ROW_SDPA, attention_kernel
from .data.tokenize import IGNORE, PadCollator, render_prompt
from .loss import answer_columns, answer_only_loss, shifted_targets
from .memory import estimate_eval_memory, model_shape
from .runtime import Runtime
from .scoring import candidate_pools, score


@contextlib.contextmanager
def cached_weight_casts(model):
    """Let each frozen weight be cast once per call instead of once per forward.

    Autocast caches its casts only for leaf tensors that require grad, so a frozen fp32 weight (the base
    model, QLoRA's fp32 embeddings and head) is cast again at every decoding step: measured 40% slower
    generation here. Under ``no_grad`` the flag changes no result, only the caching; it is restored after.

    A 4-bit weight on the CPU is dequantized once per call too (``_dequantized_once``): bitsandbytes
    dequantizes it at every forward and then runs a bf16 matmul, the same two steps, so the answers are the
    same bit for bit (tested) at the cost of a bf16 copy of those weights while the call lasts."""
    frozen = [p for p in model.parameters() if p.dtype == torch.float32 and not p.requires_grad and p.is_leaf]
    # a layer an enclosing call already serves keeps its dequantized copy, and that call restores it
    four_bit = [m for m in model.modules()
                if _is_4bit(m) and m.weight.device.type == "cpu" and "forward" not in vars(m)]
    for p in frozen:
        p.requires_grad_(True)
    for m in four_bit:
        m.forward = _dequantized_once(m)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for m in four_bit:
            del m.forward  # the class's own forward again; the dequantized copy goes with the closure


def _is_4bit(module) -> bool:
    """A bitsandbytes 4-bit linear layer (not PEFT's adapter layer around one, which shares its class name)."""
    return type(module).__module__.startswith("bitsandbytes") and type(module).__name__ in (
        "Linear4bit", "LinearNF4", "LinearFP4")


def _dequantized_once(module):
    """``module.forward`` (a bitsandbytes 4-bit linear layer) without gradients, its weight dequantized on the
    first call and kept: the ops bitsandbytes 0.50's ``gemm_4bit`` runs at every call (the blockwise scales
    dequantized in fp32, the 4-bit weight to the input's dtype, ``F.linear``), run once for the weight. Calls
    it cannot reproduce (gradients, a weight repacked into the CPU inference layout, the compute dtype not yet
    set) go to bitsandbytes' own forward."""
    cls_forward = type(module).forward.__get__(module)
    cache: dict[torch.dtype, torch.Tensor] = {}

    def forward(x):
        qs = module.weight.quant_state
        bias_grad = module.bias is not None and module.bias.requires_grad
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or bias_grad)
        if (needs_grad or qs is None or getattr(qs, "packing_format_for_cpu", False) or not module.compute_type_is_set
                or (qs.nested and qs.state2.blocksize != 256)):
            return cls_forward(x)
        inp_dtype = x.dtype
        if module.compute_dtype is not None:
            x = x.to(module.compute_dtype)
        bias = None if module.bias is None else module.bias.to(x.dtype)
        if x.dtype not in cache:
            absmax = qs.absmax
            if qs.nested:
                absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
                    qs.absmax, qs.state2.absmax, qs.state2.code, 256, torch.float32) + qs.offset
            cache[x.dtype] = torch.ops.bitsandbytes.dequantize_4bit.default(
                module.weight.view(-1, 1), absmax, qs.blocksize, qs.quant_type, qs.shape, x.dtype)
        return F.linear(x, cache[x.dtype], bias).to(inp_dtype)

    return forward


@torch.no_grad()
def teacher_forced_exact_match(model, tokenizer, rows: list[dict], rt: Runtime, batch_size: int = 8) -> float:
    """Share of ``rows`` (tokenized) whose every answer token is the model's argmax given the true
    prefix: the same as greedy exact match (lm-evaluation-harness's ``is_greedy``), at the cost of one
    forward pass. Logits are computed only at answer positions. Rows are batched in length order: validation
    rows run 35-250 tokens, and in their own order padding doubled the time (measured: 16.4 s against 7.9 s for
    160 rows here, the same row-for-row hits)."""
    was_training = model.training
    eval_mode(model)
    collate = PadCollator(tokenizer.pad_token_id)
    rows = sorted(rows, key=lambda r: r["length"])
    hits = 0
    try:
        # one autocast context for all batches: its cast cache (and the 4-bit dequantization) lives as long
        # as the context, so the weights are cast once per call, not once per batch
        with rt.autocast(), cached_weight_casts(model):
            for s in range(0, len(rows), batch_size):
                batch = {k: v.to(_device(model)) for k, v in collate(rows[s:s + batch_size]).items()}
                targets = shifted_targets(batch["labels"])
                keep = answer_columns(targets)
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               logits_to_keep=keep).logits
                targets = targets[:, keep]
                right = (logits.argmax(-1) == targets) | (targets == IGNORE)
                hits += int(right.all(1).sum())
    finally:
        model.train(was_training)
    return hits / max(len(rows), 1)


def eval_mode(model):
    """``model.eval()``, except that bitsandbytes' 4-bit layers stay in training mode (their ``training`` flag
    changes nothing else in their forward): on an AVX512-BF16 CPU bitsandbytes 0.50 repacks a 4-bit weight in
    place into an inference-only layout on its first eval-mode forward without gradients, and that layout broke
    training after a mid-training measurement (QLoRA validation exact match 24% without the measurements, 1%
    with them), PEFT's reading of the weight (QDoRA answered every question with an empty line), and rounds
    differently from the training-mode forward that training runs. In training mode every measurement of a
    4-bit model runs one forward, and ``cached_weight_casts`` makes it as fast as the inference layout was
    (BENCHMARKS.md)."""
    model.eval()
    for module in model.modules():
        if _is_4bit(module):
            module.train()
    return model


@torch.no_grad()
def eval_loss(model, tokenizer, rows: list[dict], rt: Runtime, batch_size: int = 8) -> dict:
    """Mean cross-entropy per answer token over ``rows`` (tokenized), and its perplexity. Batches of 8, as
    teacher forcing: all 160 validation rows took 7.7-9.4 s for full fine-tuning and 9.3-9.6 s for QLoRA in
    batches of 8 against 9.6-12.3 s and 14.8-16.2 s in batches of 32 (the losses alike to 1e-4)."""
    eval_mode(model)
    collate = PadCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: rows[i]["length"])
    with rt.autocast(), cached_weight_casts(model):  # weights cast once per call (teacher_forced_exact_match)
        for s in tqdm(range(0, len(rows), batch_size), desc="eval loss", leave=False):
            batch = {k: v.to(_device(model)) for k, v in collate([rows[i] for i in order[s:s + batch_size]]).items()}
            loss, n = answer_only_loss(model, batch, num_items=1)
            total += float(loss)
            count += int(n)
    mean = total / max(count, 1)
    return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50))}


def stop_token_ids(tokenizer, at_newline: bool) -> list[int]:
    """End of turn, and with ``at_newline`` every token that contains a line break: a one-line answer
    is finished there, and a base model's second paragraph costs no decoding."""
    stop = {i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
            if isinstance(i, int) and i >= 0}
    if at_newline:
        stop |= _newline_ids(tokenizer)
    return sorted(stop)


def _newline_ids(tokenizer) -> set[int]:
    key = (tokenizer.name_or_path, len(tokenizer))
    if key not in _NEWLINES:
        ids = range(len(tokenizer))
        _NEWLINES[key] = {i for i, t in zip(ids, tokenizer.batch_decode([[i] for i in ids])) if "\n" in t}
    return _NEWLINES[key]


_NEWLINES: dict = {}


@torch.no_grad()
def generate_answers(model, tokenizer, records: list[dict], rt: Runtime, max_new_tokens: int | list[int] = 64,
                     batch_size: int = 64, desc: str = "answers", stop_at_newline: bool = False) -> list[str]:
    """Greedy answers for each record's prompt (its messages up to the answer, in the chat template), in
    order: ``generate_from_prompts`` on the rendered prompts. A record with ``shared_turns`` (few-shot prompts:
    ``baselines.few_shot_records``) marks its first messages as a prefix other records repeat: read once."""
    prompts = [render_prompt(tokenizer, r["messages"]) for r in records]
    shared = None
    if any(r.get("shared_turns") for r in records):
        prefix_ids: dict[str, list[int]] = {}  # each distinct prefix tokenized once
        shared = [shared_prefix_tokens(tokenizer, r["messages"][:r["shared_turns"]], p, prefix_ids)
                  if r.get("shared_turns") else 0 for r, p in zip(records, prompts)]
    return generate_from_prompts(model, tokenizer, prompts, rt, max_new_tokens, batch_size, desc, stop_at_newline,
                                 shared)


def shared_prefix_tokens(tokenizer, messages: list[dict], prompt: str, prefix_ids: dict | None = None) -> int:
    """How many of ``prompt``'s tokens are ``messages`` rendered alone (0 where the two tokenize differently at
    the seam, so nothing is shared that would change a token). ``prefix_ids``: the token ids of prefixes already
    tokenized (text -> ids), filled as it goes."""
    prefix = tokenizer.apply_chat_template(messages, tokenize=False)
    if not prompt.startswith(prefix):
        return 0
    ids_of = {} if prefix_ids is None else prefix_ids
    if prefix not in ids_of:
        ids_of[prefix] = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    a = ids_of[prefix]
    b = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return len(a) if b[:len(a)] == a and len(a) < len(b) else 0


def generate_from_prompts(model, tokenizer, prompts: list[str], rt: Runtime, max_new_tokens: int | list[int] = 64,
                          batch_size: int = 64, desc: str = "answers", stop_at_newline: bool = False,
                          shared: list[int] | None = None) -> list[str]:
    """Greedy continuations of already rendered prompts, in order, ``batch_size`` answers decoded at a time
    (``greedy_decode``: a finished answer's place goes to the next prompt at once). Prompts are taken in length
    order, so the prompts read together need little padding (few-shot prompts run 94-595 tokens). Each answer is
    the one the prompt gets alone (``batch_size=1``, as ``nbatune ask`` answers): each row attends over its own
    tokens only (``attention.ROW_SDPA``).

    Args:
        max_new_tokens: one budget for all, or one per prompt (``answer_budgets``).
        shared: per prompt, its first tokens that other prompts repeat (``greedy_decode``).
    """
    eval_mode(model)
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: (len(ids[i]), budgets[i]))
    out: list[str] = [""] * len(prompts)
    stop = stop_token_ids(tokenizer, stop_at_newline)
    with attention_kernel(model, ROW_SDPA), rt.autocast(), cached_weight_casts(model), \
            tqdm(total=len(prompts), desc=desc, leave=False) as bar:
        gen = greedy_decode(model, [ids[i] for i in order], [budgets[i] for i in order], stop,
                            tokenizer.pad_token_id, batch_size, on_done=lambda _: bar.update(),
                            shared=[shared[i] for i in order] if shared else None)
    for j, i in enumerate(order):
        out[i] = tokenizer.decode(gen[j], skip_special_tokens=True).strip()
    return out


PREFILL_TOKENS = 2048  # padded prompt tokens read in one forward pass: wider passes ran slower (32 few-shot
# prompts of ~280 tokens: 38 s in passes of 32, 18 s in passes of 4; their activations outgrow the cache)
MIN_ROWS = 2


@torch.no_grad()
def greedy_decode(model, prompts: list[list[int]], budgets: list[int], stop: list[int], pad_id: int | None,
                  batch_size: int = 64, on_done=None, shared: list[int] | None = None) -> list[list[int]]:
    """Greedy tokens for each prompt (token ids), up to its own budget or its first stop token (kept).

    Up to ``batch_size`` answers are decoded together; an answer that ends leaves the batch and its KV cache
    at once, and the next prompts are read (``PREFILL_TOKENS`` at a time) and join the batch as soon as a
    quarter of it is free, so the batch stays full (answers run 3 to 96 tokens: batches that waited for their
    longest answer decoded about 15 rows per step of 32). Rows never interact: each row attends over its own
    tokens only (``attention.ROW_SDPA``), and a row's cache is left-padded to the batch's width.

    No forward pass runs with fewer than ``MIN_ROWS`` rows: a bf16 matmul with one row takes another kernel (a
    matrix-vector product) that rounds differently from the same row among others (measured here: the 1536 ->
    576 projection), so a question answered alone, or the last row of a batch, would get other answers. A lone
    row runs beside a ghost (a copy, or a finished row kept on) whose tokens are dropped.

    ``shared``: per prompt, how many of its first tokens are a prefix that other prompts repeat exactly (a
    few-shot prompt's solved examples): each such prefix is read once (``_prefill_shared``). Its answers are then
    those of prompts read in another order of matmuls, the same within rounding, not bit for bit."""
    device = next(model.parameters()).device
    known: dict = {}  # a shared prefix's tokens -> its KV cache
    out: list[list[int]] = [[] for _ in prompts]
    stop_ids = torch.tensor(stop, device=device)
    queue = list(range(len(prompts)))[::-1]  # popped from the end: in the caller's order
    state = None  # (rows: prompt index or -1 for a ghost, budgets left, mask, cache, next-token logits)
    while True:
        live = 0 if state is None else int((state[0] >= 0).sum())
        if queue and (state is None or batch_size - live >= max(1, batch_size // 4)):
            state = _admit(model, prompts, queue, batch_size - live, budgets, pad_id, device, state, shared, known)
        if state is None:
            return out
        rows, left, mask, cache, logits = state
        token = logits.argmax(-1)
        for row, t in zip(rows.tolist(), token.tolist()):
            if row >= 0:
                out[row].append(t)
        left = left - 1
        going = ~torch.isin(token, stop_ids) & (left > 0) & (rows >= 0)
        if on_done is not None:
            for row in rows[(rows >= 0) & ~going].tolist():
                on_done(row)
        if not going.any():
            state = None
            continue
        keep = going.nonzero().squeeze(1)
        if len(keep) < MIN_ROWS:  # finished rows stay on as ghosts, or the one row's copy
            spare = (~going).nonzero().squeeze(1)
            keep = torch.cat([keep, spare, keep.repeat(MIN_ROWS)])[:MIN_ROWS]
        rows = torch.where(going, rows, -1)[keep]
        if len(keep) > 1 and keep[-1] == keep[0]:
            rows[-1] = -1  # a copy is a ghost
        left, token, mask = left[keep], token[keep], mask[keep]
        if not bool(going.all()):  # else every row goes on, keep is every row in order: nothing to copy
            cache.batch_select_indices(keep)
        mask, cache = _trim_padding(mask, cache)
        mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
        step = model(input_ids=token[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                     cache=cache, use_cache=True)
        state = (rows, left, mask, step.cache, step.logits[:, -1])


def _admit(model, prompts, queue: list[int], free: int, budgets, pad_id: int | None, device, state, shared=None,
           known=None):
    """Read up to ``free`` prompts from the end of ``queue`` and add them to the batch ``state`` (``shared``:
    ``_prefill_shared``)."""
    parts = [] if state is None else [state]
    while free > 0 and queue:
        width = len(prompts[queue[-1]])
        take = [queue.pop() for _ in range(min(free, len(queue), max(1, PREFILL_TOKENS // width)))]
        take.sort(key=lambda i: -len(prompts[i]))  # in order of key count, as the batch keeps its rows
        free -= len(take)
        rows = torch.tensor(take)
        if len(take) < MIN_ROWS:  # read beside a ghost copy
            take = take * MIN_ROWS
            rows = torch.cat([rows, rows.new_full((MIN_ROWS - 1,), -1)])
        rows = rows.to(device)
        if shared is not None and any(shared[i] for i in take):
            logits, cache, mask = _prefill_shared(model, [prompts[i] for i in take], [shared[i] for i in take],
                                                  known, device)
        else:
            logits, cache, mask = _prefill_padded(model, [prompts[i] for i in take], pad_id, device)
        parts.append((rows, torch.tensor([budgets[max(i, 0)] for i in rows.tolist()], device=device), mask, cache,
                      logits))
    return parts[0] if len(parts) == 1 else _merge(parts)


def _prefill_padded(model, prompts: list[list[int]], pad_id: int | None, device):
    """``prefill`` of token lists, left-padded to the longest: (logits, cache, mask)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id or 0, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, width - len(p):] = torch.tensor(p)
        mask[j, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return (*prefill(model, ids, mask), mask)


def _prefill_shared(model, prompts: list[list[int]], shared: list[int], known: dict, device):
    """Read prompts whose first ``shared[i]`` tokens other prompts repeat (a few-shot prompt's solved examples):
    each distinct prefix is read once (``known`` keeps its KV cache for the call), and the rest of each prompt
    attends over it. Returns (next-token logits, KV cache, mask) as ``prefill`` with its mask.

    The rows are left-padded to the widest as ever; the pass reads the last ``S`` columns (``S``: the longest
    unshared part), so a row whose unshared part is shorter reads the end of its prefix again there. The columns
    before the window hold each row's first prefix tokens, copied from its prefix's cache."""
    from transformers import DynamicCache

    lengths = [len(p) for p in prompts]
    window = max(n - s for n, s in zip(lengths, shared))
    width = max(lengths)
    past = width - window
    if past == 0:  # the widest row shares nothing: nothing to reuse
        return _prefill_padded(model, prompts, None, device)
    pasts = [max(0, n - window) for n in lengths]  # tokens of each row before the window: all from its prefix
    for p, s in zip(prompts, shared):
        key = tuple(p[:s])
        if s and key not in known:
            ids = torch.tensor([p[:s]] * MIN_ROWS, device=device)
            known[key] = prefill(model, ids, torch.ones_like(ids))[1]
    ids = torch.zeros((len(prompts), window), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, (p, n) in enumerate(zip(prompts, pasts)):
        ids[j, window - (len(p) - n):] = torch.tensor(p[n:])
        mask[j, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    caches = [known.get(tuple(p[:s])) if n else None for p, s, n in zip(prompts, shared, pasts)]
    ref_cache = next(c for c in caches if c is not None)  # past > 0: the widest row reads part of its prefix first
    layers = []
    for n_layer, ref_layer in enumerate(ref_cache.layers):
        kv = []
        for name in ("keys", "values"):
            ref = getattr(ref_layer, name)
            t = ref.new_zeros(len(prompts), ref.shape[1], past, ref.shape[3])
            for j, (c, n) in enumerate(zip(caches, pasts)):
                if n:
                    t[j, :, past - n:] = getattr(c.layers[n_layer], name)[0, :, :n]
            kv.append(t)
        layers.append(tuple(kv))
    cache = DynamicCache(ddp_cache_data=layers, config=model.config)
    last = torch.tensor([window - 1], device=device)
    step = model(input_ids=ids, attention_mask=mask, position_ids=((mask.cumsum(-1) - 1).clamp(min=0))[:, past:],
                 cache=cache, use_cache=True, logits_to_keep=last)
    return step.logits[:, -1], step.cache, mask


def _merge(parts):
    """One batch from several: each row's mask and KV cache left-padded to the widest, the rows in order of
    key count, longest first. Every row gains one key a step, so the order holds until the next merge, and
    the rows of a decoding step's key bucket are neighbours (``attention._one_query_attention`` slices them)."""
    width = max(p[2].shape[1] for p in parts)
    rows, left, logits = (torch.cat([p[k] for p in parts]) for k in (0, 1, 4))
    mask = torch.cat([F.pad(p[2], (width - p[2].shape[1], 0)) for p in parts])
    order = torch.sort(mask.sum(-1), descending=True, stable=True).indices
    cache = parts[0][3]
    for n, layer in enumerate(cache.layers):
        for name in ("keys", "values"):
            setattr(layer, name, torch.cat([F.pad(getattr(p[3].layers[n], name), (0, 0, width - p[2].shape[1], 0))
                                            for p in parts])[order])
    return rows[order], left[order], mask[order], cache, logits[order]


def _trim_padding(mask, cache):
    """Drop the leading columns that are padding in every row (the rows that needed them have left)."""
    first = int(mask.any(0).int().argmax())
    if first == 0:
        return mask, cache
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return mask[:, first:], cache


@torch.no_grad()
def prefill(model, input_ids, attention_mask):
    """Read left-padded prompts: (the next-token logits of each row, their KV cache). Under ``ROW_SDPA``
    each row attends over its own tokens only, so padding costs the linear layers a little and changes
    no result."""
    # The last position as an index, not ``logits_to_keep=1``: a slice leaves the hidden states strided, and
    # for a bf16 model (LoRA's base) the head's matmul then copies its 49k x 576 weight once per row (measured:
    # 2 s of a batch of 32's prefill here). Indexing copies the rows instead; the logits are the same.
    width = input_ids.shape[1]
    last = torch.tensor([width - 1], device=input_ids.device)
    step = model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=last)
    return step.logits[:, -1], step.cache


ANSWER_SLACK = 24  # tokens beyond the reference answer's length: room for a sentence around it


def answer_budgets(tokenizer, records: list[dict], cap: int) -> list[int]:
    """Per question, the reference answer's length plus ``ANSWER_SLACK`` tokens, at most ``cap``: the
    same budget for every model, and no decoding of 96 tokens for a two-word answer."""
    lengths = [len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in records]
    return [min(cap, n + ANSWER_SLACK) for n in lengths]


def cache_cells(prompt_lens: list[int], answer_lens: list[int], batch_size: int) -> int:
    """The most KV-cache cells (rows x key positions, padding included) that ``greedy_decode`` holds at once for
    prompts of these lengths (in the order it reads them) whose answers run ``answer_lens`` tokens: its schedule
    replayed without a model, ghost rows included. A merge of newly read prompts into the batch holds the new
    prompts' caches beside the merged cache, which is built layer by layer over the batch's old one."""
    queue = list(zip(prompt_lens, answer_lens))[::-1]
    rows: list[list] = []  # the batch in its order: [keys held, tokens still to come, ghost]
    peak = 0
    while queue or rows:
        live = sum(not r[2] for r in rows)
        if queue and batch_size - live >= max(1, batch_size // 4):
            free, parts = batch_size - live, []
            while free > 0 and queue:
                take = [queue.pop() for _ in range(min(free, len(queue), max(1, PREFILL_TOKENS // queue[-1][0])))]
                free -= len(take)
                part = [[p, n, False] for p, n in take]
                parts.append(part + [[part[0][0], 1, True]] * (MIN_ROWS - len(part)))  # a lone prompt's ghost
            new = [len(r) * max(k for k, _, _ in r) for r in parts]
            extra = new if rows else new[1:]  # alive beside the merged cache: all but what it is built over
            rows = sorted(rows + [r for part in parts for r in part], key=lambda r: -r[0])
            peak = max(peak, len(rows) * rows[0][0] + sum(extra))
        for r in rows:  # a token from the last logits; a row whose answer is done leaves before the next pass
            r[1] -= 1
        going = [r for r in rows if not r[2] and r[1] > 0]
        if not going:
            rows = []
            continue
        if len(going) < MIN_ROWS:  # a lone row goes on beside a finished row kept as a ghost, or its copy
            spare = [r for r in rows if r[2] or r[1] <= 0] or [list(going[0])]
            going += [[k, n, True] for k, n, _ in spare[:MIN_ROWS - len(going)]]
        rows = going
        for r in rows:
            r[0] += 1
        peak = max(peak, len(rows) * max(r[0] for r in rows))
    return peak


def answering_cells(tokenizer, records: list[dict], cap: int, batch_size: int) -> int:
    """``cache_cells`` for answering ``records`` as ``answer_and_score`` does, each answer as long as its budget
    (the reference answer plus ``ANSWER_SLACK``, at most ``cap``): an upper bound for answers that stop sooner."""
    if not records:
        return 0
    ids = tokenizer([render_prompt(tokenizer, r["messages"]) for r in records], add_special_tokens=False)["input_ids"]
    budgets = answer_budgets(tokenizer, records, cap)
    order = sorted(range(len(records)), key=lambda i: (len(ids[i]), budgets[i]))
    return cache_cells([len(ids[i]) for i in order], [budgets[i] for i in order], batch_size)


def memory_estimates(cfg, model_path: str, tokenizer, test_records: list[dict], retention_records: list[dict],
                     device: str, precision: str) -> dict:
    """``memory.estimate_eval_memory`` for the base and each technique of a run, the KV cache sized by replaying the
    answering schedule over the questions it will answer (test and retention). Empty for a model whose shape the
    estimator cannot read."""
    e = cfg.eval
    calls = [(r, cap) for r, cap in ((test_records[: e.max_test_examples], e.max_new_tokens),
                                     (retention_records, RETENTION_MAX_NEW_TOKENS)) if r]
    if not calls:
        return {}
    try:
        shape = model_shape(model_path)
    except ValueError:
        return {}
    cells = max(answering_cells(tokenizer, r, cap, e.batch_size) for r, cap in calls)
    rows = max(min(e.batch_size, len(r)) for r, _ in calls)
    return {m: estimate_eval_memory(shape, m, cache_cells=cells, answer_rows=rows,
                                    loss_chunk_tokens=cfg.train.loss_chunk_tokens, precision=precision, device=device,
                                    lora_r=cfg.lora.r, upcast_frozen=cfg.quant.upcast_frozen)
            for m in ["base", *cfg.methods]}


def answer_and_score(model, tokenizer, records, rt: Runtime, eval_cfg, pools=None, desc="answers",
                     max_new_tokens: int | None = None) -> dict:
    """Generate an answer to every record and score them: accuracy, intervals, per category, flags."""
    budgets = answer_budgets(tokenizer, records, max_new_tokens or eval_cfg.max_new_tokens)
    preds = generate_answers(model, tokenizer, records, rt, budgets, eval_cfg.batch_size, desc,
                             eval_cfg.stop_at_newline)
    return {**score(records, preds, pools), "predictions": preds}


RETENTION_MAX_NEW_TOKENS = 32  # every retention answer is a word or a number; a sentence fits


def general_accuracy(model, tokenizer, records, rt: Runtime, eval_cfg, pools, desc="general") -> float:
    """Accuracy of generated answers on general-knowledge records, scored as the retention test."""
    return answer_and_score(model, tokenizer, records, rt, eval_cfg, pools, desc, RETENTION_MAX_NEW_TOKENS)["accuracy"]


def evaluate_model(model, tokenizer, val_rows, test_records, rt: Runtime, eval_cfg, pools=None,
                   retention_records=None, retention_pools=None) -> dict:
    """Everything the comparison needs about one model's quality, plus how long each part took.

    Args:
        retention_pools: competing answers of the general-knowledge questions (both retention splits);
            default: those of ``retention_records``.
    """
    t0 = time.perf_counter()
    loss = eval_loss(model, tokenizer, val_rows, rt)
    acc = answer_and_score(model, tokenizer, test_records, rt, eval_cfg, pools, "test answers")
    out = {**loss, **acc, "eval_seconds": time.perf_counter() - t0}
    if retention_records:
        t1 = time.perf_counter()
        ret = answer_and_score(model, tokenizer, retention_records, rt, eval_cfg,
                               retention_pools or candidate_pools(retention_records), "retention",
                               RETENTION_MAX_NEW_TOKENS)
        out["retention"] = {**ret, "seconds": time.perf_counter() - t1}
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device
