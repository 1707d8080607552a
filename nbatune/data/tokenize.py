"""Chat records -> token ids with the loss on the answer only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .loading import DataError

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class TokenizeStats:
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kept": self.kept, "truncated": self.truncated, "dropped": self.dropped, "reasons": dict(self.reasons)}


def render_prompt(tok, messages: list[dict]) -> str:
    """The prompt up to the assistant header (the last message, the answer, is left out)."""
    return tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)


def segments(tok, messages: list[dict], all_turns: bool = True) -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, is_answer)`` pieces, using the model's own chat template.
    With ``all_turns`` every assistant turn is an answer to learn (as TRL's ``assistant_only_loss``);
    otherwise only the last one."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    targets = turns if all_turns else turns[-1:]
    out, done = [], ""
    for i in targets:
        prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError(f"the chat template of {tok.name_or_path!r} does not render each prompt as a prefix of the "
                            "conversation, so the answers cannot be separated from the prompts; set "
                            "model.chat_template to one that does")
        out += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return out


def tokenize_records(records: list[dict], tok, max_length: int, overlong: str, split: str,
                     all_turns: bool = True) -> tuple[list[dict], TokenizeStats]:
    """Each row gets ``input_ids``, ``labels`` (everything but the answers masked with -100) and ``length``.

    Raises:
        DataError: nothing is left after preprocessing (the message counts what was dropped and why).
    """
    rows, stats = [], TokenizeStats()
    for rec in records:
        ids, labels = [], []
        for text, is_answer in segments(tok, rec["messages"], all_turns):
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if is_answer else [IGNORE] * len(piece)
        if len(ids) > max_length:
            first_answer = next((i for i, x in enumerate(labels) if x != IGNORE), len(ids))
            if overlong == "drop" or first_answer >= max_length:
                reason = "longer than model.max_length" if overlong == "drop" else "prompt alone exceeds max_length"
                stats.dropped += 1
                stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
                continue
            stats.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        rows.append({"input_ids": ids, "labels": labels, "length": len(ids)})
    stats.kept = len(rows)
    if stats.truncated or stats.dropped:
        log.warning("%s: %d examples truncated, %d dropped (model.max_length=%d)", split, stats.truncated,
                    stats.dropped, max_length)
    if not rows:
        why = ", ".join(f"{k}: {v}" for k, v in stats.reasons.items()) or "no rows"
        raise DataError(f"{split} dataset is empty after preprocessing ({stats.dropped} dropped: {why})")
    return rows, stats


def make_collator(train_cfg, pad_id: int, device: str):
    """The trainer's collator for ``train.batching``: the training loop and the memory estimator both
    build their batches with it."""
    if train_cfg.batching == "packed":
        return PackedCollator(pad_id, train_cfg.pack_row_tokens)
    return PadCollator(pad_id, 8 if device == "cuda" else None)


class PadCollator:
    """Right-pads a batch. Padding gets label -100 and attention 0; a pad id equal to EOS is harmless
    because labels come from the template, not from the pad id."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        n = max(len(b["input_ids"]) for b in batch)
        if self.multiple:
            n = -(-n // self.multiple) * self.multiple
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            L = len(b["input_ids"])
            ids[i, :L] = torch.tensor(b["input_ids"])
            labels[i, :L] = torch.tensor(b["labels"])
            mask[i, :L] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                **soft_targets([(i, 0, b) for i, b in enumerate(batch)], labels)}


def soft_targets(placed: list[tuple[int, int, dict]], labels) -> dict:
    """``soft_ids`` and ``soft_probs`` (rows, width, k) when some example of the batch carries a distribution per
    answer token (replay toward the base's distribution, ``train.replay_targets``), else nothing. ``placed``:
    (row, offset, example) as the collator laid them out. Every other answer token is its own label with
    probability 1, so the loss is the plain cross-entropy there."""
    import torch

    if not any(x.get("soft_ids") for _, _, x in placed):
        return {}
    k = max(len(x["soft_ids"][0]) for _, _, x in placed if x.get("soft_ids"))
    sid = torch.zeros((*labels.shape, k), dtype=torch.long)
    sp = torch.zeros((*labels.shape, k), dtype=torch.float32)
    answer = labels != IGNORE
    sid[..., 0] = torch.where(answer, labels, 0)
    sp[..., 0] = answer.float()
    for r, at, x in placed:
        if x.get("soft_ids"):
            where = [at + i for i, t in enumerate(x["labels"]) if t != IGNORE]
            if len(where) != len(x["soft_ids"]):
                raise ValueError(f"an example has {len(x['soft_ids'])} soft targets for {len(where)} answer tokens")
            sid[r, where] = torch.tensor(x["soft_ids"])
            sp[r, where] = torch.tensor(x["soft_probs"], dtype=torch.float32)
    return {"soft_ids": sid, "soft_probs": sp}


class PackedCollator:
    """Padding-free batches: the examples of a batch are packed, first-fit by decreasing length, into
    rows of at most ``row_tokens`` tokens; ``position_ids`` restart at 0 for every example. With no
    attention mask, transformers builds a block-diagonal causal mask from the restarts, so examples
    never attend to each other. Batches can then be drawn at random (mixed tasks, good for
    optimisation) without paying for padding. Attention costs ``total_tokens x row_tokens`` instead
    of ``total_tokens^2`` for a single packed row.
    """

    def __init__(self, pad_id: int, row_tokens: int = 256):
        self.pad_id = pad_id
        self.row_tokens = row_tokens

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        cap = max(self.row_tokens, max(len(b["input_ids"]) for b in batch))
        rows: list[list[dict]] = []
        for b in sorted(batch, key=lambda b: -len(b["input_ids"])):
            for row in rows:
                if sum(len(x["input_ids"]) for x in row) + len(b["input_ids"]) <= cap:
                    row.append(b)
                    break
            else:
                rows.append([b])
        width = max(sum(len(x["input_ids"]) for x in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        placed = []
        for r, row in enumerate(rows):
            at = 0
            for x in row:
                n = len(x["input_ids"])
                ids[r, at:at + n] = torch.tensor(x["input_ids"])
                labels[r, at:at + n] = torch.tensor(x["labels"])
                pos[r, at:at + n] = torch.arange(n)
                placed.append((r, at, x))
                at += n
            pos[r, at:] = torch.arange(width - at)  # the tail is its own (unlabelled) sequence
        real = sum(len(b["input_ids"]) for b in batch)
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "real_tokens": torch.tensor(real),
                **soft_targets(placed, labels)}
