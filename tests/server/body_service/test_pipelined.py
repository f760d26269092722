"""Pipelined async rounds (pipeline_depth K > 1) over a real body service on 127.0.0.1."""

from __future__ import annotations

import copy
import textwrap

import grpc
import pytest
import torch

from festa.client.body_client import BodyServiceError, RemoteBodyLink
from festa.shared.config import FederationConfig
from festa.shared.model.pipeline import (
    LocalPipelinedBodyLink,
    split_train_pipelined,
    staleness_lr_scale,
)
from festa.shared.model.split import LocalBodyLink, split_train_step

from .conftest import (
    make_batch,
    make_head_tail,
    mse_loss,
    run_concurrently,
    start_client_process,
    token,
)

LR = 1e-2  # the start_service fixture's body learning rate
STEPS = 6


def _train(link, config, depth: int, seed: int, steps: int = STEPS):
    """A client: pipelined training of its own head/tail on `steps` fixed batches."""
    head, tail = make_head_tail(config, seed)
    batches = [make_batch(config, 3, seed=100 * seed + i) for i in range(steps)]
    results = split_train_pipelined(
        head,
        tail,
        mse_loss,
        batches,
        link,
        depth=depth,
        head_optimizer=torch.optim.AdamW(head.parameters(), lr=1e-3),
        tail_optimizer=torch.optim.AdamW(tail.parameters(), lr=1e-3),
        permutation_generator=torch.Generator().manual_seed(seed),
        permute=True,
    )
    return [r.loss for r in results], head, tail


def _assert_same_modules(a: torch.nn.Module, b: torch.nn.Module, rel: float = 1e-5) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        err = float((p - q).norm() / q.norm().clamp(min=1e-12))
        assert err < rel, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(("depth", "rule"), [(2, "constant"), (4, "linear")])
def test_pipelined_round_equals_the_in_process_reference(start_service, body, config, depth, rule):
    service, target = start_service()
    scale = staleness_lr_scale(depth, rule)
    service.open_round(
        1, {"site": "cls"}, train_body=True, mode="async", pipeline_depth=depth, lr_scale=scale
    )
    with RemoteBodyLink(target, token(1, "site")) as link:
        assert link.pipeline_depth == depth
        losses, head, tail = _train(link, config, depth, seed=1)
    report = service.close_round()
    assert report.dropped == {} and report.steps == STEPS

    ref_body = copy.deepcopy(body)
    reference = LocalPipelinedBodyLink(
        ref_body, torch.optim.AdamW(ref_body.parameters(), lr=LR * scale, weight_decay=0.01)
    )
    ref_losses, ref_head, ref_tail = _train(reference, config, depth, seed=1)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    _assert_same_modules(head, ref_head)
    _assert_same_modules(tail, ref_tail)
    remote_body = copy.deepcopy(body)
    remote_body.load_state_dict(service.state_dict()["body"])
    _assert_same_modules(remote_body, ref_body)


def test_the_pipelined_client_at_depth_1_speaks_the_plain_sync_protocol(
    start_service, body, config
):
    service, target = start_service()
    service.open_round(1, {"site": "cls"}, train_body=True, mode="sync")
    with RemoteBodyLink(target, token(1, "site")) as link:
        losses, head, tail = _train(link, config, depth=1, seed=2)
    assert service.close_round().steps == STEPS

    ref_body = copy.deepcopy(body)
    body_optimizer = torch.optim.AdamW(ref_body.parameters(), lr=LR, weight_decay=0.01)
    ref_head, ref_tail = make_head_tail(config, 2)
    optimizer = torch.optim.AdamW([*ref_head.parameters(), *ref_tail.parameters()], lr=1e-3)
    gen = torch.Generator().manual_seed(2)
    ref_losses = []
    for i in range(STEPS):
        optimizer.zero_grad()
        batch = make_batch(config, 3, seed=200 + i)
        result = split_train_step(
            ref_head, ref_tail, mse_loss, batch, LocalBodyLink(ref_body), gen, permute=True
        )
        optimizer.step()
        body_optimizer.step()
        body_optimizer.zero_grad()
        ref_losses.append(result.loss)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    _assert_same_modules(head, ref_head)


