"""Typed results, written atomically as JSON after every method."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from . import allocator

# 2: baselines, retention, repeats, learning curves, provenance. 3: seen/unseen formats, retention split into
# validation and test, the learning-forgetting curve and the chosen operating point (README: results.json)
SCHEMA_VERSION = 3


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass
class MethodResult:
    method: str
    seed: int | None = None
    status: Status = Status.OK
    error: str | None = None
    trainable_params: int = 0
    total_params: int = 0
    trainable_pct: float = 0.0
    weights_bytes: int = 0
    peak_memory_bytes: int = 0  # loading and training, the learning-curve measurements left out
    estimated_peak_bytes: int = 0  # nbatune.memory's prediction, made before training
    eval_peak_memory_bytes: int = 0  # answering the test and retention questions, above the loaded model
    estimated_eval_peak_bytes: int = 0  # nbatune.memory's prediction of eval_peak_memory_bytes, made before training
    load_seconds: float = 0.0  # loading (and quantizing) the model; a reloaded adapter's load too
    save_seconds: float = 0.0
    train_seconds: float = 0.0  # optimizer steps alone (tokens_per_second's time)
    learning_curve_seconds: float = 0.0  # the learning curve's measurements during training
    train_setup_seconds: float = 0.0  # the rest of training: the trainer, its dataset, callbacks
    eval_seconds: float = 0.0  # eval loss and the test answers (the operating point's second evaluation added)
    retention_seconds: float = 0.0  # the retention test's answers (the operating point's second evaluation added)
    train_tokens: int = 0
    tokens_per_second: float = 0.0
    train_flops_per_token: float = 0.0  # measure.train_flops_per_token
    mfu: float | None = None  # training FLOP/s over the matmul peak measured in the same run (environment.matmul)
    steps: int = 0
    loss_curve: list = field(default_factory=list)
    train_log: list = field(default_factory=list)  # [{step, loss, learning_rate, grad_norm, tokens, elapsed_s}]
    final_train_loss: float | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    accuracy: float | None = None
    accuracy_ci95: tuple | list | None = None
    per_category: dict = field(default_factory=dict)
    formats: dict = field(default_factory=dict)  # {"seen": {...}, "unseen": {...}}: test accuracy per format side
    saved_path: str | None = None
    saved_bytes: int = 0
    predictions: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    retention: dict = field(default_factory=dict)  # general-knowledge questions: forgetting
    few_shot: dict = field(default_factory=dict)  # base only: the few-shot baseline
    learning_curve: list = field(default_factory=list)  # [{step, tokens, seconds, exact_match}]
    repeats: list = field(default_factory=list)  # one summary per training seed (train.repeats)
    accuracy_mean: float | None = None
    accuracy_sd: float | None = None
    validation: dict = field(default_factory=dict)  # base only: NBA and general validation, the curve's origin
    # base only: the 4-bit base a quantized technique starts from (its curve's alpha 0), measured as the base is:
    # {method, validation, retention, seconds}; {} when no quantized technique runs
    quantized_base: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)  # [{alpha, nba_validation, general_validation}]
    operating_point: dict = field(default_factory=dict)  # {alpha, policy, reason}: what the top-level figures are
    trained: dict = field(default_factory=dict)  # the same test figures at alpha = 1, when the point is elsewhere

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    def record_training(self, out) -> None:
        """Take what ``training.train`` returned (a ``TrainOutcome``)."""
        self.loss_curve, self.final_train_loss, self.steps = out.loss_curve, out.final_loss, out.steps
        self.train_log = out.train_log
        self.train_seconds, self.train_tokens = out.seconds, out.real_tokens
        self.learning_curve_seconds, self.train_setup_seconds = out.curve_seconds, out.setup_seconds
        self.tokens_per_second, self.learning_curve = out.tokens_per_second, out.learning_curve

    def record_evaluation(self, ev: dict) -> None:
        """Take what ``evaluation.evaluate_model`` returned."""
        self.eval_loss, self.perplexity = ev["eval_loss"], ev["perplexity"]
        self.accuracy, self.accuracy_ci95 = ev["accuracy"], list(ev["accuracy_ci95"])
        self.per_category, self.predictions, self.correct = ev["per_category"], ev["predictions"], ev["correct"]
        self.eval_seconds, self.retention = ev["eval_seconds"], ev.get("retention", {})
        self.retention_seconds = self.retention.get("seconds", 0.0)
        self.formats = ev.get("formats", {})

    def summary(self) -> dict:
        """What a repeat keeps: enough for means, spreads and paired tests."""
        return {"seed": self.seed, "status": self.status.value, "accuracy": self.accuracy,
                "per_category": {c: v["accuracy"] for c, v in self.per_category.items()},
                "formats": {k: v["accuracy"] for k, v in self.formats.items()},
                "alpha": self.operating_point.get("alpha"),
                "retention_accuracy": self.retention.get("accuracy"), "correct": self.correct,
                "retention_correct": self.retention.get("correct", []), "train_seconds": self.train_seconds,
                "final_train_loss": self.final_train_loss, "learning_curve": self.learning_curve}


def environment(rt_description: str) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "evaluate", "trl"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "device": rt_description,
            "cpu_count": os.cpu_count(), "allocator": allocator.active(), "versions": versions}


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
