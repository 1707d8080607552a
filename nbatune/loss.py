"""The loss: cross-entropy over answer tokens only, with the output head run only where there is an
answer token to predict. Training, evaluation, the memory estimator and the benchmarks all use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.tokenize import IGNORE


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """What each position predicts: the next token's label (-100 where nothing is learned)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def answer_columns(targets: torch.Tensor) -> torch.Tensor:
    """Columns where some row has an answer token: the positions ``logits_to_keep`` selects."""
    return (targets != IGNORE).any(0).nonzero().squeeze(1)


def logit_positions(labels: torch.Tensor, chunked: bool) -> int:
    """Positions whose logits the loss computes: the answer tokens themselves (chunked loss), or every
    row at each answer column (``logits_to_keep``). The memory estimator sizes the logits with it."""
    targets = shifted_targets(labels)
    return int((targets != IGNORE).sum()) if chunked else labels.shape[0] * len(answer_columns(targets))


def answer_only_loss(model, inputs: dict, num_items: int | torch.Tensor | None = None, chunk_tokens: int = 512):
    """Cross-entropy over answer tokens; returns (loss, number of predicted tokens).

    The 49k-way output head is the single largest matmul per token for small models, so it never
    runs at prompt positions. With ``chunk_tokens > 0`` it runs only at the answer tokens themselves,
    ``chunk_tokens`` at a time, without ever holding all their logits (``chunked_head_loss``);
    with 0, the model computes logits at the answer columns (``logits_to_keep`` takes an index tensor).
    """
    targets = shifted_targets(inputs["labels"])
    keep = answer_columns(targets)
    targets = targets[:, keep]
    n = (targets != IGNORE).sum()
    soft = None
    if "soft_ids" in inputs:  # replay rows trained toward the base's distribution (collators' soft targets)
        soft = tuple(F.pad(inputs[k][:, 1:], (0, 0, 0, 1))[:, keep] for k in ("soft_ids", "soft_probs"))
    # padded batches carry an attention mask; packed ones carry position_ids (and must not carry a mask)
    extra = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
    head = _plain_head(model) if chunk_tokens else None
    if head is None:
        logits = model(input_ids=inputs["input_ids"], logits_to_keep=keep, **extra).logits.float()
        if soft is None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                                   reduction="sum")
        else:
            mask = targets != IGNORE
            logp = logits[mask].log_softmax(-1)
            loss = -(logp.gather(1, soft[0][mask]) * soft[1][mask]).sum()
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
        loss = chunked_head_loss(captured[0][mask], head.weight, targets[mask], chunk_tokens,
                                 None if soft is None else (soft[0][mask], soft[1][mask]))
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


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                      soft: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk`` rows at a time.

    ``soft``: (token ids, probabilities), each (rows, k): cross-entropy against that distribution instead
    (a one-hot row, the target with probability 1, is the plain loss); KL to it plus a constant.

    The gradients are worked out chunk by chunk in the forward pass (as in Liger's fused linear
    cross-entropy), so at most ``chunk x vocab`` logits exist at once instead of all of them plus their
    softmax and gradients: for SmolLM2's 49,152-token vocabulary that is about 16 bytes x 49,152 per
    answer token saved.
    """
    soft_ids, soft_probs = soft if soft is not None else (None, None)
    return _ChunkedHeadLoss.apply(hidden, weight, targets, chunk, soft_ids, soft_probs)


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, soft_ids=None, soft_probs=None):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = None  # fp32; the first chunk's product is assigned, not added to zeros (a vocab-sized fill saved)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            logits = (h @ weight.T).float()  # under autocast: the compute dtype, like the model's own head
            lse = logits.logsumexp(-1)
            if soft_ids is None:
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            else:
                sid, sp = soft_ids[s:s + chunk], soft_probs[s:s + chunk]
                total += (lse * sp.sum(1) - (logits.gather(1, sid) * sp).sum(1)).sum()
            if want_h or want_w:
                d = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                if soft_ids is None:
                    d[torch.arange(len(t), device=d.device), t] -= 1  # d(loss)/d(logits)
                else:
                    d.mul_(sp.sum(1, keepdim=True)).scatter_add_(1, sid, -sp)
                d = d.to(h.dtype)
                if want_h:
                    grad_h[s:s + chunk] = (d @ weight).to(hidden.dtype)
                if want_w:
                    part = (d.T @ h).float()
                    grad_w = part if grad_w is None else grad_w.add_(part)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.used = False
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.used:  # the gradients below are scaled in place
            raise RuntimeError("chunked_head_loss supports one backward pass per forward (no retain_graph reuse)")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        # In place: the saved gradients are used once, and a fresh vocab-sized tensor costs page faults here
        return (grad_h.mul_(grad_out) if grad_h is not None else None,
                grad_w.mul_(grad_out).to(ctx.weight_dtype) if grad_w is not None else None, None, None, None, None)
