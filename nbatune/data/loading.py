"""Instruction data in, chat records out.

A record is ``{"id", "category", "messages", "answer", "answer_type", "tolerance"}`` where
``messages`` ends with the assistant turn to learn. The built-in NBA dataset and user data in
Alpaca, ShareGPT, OpenAI-messages or prompt/completion form all end up in this one shape.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from ..config import DataConfig, ModelConfig

log = logging.getLogger(__name__)

FORMAT_COLUMNS = {
    "messages": ["messages"],
    "sharegpt": ["conversations"],
    "prompt_completion": ["prompt", "completion"],
    "alpaca": ["instruction", "output"],
    "nba": ["instruction", "output", "answer"],
}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "model": "assistant"}


class DataError(ValueError):
    """Instruction data that cannot be used; the message names the file, row and column and the fix."""


def load_splits(data: DataConfig, model: ModelConfig) -> dict[str, list[dict]]:
    """Return ``{"train", "validation", "test"}`` lists of chat records.

    Raises:
        DataError: missing file, unknown format, missing or empty columns, or an empty dataset.
    """
    if data.source == "builtin":
        from . import builtin

        raw = {s: [e.to_dict() for e in rows] for s, rows in
               builtin.build(seed=data.seed, train_size=data.train_size, val_size=data.val_size,
                             test_size=data.test_size, unseen_format=data.unseen_format).items()}
        fmt = "nba"
    else:
        raw = read_source(data.source)
        fmt = data.format if data.format != "auto" else detect_format(raw["train"], data.source)
        raw = _ensure_splits(raw, data.test_fraction, data.seed)
    out = {}
    for split, rows in raw.items():
        if not rows:
            raise DataError(f"{data.source}: the {split} split is empty")
        out[split] = [to_record(r, fmt, i, split, model.system_prompt, data.source) for i, r in enumerate(rows)]
    return out


def detect_format(rows: list[dict], source: str = "data") -> str:
    if not rows:
        raise DataError(f"{source}: dataset is empty (0 rows)")
    cols = set(rows[0])
    for fmt in ("messages", "sharegpt", "prompt_completion", "nba", "alpaca"):
        if all(c in cols for c in FORMAT_COLUMNS[fmt]):
            return fmt
    expected = "; ".join(f"{f}: {', '.join(c)}" for f, c in FORMAT_COLUMNS.items() if f != "nba")
    raise DataError(f"{source}: cannot tell the format from the columns {sorted(cols)}. Expected one of ({expected}), "
                    "or set data.format")


def to_record(row: dict, fmt: str, i: int, split: str, system_prompt: str, source: str = "data") -> dict:
    where = f"{source}: {split} row {i}"
    missing = [c for c in FORMAT_COLUMNS[fmt] if c not in row]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing} for format {fmt!r} (row has {sorted(row)})")
    if fmt in ("alpaca", "nba"):
        instr, inp, output = _text(row, "instruction", where), str(row.get("input") or ""), _text(row, "output", where)
        messages = [{"role": "user", "content": instr + (f"\n{inp}" if inp.strip() else "")},
                    {"role": "assistant", "content": output}]
    elif fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        prompt = [{"role": "user", "content": _nonempty(prompt, "prompt", where)}] if isinstance(prompt, str) else prompt
        completion = ([{"role": "assistant", "content": _nonempty(completion, "completion", where)}]
                      if isinstance(completion, str) else completion)
        messages = list(prompt) + list(completion)
    elif fmt == "sharegpt":
        turns = row["conversations"]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"{where}: column 'conversations' is empty or not a list")
        messages = []
        for t in turns:
            role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
            if role is None:
                raise DataError(f"{where}: unknown ShareGPT speaker {t.get('from')!r} (allowed: {sorted(SHAREGPT_ROLES)})")
            messages.append({"role": role, "content": _nonempty(t.get("value"), "conversations.value", where)})
    elif fmt == "messages":
        messages = [{"role": m["role"], "content": _nonempty(m.get("content"), "messages.content", where)}
                    for m in row["messages"]]
    else:
        raise DataError(f"data.format: unknown format {fmt!r} (allowed: auto, {', '.join(FORMAT_COLUMNS)})")
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation must end with an assistant turn to learn from")
    if messages[0]["role"] != "system" and system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + messages
    reference = messages[-1]["content"]
    return {
        "id": str(row.get("id", f"{split}-{i}")),
        "category": str(row.get("category") or "user"),
        "messages": messages,
        "answer": str(row.get("answer") or reference),
        "answer_type": str(row.get("answer_type") or "text"),
        "tolerance": float(row.get("tolerance") or 0.0),
        "format": str(row.get("format") or ""),
        "unseen": bool(row.get("unseen") or False),
    }


def _text(row, col, where):
    return _nonempty(row.get(col), col, where)


def _nonempty(value, col, where) -> str:
    if value is None or not str(value).strip():
        raise DataError(f"{where}: column {col!r} is empty")
    return str(value)


def read_source(source: str) -> dict[str, list[dict]]:
    """The rows of a user dataset by split, as they are in the file (no format applied yet).

    Raises:
        DataError: missing file or folder, unknown file type, or a file ``datasets`` cannot read.
    """
    import datasets

    path = Path(source).expanduser()
    kinds = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    try:
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
                ds = datasets.load_from_disk(str(path))
            else:
                files = {}
                for f in sorted(path.iterdir()):
                    split = {"val": "validation", "valid": "validation", "dev": "validation"}.get(f.stem, f.stem)
                    if f.suffix in kinds and split in ("train", "validation", "test"):
                        files[split] = (str(f), kinds[f.suffix])
                if "train" not in files:
                    raise DataError(f"{path}: no train.(jsonl|json|csv|parquet) file and not a saved datasets directory")
                ds = {s: datasets.load_dataset(k, data_files=f, split="train") for s, (f, k) in files.items()}
        elif path.suffix in kinds:
            if not path.is_file():
                raise DataError(f"data.source: file not found: {path}")
            if path.stat().st_size == 0:
                raise DataError(f"{path}: dataset is empty (0 rows)")
            ds = {"train": datasets.load_dataset(kinds[path.suffix], data_files=str(path), split="train")}
        elif path.suffix or source.startswith((".", "/", "~")):
            raise DataError(f"data.source: {source} is not a file type we read (allowed: .json, .jsonl, .csv, "
                            ".parquet, or a saved datasets directory)" if path.exists() else
                            f"data.source: file not found: {path}")
        else:
            ds = datasets.load_dataset(source)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"data.source: could not read {source!r}: {(str(e).splitlines() or [type(e).__name__])[0][:300]}. A hub dataset id "
                        "needs network; files need a .json/.jsonl/.csv/.parquet suffix") from e
    if isinstance(ds, datasets.Dataset):
        ds = {"train": ds}
    return {s: [dict(r) for r in d] for s, d in dict(ds).items()}


def _ensure_splits(raw: dict[str, list[dict]], fraction: float, seed: int) -> dict[str, list[dict]]:
    raw = {{"val": "validation", "valid": "validation", "dev": "validation"}.get(k, k): v for k, v in raw.items()}
    if "train" not in raw or not raw["train"]:
        raise DataError("dataset is empty: no training rows")
    train = list(raw["train"])
    for split in ("test", "validation"):
        if split in raw and raw[split]:
            continue
        n = max(1, int(round(len(train) * fraction)))
        if len(train) - n < 1:
            raise DataError(f"dataset too small to carve a {split} split ({len(train)} rows); add rows or a {split} file")
        idx = list(range(len(train)))
        random.Random(seed).shuffle(idx)
        chosen = set(idx[:n])
        raw[split] = [train[i] for i in sorted(chosen)]
        train = [r for i, r in enumerate(train) if i not in chosen]
        log.warning("no %s split: carved %d of %d rows out of train (seed %d)", split, n, n + len(train), seed)
    raw["train"] = train
    return {s: raw[s] for s in ("train", "validation", "test")}
