"""The answer-only loss: the chunked output head gives plain cross-entropy's value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from nbatune.data.tokenize import IGNORE
from nbatune.loss import answer_only_loss, chunked_head_loss


@pytest.mark.parametrize("chunk", [3, 512])
def test_chunked_head_loss_matches_plain_cross_entropy_in_value_and_gradients(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(10, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (10,), generator=torch.Generator().manual_seed(0))
    plain = F.cross_entropy(hidden @ weight.T, targets, reduction="sum") / 7
    plain.backward()
    want = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    ours = chunked_head_loss(hidden, weight, targets, chunk) / 7
    ours.backward()
    torch.testing.assert_close(ours, plain)
    torch.testing.assert_close(hidden.grad, want[0])
    torch.testing.assert_close(weight.grad, want[1])


def test_chunked_head_loss_refuses_a_second_backward_instead_of_doubling_gradients():
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    loss = chunked_head_loss(hidden, weight, torch.tensor([1, 2, 3, 4]), 2)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


def test_answer_only_loss_is_the_same_with_the_head_chunked_or_run_by_the_model():
    from tests.helpers import tiny_llama

    model = tiny_llama(64).double()
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :7] = IGNORE  # the prompt
    labels[1, 10:] = IGNORE  # padding
    batch = {"input_ids": ids, "labels": labels, "attention_mask": (labels != IGNORE) | (torch.arange(12) < 7)}
    results = []
    for chunk in (0, 2):
        model.zero_grad()
        loss, n = answer_only_loss(model, batch, chunk_tokens=chunk)
        loss.backward()
        results.append((loss.detach(), int(n), model.model.embed_tokens.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1] == results[1][1] == 8
    torch.testing.assert_close(results[0][2], results[1][2])


@pytest.mark.parametrize("chunk", [3, 512])
def test_soft_targets_give_cross_entropy_against_the_distribution_in_value_and_gradients(chunk):
    """Replay toward the base's distribution (train.replay_targets: distribution): the chunked head's soft loss
    is -sum p log q over each row's k tokens, with autograd's gradients."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(10, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    ids = torch.stack([torch.randperm(40, generator=g)[:5] for _ in range(10)])
    probs = torch.rand(10, 5, generator=g)
    probs = probs / probs.sum(1, keepdim=True)
    plain = -((hidden @ weight.T).log_softmax(-1).gather(1, ids) * probs).sum() / 7
    plain.backward()
    want = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    ours = chunked_head_loss(hidden, weight, ids[:, 0], chunk, (ids, probs)) / 7
    ours.backward()
    torch.testing.assert_close(ours, plain)
    torch.testing.assert_close(hidden.grad, want[0])
    torch.testing.assert_close(weight.grad, want[1])


def test_one_hot_soft_targets_are_the_plain_loss_on_both_head_paths():
    """A batch with soft targets where every distribution is its label alone trains exactly like one without."""
    from tests.helpers import tiny_llama

    model = tiny_llama(64).double()
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :7] = IGNORE
    labels[1, 10:] = IGNORE
    batch = {"input_ids": ids, "labels": labels, "attention_mask": (labels != IGNORE) | (torch.arange(12) < 7)}
    soft = {"soft_ids": torch.where(labels != IGNORE, labels, 0)[..., None].repeat(1, 1, 3),
            "soft_probs": torch.tensor([1.0, 0.0, 0.0]).repeat(2, 12, 1) * (labels != IGNORE)[..., None]}
    for chunk in (0, 2):
        got = []
        for b in (batch, {**batch, **soft}):
            model.zero_grad()
            loss, n = answer_only_loss(model, b, chunk_tokens=chunk)
            loss.backward()
            got.append((loss.detach(), model.model.embed_tokens.weight.grad.clone()))
        torch.testing.assert_close(got[0][0], got[1][0])
        torch.testing.assert_close(got[0][1], got[1][1])
    # and a real distribution moves the loss
    spread = {**soft, "soft_probs": torch.tensor([0.5, 0.5, 0.0]).repeat(2, 12, 1) * (labels != IGNORE)[..., None],
              "soft_ids": torch.stack([soft["soft_ids"][..., 0], (soft["soft_ids"][..., 0] + 1) % 64,
                                       soft["soft_ids"][..., 0]], -1)}
    assert not torch.isclose(answer_only_loss(model, {**batch, **spread})[0], answer_only_loss(model, batch)[0])
