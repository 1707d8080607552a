"""From a config to training-ready data: the splits, the base model's path and tokenizer, and the
tokenized training rows. The comparison, `nbatune memory` and every benchmark start here."""

from __future__ import annotations

from dataclasses import dataclass

from .loading import load_splits
from .tokenize import TokenizeStats, tokenize_records


@dataclass
class PreparedData:
    model_path: str
    tokenizer: object
    records: dict[str, list[dict]]  # chat records by split
    train_rows: list[dict]  # tokenized training split
    train_stats: TokenizeStats


def prepare_training_data(cfg) -> PreparedData:
    """Load the data splits, resolve the base model, load its tokenizer and tokenize the training split."""
    from ..modeling import load_tokenizer, resolve_model_path

    records = load_splits(cfg.data, cfg.model)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.model)
    rows, stats = tokenize_records(records["train"], tokenizer, cfg.model.max_length, cfg.data.overlong, "train",
                                   cfg.data.train_on == "all_assistant_turns")
    return PreparedData(model_path, tokenizer, records, rows, stats)
