"""The one training path for all three techniques: a transformers ``Trainer`` with our answer-only
loss (nbatune/loss.py), atomic checkpoints, a learning-curve callback, and clear errors."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .attention import attention_kernel, training_attention
from .config import TrainConfig
from .data.tokenize import make_collator
from .lora_kernel import lean_adapters
from .loss import answer_only_loss
from .runtime import Runtime

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step."""


class OutOfMemoryHint(RuntimeError):
    """Out of memory, with the measured need and what to change."""


CPU_ALLOC_FAILURE = "can't allocate memory"  # torch's DefaultCPUAllocator: a plain RuntimeError, not OutOfMemoryError


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's failure (which torch raises as a RuntimeError)."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and CPU_ALLOC_FAILURE in str(e))


def explain_oom(e: BaseException, cfg: TrainConfig, method: str) -> OutOfMemoryHint:
    """The same advice as the estimator's refusal, with what was measured when the allocation failed."""
    import re
    import resource

    import psutil

    from .memory import memory_fixes

    if torch.cuda.is_available() and isinstance(e, torch.OutOfMemoryError):
        free, total = torch.cuda.mem_get_info()
        need = (f" Peak allocated before failing: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB of "
                f"{total / 2**30:.1f} GiB.")
    else:
        asked = re.search(r"tried to allocate (\d+) bytes", str(e))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        need = ((f" One allocation of {int(asked.group(1)) / 2**30:.2f} GiB failed;" if asked else "") +
                f" this process had reached {peak / 2**30:.2f} GiB (peak resident), with "
                f"{psutil.virtual_memory().available / 2**30:.1f} GiB available on the machine.")
    tips = memory_fixes(method, cfg.batch_size, cfg.grad_accum, cfg.gradient_checkpointing.get(method, False))
    return OutOfMemoryHint(f"out of memory while training {method}.{need} Try: " + "; ".join(tips) + ".")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names it and what to do."""


STAGING_PREFIX = ".staging-"
# What a checkpoint still pickles: torch state dicts that only torch.load reads back, and that the Trainer
# reads on resume with weights_only=True (plain tensors and containers; anything else is refused).
# scaler.pt appears only with fp16 on CUDA. The weights are safetensors, the training arguments JSON.
PICKLED_CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


class AnswerOnlyTrainer(Trainer):
    def __init__(self, *args, loss_chunk_tokens: int = 512, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # our loss is normalised by num_items_in_batch itself
        self.real_tokens = 0
        self.loss_chunk_tokens = loss_chunk_tokens
        self._t0: float | None = None  # the first training step's start (train_log's elapsed_s)

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Each training-loss record also carries the real tokens trained so far and the seconds since this
        process's first training step (a resumed run counts again from its first step), so the log (kept in
        checkpoints) reads on its own."""
        if "loss" in logs:
            logs = {**logs, "tokens": self.real_tokens, "elapsed_s": round(time.perf_counter() - self._t0, 3)}
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._t0 is None:
            self._t0 = time.perf_counter()
        real = inputs.pop("real_tokens", None)
        loss, _ = answer_only_loss(model, inputs, num_items_in_batch, self.loss_chunk_tokens)
        self.real_tokens += int(real if real is not None else inputs["attention_mask"].sum())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}; "
                                     "lower the learning rate or check the data")
        return (loss, None) if return_outputs else loss

    def create_optimizer(self, *args, **kwargs):
        """bitsandbytes keeps its per-parameter overrides (the Trainer's "embeddings in 32-bit") in a process-wide
        singleton keyed by id(param): a parameter of this model that reuses a freed id of an earlier technique's
        would inherit its override. Start each optimizer from a clean manager."""
        import sys

        if "bitsandbytes" in sys.modules:
            sys.modules["bitsandbytes"].optim.GlobalOptimManager.get_instance().initialize()
        return super().create_optimizer(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint into a hidden staging folder, then rename it into place: a crash while
        writing leaves the previous checkpoint as the latest complete one, never a half-written folder."""
        root = self.args.output_dir
        staging = os.path.join(root, f"{STAGING_PREFIX}{self.state.global_step}")
        shutil.rmtree(staging, ignore_errors=True)
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self.args.output_dir = root
        name = f"checkpoint-{self.state.global_step}"
        _training_args_as_json(os.path.join(staging, name), self.args)
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        os.replace(os.path.join(staging, name), os.path.join(root, name))
        shutil.rmtree(staging, ignore_errors=True)


def _training_args_as_json(ckpt: str, args: TrainingArguments) -> None:
    """The Trainer pickles the whole TrainingArguments object into training_args.bin (never read on resume,
    and not loadable with weights_only=True); keep it as JSON instead."""
    from transformers.trainer import TRAINING_ARGS_NAME

    pickled = os.path.join(ckpt, TRAINING_ARGS_NAME)
    if os.path.exists(pickled):
        os.remove(pickled)
    with open(os.path.join(ckpt, "training_args.json"), "w") as f:
        f.write(args.to_json_string())


class LearningCurve(TrainerCallback):
    """Every ``every`` optimizer steps (and at the last), ``measure(model)`` (a cheap validation score),
    with the training tokens and seconds so far; its own time is left out of the seconds."""

    def __init__(self, measure, every: int, trainer_ref: list, patience: int = 0):
        self.measure, self.every, self.trainer_ref, self.patience = measure, every, trainer_ref, patience
        self.points: list[dict] = []
        self.spent = 0.0
        self.t0 = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        start = time.perf_counter()
        with torch.compiler.set_stance("force_eager"):  # a measurement must not compile a second, no-grad graph
            value = self.measure(model)
        self.points.append({"step": state.global_step, "tokens": self.trainer_ref[0].real_tokens,
                            "seconds": round(start - self.t0 - self.spent, 2), "exact_match": value})
        self.spent += time.perf_counter() - start
        best = max(range(len(self.points)), key=lambda i: self.points[i]["exact_match"])  # first of equals
        if self.patience and len(self.points) - 1 - best >= self.patience:
            log.info("early stop at step %d: no improvement in %d measurements", state.global_step, self.patience)
            self.points[-1]["early_stop"] = True
            control.should_training_stop = True


@contextmanager
def compiled_layers(model, on: bool):
    """Every decoder layer compiled (``torch.compile``, dynamic shapes: one graph serves the 30 layers and every
    packed width) while the block lasts; the layers' own forward after it, so evaluation and generation run as
    they would without it."""
    if not on:
        yield
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"train.compile: {type(model).__name__} has no decoder layers transformers marks as such "
                         f"(GradientCheckpointingLayer); set train.compile to false for this model")
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # what nn.Module.compile sets; None is the uncompiled call


@dataclass
class TrainOutcome:
    learning_curve: list[dict] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    train_log: list[dict] = field(default_factory=list)  # one row per logged step: step, loss, learning rate, ...
    final_loss: float = float("nan")
    steps: int = 0
    seconds: float = 0.0  # the optimizer steps alone: the learning curve's measurements left out
    curve_seconds: float = 0.0  # the learning curve's measurements
    setup_seconds: float = 0.0  # the rest of train(): the trainer, its dataset and callbacks, the final log
    real_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds else 0.0


def total_steps(cfg: TrainConfig, n_rows: int, world_size: int = 1) -> int:
    """``train.max_steps``, or the steps ``train.epochs`` passes over ``n_rows`` take."""
    if cfg.epochs is None:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum * world_size
    return max(1, math.ceil(cfg.epochs * n_rows / per_step))


def training_arguments(method: str, cfg: TrainConfig, rt: Runtime, out_dir: Path, seed: int,
                       steps: int | None = None) -> TrainingArguments:
    steps = steps or cfg.max_steps
    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate[method],
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(round(cfg.warmup_ratio * steps)),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optimizer[method],
        bf16=rt.precision == "bf16",
        fp16=rt.precision == "fp16",
        use_cpu=rt.device == "cpu",
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        report_to=cfg.report_to or "none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length" if cfg.batching == "grouped" else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **cfg.trainer_args,
    )


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir`` (staging folders never count)."""
    out = Path(out_dir)
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1])) if found else None


