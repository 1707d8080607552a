"""Replay: the base model's own greedy answers to general prompts (``nbatune.data.replay``), mixed into the
training data at ``train.replay_share``, so that fine-tuning keeps how the base answers outside
basketball. Generated once per base model and cached by a fingerprint of the model files, the prompts,
the system prompt and the generation settings."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .data import replay as prompts_module
from .modeling import default_cache_dir, files_digest, load_model

log = logging.getLogger(__name__)
MAX_NEW_TOKENS = 48  # a base's one-sentence answer fits
# How the answers were generated; a change to it makes earlier caches stale. 2: row-wise attention, each
# answer the one its prompt gets alone (evaluation.generate_answers). 3: decoding attention in fp32 matmuls
# over key buckets (attention._one_query_attention), which rounds differently from SDPA.
GENERATION = 3


def fingerprint(model_path: str, system_prompt: str, precision: str) -> str:
    """What the answers depend on: the model's weights (their bytes), config and tokenizer files, the
    prompts, the system prompt, the generation budget and method, and the precision."""
    h = hashlib.sha256()
    files_digest(model_path, h)
    h.update(json.dumps([model_path if not Path(model_path).is_dir() else "", prompts_module.prompts(), system_prompt,
                         MAX_NEW_TOKENS, precision, GENERATION]).encode())
    return h.hexdigest()[:16]


def records(system_prompt: str, answers: list[str]) -> list[dict]:
    """Chat records of each prompt with the base's answer (empty answers dropped)."""
    out = []
    for i, (q, a) in enumerate(zip(prompts_module.prompts(), answers)):
        if a.strip():
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}]
            out.append({"id": f"replay-{i:03d}", "category": "replay", "messages": messages, "answer": a.strip(),
                        "answer_type": "text", "tolerance": 0.0, "format": "", "unseen": False})
    return out


def base_answers(model_path: str, tokenizer, cfg, rt) -> list[str]:
    """The base's greedy answers to every replay prompt, from the cache when the fingerprint matches."""
    from .evaluation import generate_answers
    from .measure import free_memory

    key = fingerprint(model_path, cfg.model.system_prompt, rt.precision)
    path = default_cache_dir() / "replay" / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("prompts") == prompts_module.prompts():
            log.info("replay: the base's answers from %s", path)
            return cached["answers"]
    log.info("replay: generating the base's answers to %d general prompts (once per base model)",
             len(prompts_module.prompts()))
    model = load_model(model_path, "base", cfg.model, rt, cfg.lora, cfg.quant, cfg.seed)
    shells = [{"messages": ([{"role": "system", "content": cfg.model.system_prompt}] if cfg.model.system_prompt else [])
               + [{"role": "user", "content": q}, {"role": "assistant", "content": ""}]}
              for q in prompts_module.prompts()]
    answers = generate_answers(model, tokenizer, shells, rt, MAX_NEW_TOKENS, cfg.eval.batch_size, "replay answers",
                               stop_at_newline=True)
    del model
    free_memory()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"prompts": prompts_module.prompts(), "answers": answers}, indent=1))
    tmp.replace(path)
    return answers


# The base's distribution kept per answer token: on the embedded model's 4,376 replay answer tokens its top 32 hold
# 93% of the probability on average (5% of tokens under 71%); the rest is spread over the 49k-token vocabulary.
TOP_K = 32


def with_distributions(rows: list[dict], model_path: str, tokenizer, cfg, rt) -> list[dict]:
    """Replay rows (tokenized) with the base's next-token distribution at each answer token: its ``TOP_K`` most
    likely tokens and their probabilities, renormalised (``soft_ids``, ``soft_probs``; ``train.replay_targets:
    distribution``). One teacher-forced pass of the base over the rows (20 s here with loading the base)."""
    import torch

    from .data.tokenize import IGNORE, PadCollator
    from .evaluation import cached_weight_casts
    from .loss import shifted_targets
    from .measure import free_memory

    model = load_model(model_path, "base", cfg.model, rt, cfg.lora, cfg.quant, cfg.seed).eval()
    collate, out = PadCollator(tokenizer.pad_token_id), []
    with torch.no_grad(), rt.autocast(), cached_weight_casts(model):
        for s in range(0, len(rows), 16):
            part = rows[s:s + 16]
            batch = collate(part)
            targets = shifted_targets(batch["labels"])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            top = logits.softmax(-1).topk(TOP_K, dim=-1)
            probs = top.values / top.values.sum(-1, keepdim=True)
            for j, row in enumerate(part):
                at = (targets[j] != IGNORE).nonzero().squeeze(1)
                out.append({**row, "soft_ids": top.indices[j, at].tolist(), "soft_probs": probs[j, at].tolist()})
    del model
    free_memory()
    return out


def prepare(train_rows: list[dict], model_path: str, tokenizer, cfg, rt) -> tuple[list[dict], list[dict], dict]:
    """The replay rows (toward the base's greedy answers or its distribution, ``train.replay_targets``), the training
    rows made ready to be mixed with them, and what there is to mix (``dataset.replay`` in results.json; ``mix``
    adds them at each technique's ``train.replay_share``)."""
    from .data.tokenize import tokenize_records

    t = cfg.train
    recs = records(cfg.model.system_prompt, base_answers(model_path, tokenizer, cfg, rt))
    if not recs:  # a base that answers nothing has no answer style to keep
        log.warning("replay: the base model gave no answer to any general prompt; training without replay")
        return train_rows, [], {"share": t.replay_share, "prompts": 0, "rows": {}, "skipped": "the base gave no answers"}
    rows, _ = tokenize_records(recs, tokenizer, cfg.model.max_length, "drop", "replay", False)
    if t.replay_targets == "distribution":
        rows = with_distributions(rows, model_path, tokenizer, cfg, rt)
        # every row has the columns (the training dataset takes its columns from its first row)
        train_rows = [{**r, "soft_ids": [], "soft_probs": []} for r in train_rows]
    return train_rows, rows, {"share": t.replay_share, "targets": t.replay_targets, "prompts": len(rows),
                              "rows": {m: len(mix(train_rows, rows, t.replay_share_for(m))) - len(train_rows)
                                       for m in cfg.methods},
                              "fingerprint": fingerprint(model_path, cfg.model.system_prompt, rt.precision)}


def mix(train_rows: list[dict], replay_rows: list[dict], share: float) -> list[dict]:
    """``train_rows`` with replay rows appended, repeated as needed, to make up ``share`` of the result (the
    trainer shuffles by the seed)."""
    if share <= 0 or not replay_rows:
        return train_rows
    want = round(share / (1 - share) * len(train_rows))
    return train_rows + [replay_rows[i % len(replay_rows)] for i in range(want)]
