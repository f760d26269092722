"""Admission: streams that have not authenticated never hold a slot a legitimate client needs,
on the insecure loopback port as on a TLS one (tests/deploy/test_body_tls.py)."""

from __future__ import annotations

import grpc
import pytest

from festa.client.body_client import RemoteBodyLink
from festa.shared.model.split import split_train_step
from festa.shared.wire import SESSION_TOKEN_METADATA
from festa.shared.wire.proto import body_pb2, body_pb2_grpc

from .conftest import (
    IdleStreams,
    make_batch,
    make_head_tail,
    mse_loss,
    run_concurrently,
    token,
    wait_for,
)

MAX_STREAMS, MAX_PENDING, STEPS = 3, 2, 2


def serve_a_round(service, target, config, mode: str, link_kwargs=None) -> None:
    """Two clients train STEPS steps each; the round must close with nobody dropped."""
    nodes = ["site-a", "site-b"]
    service.open_round(1, {n: "cls" for n in nodes}, train_body=True, mode=mode, step_deadline_s=60)

    def client(i: int) -> None:
        head, tail = make_head_tail(config, seed=i)
        with RemoteBodyLink(target, token(1, nodes[i]), **(link_kwargs or {})) as link:
            for s in range(STEPS):
                split_train_step(head, tail, mse_loss, make_batch(config, 2, seed=s), link)

    run_concurrently(lambda: client(0), lambda: client(1))
    report = service.close_round()
    assert report.dropped == {}
    assert report.steps == (STEPS if mode == "sync" else 2 * STEPS)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_twice_the_slot_limit_of_idle_streams_does_not_lock_out_clients(
    start_service, config, mode
):
    service, target = start_service(
        max_streams=MAX_STREAMS, max_pending=MAX_PENDING, auth_timeout_s=300
    )
    channel = grpc.insecure_channel(target)
    idle = IdleStreams(channel, 2 * MAX_STREAMS)  # no token, no Hello: unauthenticated
    try:
        wait_for(
            lambda: idle.count_refused() == 2 * MAX_STREAMS - MAX_PENDING,
            "the streams beyond the pending budget to be refused",
        )
        assert set(idle.refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert service.slots_in_use() == {"authenticated": 0, "pending": MAX_PENDING}
        serve_a_round(service, target, config, mode)
        # the idle streams were held open the whole time, and still hold only pending slots
        assert service.slots_in_use() == {"authenticated": 0, "pending": MAX_PENDING}
    finally:
        idle.close()
        channel.close()


def test_a_forged_metadata_token_is_refused_at_once_and_holds_nothing(start_service, config):
    service, target = start_service(max_streams=MAX_STREAMS, max_pending=MAX_PENDING)
    service.open_round(1, {"site-a": "cls"}, train_body=False, mode="async")
    channel = grpc.insecure_channel(target)
    forged = [(SESSION_TOKEN_METADATA, token(1, "site-a")[:-4] + "AAAA")]
    idle = IdleStreams(channel, 2 * MAX_STREAMS, metadata=forged)
    try:
        wait_for(lambda: idle.count_refused() == 2 * MAX_STREAMS, "the forged streams' refusal")
        assert set(idle.refused) == {grpc.StatusCode.UNAUTHENTICATED}
        assert service.slots_in_use() == {"authenticated": 0, "pending": 0}
    finally:
        idle.close()
        channel.close()
    service.close_round()


def test_a_hello_that_differs_from_the_metadata_token_is_refused(start_service, config):
    service, target = start_service()
    service.open_round(1, {"site-a": "cls", "site-b": "cls"}, train_body=False, mode="async")
    channel = grpc.insecure_channel(target)
    hello = body_pb2.ClientMessage(hello=body_pb2.Hello(token=token(1, "site-b")))
    call = body_pb2_grpc.BodyServiceStub(channel).Session(
        iter([hello]), timeout=30, metadata=[(SESSION_TOKEN_METADATA, token(1, "site-a"))]
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    channel.close()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "differs" in caught.value.details()
    report = service.close_round()
    assert set(report.dropped) == {"site-a", "site-b"}  # neither connected
