"""Through the service, a split step computes exactly what the in-process body computes."""

from __future__ import annotations

import copy

import torch

from festa.client.body_client import RemoteBodyLink
from festa.shared.model.split import LocalBodyLink, split_train_step

from .conftest import make_batch, make_head_tail, mse_loss, token


def _assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rel * scale


def test_remote_fp32_step_equals_local_step(start_service, body, config):
    service, target = start_service()
    service.open_round(0, {"site-a": "cls"}, train_body=False, step_deadline_s=30)
    batch = make_batch(config, 4, seed=7)
    head, tail = make_head_tail(config, seed=3)
    local_head, local_tail = copy.deepcopy(head), copy.deepcopy(tail)

    local = split_train_step(local_head, local_tail, mse_loss, batch, LocalBodyLink(body))
    with RemoteBodyLink(target, token(0, "site-a")) as link:
        remote = split_train_step(head, tail, mse_loss, batch, link)
        assert link.bytes_sent > 2 * 4 * 16 * 32 * 4  # tokens and gradient, fp32
        assert link.bytes_received > 2 * 4 * 16 * 32 * 4
    report = service.close_round()

    assert abs(remote.loss - local.loss) <= 1e-5 * abs(local.loss)
    for (name, p), q in zip(
        [*head.named_parameters(), *tail.named_parameters()],
        [*local_head.parameters(), *local_tail.parameters()],
        strict=True,
    ):
        assert p.grad is not None, name
        _assert_close(p.grad, q.grad)
    assert report.steps == 1 and report.dropped == {}
    # train_body=False: the body itself did not move.
    for p, q in zip(service.engine.body.parameters(), body.parameters(), strict=True):
        assert torch.equal(p, q)
