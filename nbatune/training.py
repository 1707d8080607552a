"""The one training path for all three techniques: a transformers ``Trainer`` whose loss runs the
output head only where there is an answer token to predict."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from .config import TrainConfig
from .data.tokenize import IGNORE, PackedCollator, PadCollator
from .runtime import Runtime

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step."""


class OutOfMemoryHint(RuntimeError):
    """Out of memory, with the measured need and what to change."""


def explain_oom(e: BaseException, cfg: TrainConfig, method: str) -> OutOfMemoryHint:
    import torch

    need = ""
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        need = (f" Peak allocated before failing: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB of "
                f"{total / 2**30:.1f} GiB.")
    tips = [f"halve train.batch_size ({cfg.batch_size} -> {max(1, cfg.batch_size // 2)}) and double "
            f"train.grad_accum ({cfg.grad_accum} -> {cfg.grad_accum * 2}) to keep the effective batch"]
    if not cfg.gradient_checkpointing.get(method):
        tips.append(f"set train.gradient_checkpointing.{method}: true (about 30% slower, far less activation memory)")
    if method == "full":
        tips.append("use lora or qlora, or train.optimizer.full: adamw_8bit (optimizer states 4x smaller)")
    elif method == "lora":
        tips.append("use qlora (a 4-bit base takes about a quarter of the weight memory)")
    return OutOfMemoryHint(f"out of memory while training {method}.{need} Try: " + "; ".join(tips) + ".")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names it and what to do."""


STAGING_PREFIX = ".staging-"


def answer_only_loss(model, inputs: dict, num_items: int | torch.Tensor | None = None, chunk_tokens: int = 512):
    """Cross-entropy over answer tokens; returns (loss, number of predicted tokens).

    The 49k-way output head is the single largest matmul per token for small models, so it never
    runs at prompt positions. With ``chunk_tokens > 0`` it runs only at the answer tokens themselves,
    ``chunk_tokens`` at a time, without ever holding all their logits (``chunked_head_loss``);
    with 0, the model computes logits at the answer columns (``logits_to_keep`` takes an index tensor).
    """
    labels = inputs["labels"]
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)  # position t predicts token t+1
    keep = (targets != IGNORE).any(0).nonzero().squeeze(1)
    targets = targets[:, keep]
    n = (targets != IGNORE).sum()
    # padded batches carry an attention mask; packed ones carry position_ids (and must not carry a mask)
    extra = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
    head = _plain_head(model) if chunk_tokens else None
    if head is None:
        logits = model(input_ids=inputs["input_ids"], logits_to_keep=keep, **extra).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")
    else:
        captured = []

        def take_hidden(module, args):  # keep the head's input, and give the head nothing to compute
            captured.append(args[0])
            return (args[0][:, :0],)

        # The call goes through the model itself (not its decoder), so DDP and PEFT wrappers see it.
        handle = head.register_forward_pre_hook(take_hidden)
        try:
            model(input_ids=inputs["input_ids"], logits_to_keep=keep, **extra)
        finally:
            handle.remove()
        mask = targets != IGNORE
        loss = chunked_head_loss(captured[0][mask], head.weight, targets[mask], chunk_tokens)
    return loss / (num_items if num_items is not None else n.clamp(min=1)), n


def _plain_head(model):
    """The output head when it is a bias-free linear layer whose logits are used as they are (no
    soft-capping or scaling), so that the loss may apply it itself; else None."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    config = getattr(inner, "config", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if (not isinstance(head, torch.nn.Linear) or head.bias is not None or config is None
            or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)):
        return None
    return head


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk`` rows at a time.

    The gradients are worked out chunk by chunk in the forward pass (as in Liger's fused linear
    cross-entropy), so at most ``chunk x vocab`` logits exist at once instead of all of them plus their
    softmax and gradients: for SmolLM2's 49,152-token vocabulary that is about 16 bytes x 49,152 per
    answer token saved.
    """
    return _ChunkedHeadLoss.apply(hidden, weight, targets, chunk)


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            logits = (h @ weight.T).float()  # under autocast: the compute dtype, like the model's own head
            lse = logits.logsumexp(-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if want_h or want_w:
                d = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                d[torch.arange(len(t), device=d.device), t] -= 1  # d(loss)/d(logits)
                d = d.to(h.dtype)
                if want_h:
                    grad_h[s:s + chunk] = (d @ weight).to(hidden.dtype)
                if want_w:
                    grad_w += (d.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None, None, None)


class AnswerOnlyTrainer(Trainer):
    def __init__(self, *args, loss_chunk_tokens: int = 512, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # our loss is normalised by num_items_in_batch itself
        self.real_tokens = 0
        self.loss_chunk_tokens = loss_chunk_tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real = inputs.pop("real_tokens", None)
        loss, _ = answer_only_loss(model, inputs, num_items_in_batch, self.loss_chunk_tokens)
        self.real_tokens += int(real if real is not None else inputs["attention_mask"].sum())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}; "
                                     "lower the learning rate or check the data")
        return (loss, None) if return_outputs else loss

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
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        os.replace(os.path.join(staging, name), os.path.join(root, name))
        shutil.rmtree(staging, ignore_errors=True)


class LearningCurve(TrainerCallback):
    """Every ``every`` optimizer steps (and at the last), ``measure(model)`` (a cheap validation score),
    with the training tokens and seconds so far; its own time is left out of the seconds."""

    def __init__(self, measure, every: int, trainer_ref: list):
        self.measure, self.every, self.trainer_ref = measure, every, trainer_ref
        self.points: list[dict] = []
        self.spent = 0.0
        self.t0 = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        start = time.perf_counter()
        value = self.measure(model)
        self.points.append({"step": state.global_step, "tokens": self.trainer_ref[0].real_tokens,
                            "seconds": round(start - self.t0 - self.spent, 2), "exact_match": value})
        self.spent += time.perf_counter() - start


@dataclass
class TrainOutcome:
    learning_curve: list[dict] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    final_loss: float = float("nan")
    steps: int = 0
    seconds: float = 0.0
    real_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds else 0.0


def training_arguments(method: str, cfg: TrainConfig, rt: Runtime, out_dir: Path, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate[method],
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(round(cfg.warmup_ratio * cfg.max_steps)),
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

    args = training_arguments(method, cfg, rt, out_dir, seed)
    collator = (PackedCollator(tokenizer.pad_token_id, cfg.pack_row_tokens) if cfg.batching == "packed"
                else PadCollator(tokenizer.pad_token_id, 8 if rt.device == "cuda" else None))
    trainer = AnswerOnlyTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(train_rows), data_collator=collator,
        loss_chunk_tokens=cfg.loss_chunk_tokens,
    )
    recorder = None
    if curve is not None and cfg.curve_steps:
        recorder = LearningCurve(curve, cfg.curve_steps, [trainer])
        trainer.add_callback(recorder)
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise CheckpointError(f"resume asked for, but there is no complete checkpoint in {out_dir}")
    for stale in Path(out_dir).glob(f"{STAGING_PREFIX}*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    try:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except torch.OutOfMemoryError as e:
        raise explain_oom(e, cfg, method) from e
    except KeyboardInterrupt:
        if trainer.state.global_step > 0:
            trainer._save_checkpoint(trainer.model, None)
            log.warning("interrupted: saved checkpoint-%d in %s", trainer.state.global_step, out_dir)
        raise
    except Exception as e:
        if ckpt is not None and trainer.state.global_step <= int(ckpt.name.split("-")[1]):
            earlier = sorted((p.name for p in Path(out_dir).glob("checkpoint-*") if p != ckpt),
                             key=lambda n: int(n.split("-")[1]))
            hint = f"remove it to resume from {earlier[-1]}" if earlier else "remove it to start this method over"
            raise CheckpointError(f"checkpoint {ckpt} could not be loaded ({type(e).__name__}: "
                                  f"{str(e)[:200]}); {hint}") from e
        raise
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return TrainOutcome(learning_curve=recorder.points if recorder else [], loss_curve=losses,
                        final_loss=losses[-1][1] if losses else result.training_loss, steps=trainer.state.global_step,
                        seconds=result.metrics["train_runtime"] - (recorder.spent if recorder else 0.0),
                        real_tokens=trainer.real_tokens)