def test_sync_mode_refuses_a_pipeline_and_so_does_the_config(start_service):
    service, _ = start_service()
    with pytest.raises(ValueError, match="needs mode='async'"):
        service.open_round(1, {"site": "cls"}, train_body=True, mode="sync", pipeline_depth=2)
    with pytest.raises(ValueError, match="needs mode = 'async'"):
        FederationConfig(pipeline_depth=4, mode="sync")
    assert FederationConfig(pipeline_depth=4, mode="async").pipeline_depth == 4


def test_the_body_learning_rate_scale_holds_for_its_round_only(start_service):
    service, _ = start_service()

    def lr() -> float:
        return service.state_dict()["optimizer"]["param_groups"][0]["lr"]

    with pytest.raises(ValueError, match="lr_scale"):
        service.open_round(1, {"site": "cls"}, train_body=True, mode="async", lr_scale=0.0)
    service.open_round(
        1, {"site": "cls"}, train_body=True, mode="async", pipeline_depth=4, lr_scale=0.25
    )
    assert lr() == pytest.approx(LR * 0.25)
    service.close_round()
    service.open_round(2, {"site": "cls"}, train_body=True, mode="async")
    assert lr() == pytest.approx(LR)
    service.close_round()


def test_more_forwards_in_flight_than_the_depth_are_refused(start_service, config):
    service, target = start_service()
    service.open_round(1, {"site": "cls"}, train_body=True, mode="async", pipeline_depth=2)
    tokens = torch.randn(2, config.num_tokens, config.embed_dim)
    with pytest.raises(BodyServiceError) as err, RemoteBodyLink(target, token(1, "site")) as link:
        for step in range(3):
            link.send_forward(step, tokens)
        for _ in range(3):
            link.receive()
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "more than 2 micro-batches in flight" in err.value.reason
    report = service.close_round()
    assert "in flight" in report.dropped["site"]
    assert report.steps == 0


GHOST = textwrap.dedent(
    """
    import sys, time, torch
    from festa.client.body_client import RemoteBodyLink
    target, tok = sys.argv[1], sys.argv[2]
    link = RemoteBodyLink(target, tok).open()
    for step in range(3):
        link.send_forward(step, torch.randn(3, 16, 32))
    for _ in range(3):
        link.receive()
    print("forwards-in-flight", flush=True)
    time.sleep(600)
    """
)


def test_a_client_that_vanishes_with_micro_batches_in_flight_is_dropped(start_service, config):
    service, target = start_service()
    nodes = {"site-a": "cls", "site-b": "cls", "ghost": "cls"}
    service.open_round(1, nodes, train_body=True, mode="async", pipeline_depth=3)
    ghost = start_client_process(GHOST, target, "ghost")
    try:
        assert ghost.stdout is not None
        assert ghost.stdout.readline().strip() == "forwards-in-flight"

        def client(node: str, seed: int):
            with RemoteBodyLink(target, token(1, node)) as link:
                return _train(link, config, 3, seed)[0]

        def kill_ghost():
            ghost.kill()

        a, b, _ = run_concurrently(
            lambda: client("site-a", 1), lambda: client("site-b", 2), kill_ghost, timeout_s=90
        )
    finally:
        ghost.kill()
        ghost.wait()
    report = service.close_round()
    assert set(report.dropped) == {"ghost"}
    assert len(a) == len(b) == STEPS
    assert report.steps == 2 * STEPS  # the ghost's forwards never reached the weights
    state = service.state_dict()
    assert all(torch.isfinite(v).all() for v in state["body"].values())
    assert all(p.grad is None for p in service.engine.body.parameters())