def train(model, tokenizer, train_rows: list[dict], method: str, cfg: TrainConfig, rt: Runtime, out_dir: Path,
          seed: int, resume: bool = False, curve=None) -> TrainOutcome:
    """Train ``model`` in place for ``cfg.max_steps`` optimizer steps.

    Args:
        curve: ``model -> float``, measured every ``cfg.curve_steps`` steps (the learning curve).
        resume: continue from the latest complete checkpoint in ``out_dir`` (optimizer, scheduler, RNG
            and data position included).

    Raises:
        NonFiniteLossError: the loss became NaN or inf.
        CheckpointError: ``resume`` with no checkpoint in ``out_dir``, or an unreadable one.
        KeyboardInterrupt: after saving a checkpoint of the step reached.
    """
    import datasets

    t_call = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_arguments(method, cfg, rt, out_dir, seed, total_steps(cfg, len(train_rows), world))
    collator = make_collator(cfg, tokenizer.pad_token_id, rt.device)
    trainer = AnswerOnlyTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(train_rows), data_collator=collator,
        loss_chunk_tokens=cfg.loss_chunk_tokens,
    )
    recorder = None
    if curve is not None and cfg.curve_steps:
        recorder = LearningCurve(curve, cfg.curve_steps, [trainer], cfg.early_stopping_patience)
        trainer.add_callback(recorder)
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise CheckpointError(f"resume asked for, but there is no complete checkpoint in {out_dir}")
    for stale in Path(out_dir).glob(f"{STAGING_PREFIX}*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with attention_kernel(model, training_attention(cfg.attention, rt.device)), \
                lean_adapters(model, cfg.lean_adapters), compiled_layers(model, cfg.compile.get(method, False)):
            result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except KeyboardInterrupt:
        if trainer.state.global_step > 0:
            trainer._save_checkpoint(trainer.model, None)
            log.warning("interrupted: saved checkpoint-%d in %s", trainer.state.global_step, out_dir)
        raise
    except Exception as e:
        if is_out_of_memory(e):
            raise explain_oom(e, cfg, method) from e
        if ckpt is not None and trainer.state.global_step <= int(ckpt.name.split("-")[1]):
            earlier = sorted((p.name for p in Path(out_dir).glob("checkpoint-*") if p != ckpt),
                             key=lambda n: int(n.split("-")[1]))
            hint = f"remove it to resume from {earlier[-1]}" if earlier else "remove it to start this method over"
            raise CheckpointError(f"checkpoint {ckpt} could not be loaded ({type(e).__name__}: "
                                  f"{str(e)[:200]}); {hint}") from e
        raise
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    log_rows = [{k: h.get(k) for k in ("step", "loss", "learning_rate", "grad_norm", "tokens", "elapsed_s")}
                for h in trainer.state.log_history if "loss" in h]
    spent = recorder.spent if recorder else 0.0
    seconds = result.metrics["train_runtime"] - spent
    return TrainOutcome(learning_curve=recorder.points if recorder else [], loss_curve=losses, train_log=log_rows,
                        final_loss=losses[-1][1] if losses else result.training_loss, steps=trainer.state.global_step,
                        seconds=seconds, curve_seconds=spent,
                        setup_seconds=max(0.0, time.perf_counter() - t_call - seconds - spent),
                        real_tokens=trainer.real_tokens)
