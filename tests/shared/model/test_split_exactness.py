"""Training through the split seam must equal plain autograd on the composed model."""

from __future__ import annotations

import copy

import pytest
import torch

from festa.shared.config import ModelConfig
from festa.shared.data.datasets import collate, phantom_dataset
from festa.shared.model import Body, LocalBodyLink, TokenPermutation, split_train_step
from festa.shared.tasks import TASKS, get_task

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def build(task_name: str):
    torch.manual_seed(0)
    task = get_task(task_name)
    return task, task.build_head(CFG), Body(CFG), task.build_tail(CFG)


@pytest.fixture(scope="module")
def batch():
    return collate([phantom_dataset(6, size=32, seed=3)[i] for i in range(6)])


@pytest.mark.parametrize("permute", [False, True], ids=["plain", "permuted"])
@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_split_step_matches_composed_autograd(task_name, permute, batch):
    task, head, body, tail = build(task_name)
    ref_head, ref_body, ref_tail = (copy.deepcopy(m) for m in (head, body, tail))

    # Reference: one graph from image to loss.
    ref_loss = task.loss(ref_tail(ref_body(ref_head(batch["image"]))), batch)
    ref_loss.backward()

    # Split: tokens detached at the seam, gradients handed back by hand.
    gen = torch.Generator().manual_seed(7)
    result = split_train_step(
        head,
        tail,
        task.loss,
        batch,
        LocalBodyLink(body),
        permutation_generator=gen,
        permute=permute,
    )

    ref = float(ref_loss.detach())
    assert abs(result.loss - ref) <= 1e-5 * abs(ref)
    for split_mod, ref_mod, part in (
        (head, ref_head, "head"),
        (body, ref_body, "body"),
        (tail, ref_tail, "tail"),
    ):
        for (name, p), (_, q) in zip(
            split_mod.named_parameters(), ref_mod.named_parameters(), strict=True
        ):
            assert p.grad is not None, f"{part}.{name} got no gradient through the split"
            assert rel_err(p.grad, q.grad) <= 1e-5, f"{part}.{name}: {rel_err(p.grad, q.grad):.2e}"


def test_permutation_is_invisible_to_the_tail():
    torch.manual_seed(0)
    body = Body(CFG)
    tokens = torch.randn(4, CFG.num_tokens, CFG.embed_dim)
    perm = TokenPermutation(CFG.num_tokens, torch.Generator().manual_seed(1))
    assert not torch.equal(perm.order, torch.arange(CFG.num_tokens)), "drew the identity order"
    with torch.no_grad():
        direct = body(tokens)
        sent = perm.shuffle(tokens)
        via_permutation = perm.unshuffle(body(sent))
    # What the server sees is really shuffled ...
    assert not torch.allclose(sent, tokens)
    # ... and what the tail sees is the unshuffled computation.
    assert rel_err(via_permutation, direct) <= 1e-5


def test_permutation_order_changes_per_batch():
    gen = torch.Generator().manual_seed(0)
    orders = {tuple(TokenPermutation(16, gen).order.tolist()) for _ in range(5)}
    assert len(orders) == 5
