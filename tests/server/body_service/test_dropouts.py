"""Sync mode: a client that vanishes, stalls or misbehaves is dropped; the others finish."""

from __future__ import annotations

import textwrap
import time

import grpc
import pytest
import torch

from festa.client.body_client import BodyServiceError, RemoteBodyLink

from .conftest import run_concurrently, start_client_process, token

STEPS = 3


def _train(target: str, node: str, round_id: int, steps: int, seed: int) -> list[torch.Tensor]:
    """A plain client: `steps` forward/backward pairs on random tokens; returns token grads."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    with RemoteBodyLink(target, token(round_id, node)) as link:
        for _ in range(steps):
            out = link.forward(torch.randn(2, 16, 32, generator=gen))
            grads.append(link.backward(out.clone()))
    return grads


GHOST = textwrap.dedent(
    """
    import sys, time, torch
    from festa.client.body_client import RemoteBodyLink
    target, tok = sys.argv[1], sys.argv[2]
    link = RemoteBodyLink(target, tok).open()
    out = link.forward(torch.randn(2, 16, 32))
    link.backward(out)
    print("step-0-done", flush=True)
    time.sleep(600)
    """
)


def test_a_client_process_killed_mid_round_is_dropped_and_the_others_finish(start_service):
    service, target = start_service()
    nodes = {"site-a": "cls", "site-b": "cls", "ghost": "cls"}
    # A long deadline: the ghost must be noticed by its broken stream, not by the clock.
    service.open_round(1, nodes, train_body=True, step_deadline_s=60)
    ghost = start_client_process(GHOST, target, "ghost")
    try:

        def kill_ghost_after_step_0() -> None:
            assert ghost.stdout is not None
            assert ghost.stdout.readline().strip() == "step-0-done"
            ghost.kill()

        a, b, _ = run_concurrently(
            lambda: _train(target, "site-a", 1, STEPS, seed=1),
            lambda: _train(target, "site-b", 1, STEPS, seed=2),
            kill_ghost_after_step_0,
            timeout_s=90,
        )
    finally:
        ghost.kill()
        ghost.wait()
    report = service.close_round()
    assert len(a) == len(b) == STEPS
    assert set(report.dropped) == {"ghost"}
    assert "broke" in report.dropped["ghost"] or "ended" in report.dropped["ghost"]
    assert report.steps == STEPS


def test_a_stalled_client_misses_the_deadline_and_gets_a_clear_error(start_service):
    service, target = start_service()
    nodes = {"site-a": "cls", "site-b": "cls", "slow": "cls", "absent": "cls"}
    service.open_round(2, nodes, train_body=True, step_deadline_s=1.0)

    def slow_client() -> str:
        with RemoteBodyLink(target, token(2, "slow")) as link:
            out = link.forward(torch.randn(2, 16, 32))
            link.backward(out)
            time.sleep(3.0)  # sits on step 1 past the deadline
            with pytest.raises(BodyServiceError) as caught:
                link.forward(torch.randn(2, 16, 32))
            return caught.value

    a, b, error = run_concurrently(
        lambda: _train(target, "site-a", 2, STEPS, seed=1),
        lambda: _train(target, "site-b", 2, STEPS, seed=2),
        slow_client,
    )
    report = service.close_round()
    assert len(a) == len(b) == STEPS
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in error.reason and "step 1" in error.reason
    assert set(report.dropped) == {"slow", "absent"}
    assert "step 0" in report.dropped["absent"]  # never sent step 0 in time
    assert report.steps == STEPS


def test_a_malformed_participant_is_dropped_and_the_other_continues(start_service):
    service, target = start_service()
    service.open_round(3, {"good": "cls", "bad": "cls"}, train_body=True, step_deadline_s=30)
    with RemoteBodyLink(target, token(3, "bad")) as bad:
        with pytest.raises(BodyServiceError) as caught:
            bad.forward(torch.randn(2, 16, 24))  # wrong embedding dim
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "D=24" in caught.value.reason
    # The dropped node cannot come back in this round.
    with pytest.raises(BodyServiceError) as again:
        RemoteBodyLink(target, token(3, "bad")).open()
    assert again.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(_train(target, "good", 3, STEPS, seed=0)) == STEPS
    report = service.close_round()
    assert set(report.dropped) == {"bad"} and report.steps == STEPS
