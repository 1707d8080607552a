"""Typed results, written atomically as JSON after every method."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

SCHEMA_VERSION = 1


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass
class MethodResult:
    method: str
    status: Status = Status.OK
    error: str | None = None
    trainable_params: int = 0
    total_params: int = 0
    trainable_pct: float = 0.0
    weights_bytes: int = 0
    peak_memory_bytes: int = 0
    estimated_peak_bytes: int = 0  # nbatune.memory's prediction, made before training
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_tokens: int = 0
    tokens_per_second: float = 0.0
    steps: int = 0
    loss_curve: list = field(default_factory=list)
    final_train_loss: float | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    accuracy: float | None = None
    accuracy_ci95: tuple | list | None = None
    per_category: dict = field(default_factory=dict)
    saved_path: str | None = None
    saved_bytes: int = 0
    predictions: list = field(default_factory=list)
    correct: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MethodResult":
        d = dict(d)
        d["status"] = Status(d.get("status", "ok"))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def environment(rt_description: str) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "evaluate", "trl"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "device": rt_description,
            "cpu_count": os.cpu_count(), "versions": versions}


def write_json_atomic(path: str | Path, data: dict) -> None:
    """The file holds the old content or the new, never a partial write; no temp file is left behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(o):
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
