"""Pipelined split training (K micro-batches in flight) against the plain step, in process."""

from __future__ import annotations

import copy

import pytest
import torch

from festa.shared.config import ModelConfig
from festa.shared.data.datasets import collate, phantom_dataset
from festa.shared.model import Body, LocalBodyLink, split_train_step
from festa.shared.model.pipeline import (
    LocalPipelinedBodyLink,
    PipelineProtocolError,
    split_train_pipelined,
    staleness_lr_scale,
)
from festa.shared.tasks import get_task

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
LR = 1e-3


def _models(task_name: str):
    torch.manual_seed(0)
    task = get_task(task_name)
    return task, task.build_head(CFG), Body(CFG), task.build_tail(CFG)


def _batches(count: int, size: int = 4) -> list[dict]:
    data = phantom_dataset(count * size, size=32, seed=5)
    return [collate([data[i * size + j] for j in range(size)]) for i in range(count)]


def _adamw(module: torch.nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(module.parameters(), lr=LR)


def _pipelined(task, head, body, tail, batches, depth: int, permute: bool = True):
    link = LocalPipelinedBodyLink(body, _adamw(body))
    return split_train_pipelined(
        head,
        tail,
        task.loss,
        batches,
        link,
        depth=depth,
        head_optimizer=_adamw(head),
        tail_optimizer=_adamw(tail),
        permutation_generator=torch.Generator().manual_seed(3),
        permute=permute,
    )


def _max_rel(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p - q).detach().norm() / q.detach().norm().clamp(min=1e-12))
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


@pytest.mark.parametrize("task_name", ["classification", "segmentation"])
def test_depth_1_equals_the_plain_split_step(task_name):
    task, head, body, tail = _models(task_name)
    ref = [copy.deepcopy(m) for m in (head, body, tail)]
    batches = _batches(4)

    results = _pipelined(task, head, body, tail, batches, depth=1)

    r_head, r_body, r_tail = ref
    optimizer = torch.optim.AdamW([*r_head.parameters(), *r_tail.parameters()], lr=LR)
    body_optimizer = _adamw(r_body)
    gen = torch.Generator().manual_seed(3)
    ref_losses = []
    for batch in batches:
        optimizer.zero_grad()
        step = split_train_step(
            r_head, r_tail, task.loss, batch, LocalBodyLink(r_body), gen, permute=True
        )
        optimizer.step()
        body_optimizer.step()
        body_optimizer.zero_grad()
        ref_losses.append(step.loss)
    assert [r.loss for r in results] == pytest.approx(ref_losses, rel=1e-5)
    for got, want in zip((head, body, tail), ref, strict=True):
        assert _max_rel(got, want) < 1e-5


def test_depth_above_1_is_stale_but_still_learns_a_fixed_batch_set():
    task, head, body, tail = _models("segmentation")
    plain = [copy.deepcopy(m) for m in (head, body, tail)]
    batches = _batches(2) * 15
    losses = [r.loss for r in _pipelined(task, head, body, tail, batches, depth=4)]
    assert len(losses) == 30
    assert sum(losses[-4:]) < 0.75 * sum(losses[:4])
    # Staleness changes the numbers: depth 4 is not depth 1 in disguise.
    depth_1 = [r.loss for r in _pipelined(task, *plain, batches, depth=1)]
    assert losses[0] == pytest.approx(depth_1[0], rel=1e-6)  # same weights at step 0
    assert depth_1[1:] != pytest.approx(losses[1:], rel=1e-4)


def test_a_reply_for_a_step_not_in_flight_is_a_protocol_error():
    task, head, body, tail = _models("classification")

    class Liar(LocalPipelinedBodyLink):
        def receive(self):
            kind, step, tensor = super().receive()
            return kind, step + 7, tensor

    with pytest.raises(PipelineProtocolError, match="not in flight"):
        split_train_pipelined(
            head,
            tail,
            task.loss,
            _batches(2),
            Liar(body, None),
            depth=2,
            head_optimizer=_adamw(head),
            tail_optimizer=_adamw(tail),
        )


def test_the_body_learning_rate_rules():
    assert [staleness_lr_scale(1, r) for r in ("constant", "sqrt", "linear")] == [1.0] * 3
    assert staleness_lr_scale(4, "constant") == 1.0
    assert staleness_lr_scale(4, "sqrt") == pytest.approx(0.5)
    assert staleness_lr_scale(8, "linear") == pytest.approx(0.125)
    with pytest.raises(ValueError, match="rule"):
        staleness_lr_scale(4, "cubic")
    with pytest.raises(ValueError, match="depth"):
        staleness_lr_scale(0, "linear")
