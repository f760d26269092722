"""Refusals: bad tokens and malformed tensors end only the offending stream.

Hostile messages are built by hand on the raw gRPC stub (RemoteBodyLink would refuse to send
most of them); after each one a good client is served, and at the end the body equals a
local body that saw only the good client's steps.
"""

from __future__ import annotations

import copy
import time

import grpc
import numpy as np
import pytest
import torch

from festa.client.body_client import BodyServiceError, RemoteBodyLink
from festa.server.body_service import issue_token
from festa.shared.wire.proto import body_pb2, body_pb2_grpc
from festa.shared.model.split import LocalBodyLink

from .conftest import RUN_ID, SECRET, token

MAX_BYTES = 16 * 1024  # a [B, 16, 32] fp32 tensor is B * 2 KiB
LR = 1e-2


def _raw_session(target: str, messages: list[body_pb2.ClientMessage]) -> grpc.RpcError:
    """Send `messages` on one stream and return the error status that ends it."""
    channel = grpc.insecure_channel(
        target,
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    try:
        call = body_pb2_grpc.BodyServiceStub(channel).Session(iter(messages), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in call:
                pass
        return caught.value
    finally:
        channel.close()


def _hello(tok: str) -> body_pb2.ClientMessage:
    return body_pb2.ClientMessage(hello=body_pb2.Hello(token=tok))


def _forward(shape: tuple[int, ...], data: bytes, dtype: str = "fp32") -> body_pb2.ClientMessage:
    tensor = body_pb2.Tensor(dtype=dtype, shape=list(shape), data=data)
    return body_pb2.ClientMessage(forward=body_pb2.Forward(step=0, tokens=tensor))


def _fp32(array: np.ndarray) -> bytes:
    return array.astype("<f4").tobytes()


def _attacks() -> list[tuple[str, list[body_pb2.ClientMessage], grpc.StatusCode, str]]:
    good = np.ones((2, 16, 32))
    nan = good.copy()
    nan[1, 3, 7] = np.nan
    big = np.ones((9, 16, 32))  # 18 KiB > 16 KiB limit, inside gRPC's envelope headroom
    wide = np.ones((5, 16, 32))  # 10 KiB, but 5 > max_batch 4
    huge = np.ones((64, 16, 32))  # 128 KiB: gRPC itself refuses it
    unauth = grpc.StatusCode.UNAUTHENTICATED
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("no token", [_forward(good.shape, _fp32(good))], unauth, "Hello"),
        ("garbage token", [_hello("not-a-token")], unauth, "malformed"),
        (
            "wrong secret",
            [_hello(issue_token(b"another-secret", RUN_ID, 0, "good", "cls", 60))],
            unauth,
            "signature",
        ),
        ("expired", [_hello(token(0, "bad-nan", ttl_s=1, now=0.0))], unauth, "expired"),
        ("other round", [_hello(token(7, "bad-nan"))], unauth, "round 7"),
        ("not a participant", [_hello(token(0, "mallory"))], unauth, "not in round"),
        (
            "other run",
            [_hello(issue_token(SECRET, "another-run", 0, "good", "cls", 60))],
            unauth,
            "another-run",
        ),
        (
            "batch over the limit",
            [_hello(token(0, "bad-batch")), _forward(wide.shape, _fp32(wide))],
            invalid,
            "B=5",
        ),
        (
            "wrong shape",
            [_hello(token(0, "bad-shape")), _forward((2, 16, 32), _fp32(good)[:-8])],
            invalid,
            "bytes",
        ),
        (
            "NaN",
            [_hello(token(0, "bad-nan")), _forward(good.shape, _fp32(nan))],
            invalid,
            "NaN",
        ),
        (
            "oversized",
            [_hello(token(0, "bad-size")), _forward(big.shape, _fp32(big))],
            invalid,
            "exceeds",
        ),
        (
            "far oversized",
            [_hello(token(0, "bad-huge")), _forward(huge.shape, _fp32(huge))],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
        (
            "unknown dtype",
            [_hello(token(0, "bad-dtype")), _forward(good.shape, _fp32(good), dtype="fp64")],
            invalid,
            "fp64",
        ),
    ]


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_refusals_leave_the_body_and_a_good_client_unharmed(start_service, body, mode):
    service, target = start_service(lr=LR, max_message_bytes=MAX_BYTES, max_batch=4)
    attacks = _attacks()
    hostile = ["bad-shape", "bad-nan", "bad-size", "bad-huge", "bad-dtype", "bad-batch"]
    service.open_round(
        0, {"good": "cls", **{n: "cls" for n in hostile}}, train_body=True, mode=mode
    )
    local_body = copy.deepcopy(body)
    local_link = LocalBodyLink(local_body)
    optimizer = torch.optim.AdamW(local_body.parameters(), lr=LR, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)

    if mode == "sync":  # a participant's refusal must come before the good client's steps
        errors = [_raw_session(target, messages) for _, messages, _, _ in attacks]
    with RemoteBodyLink(target, token(0, "good")) as link:
        for i, (name, messages, code, reason) in enumerate(attacks):
            if mode == "async":
                error = _raw_session(target, messages)
            else:
                error = errors[i]
            assert error.code() == code, name
            assert reason in (error.details() or ""), (name, error.details())
            tokens = torch.randn(2, 16, 32, generator=gen)
            grad_output = torch.randn(2, 16, 32, generator=gen)
            out = link.forward(tokens)
            grad_tokens = link.backward(grad_output)
            optimizer.zero_grad()
            want_out = local_link.forward(tokens)
            want_grad = local_link.backward(grad_output)
            optimizer.step()
            assert torch.allclose(out, want_out, rtol=1e-5, atol=1e-6), name
            assert torch.allclose(grad_tokens, want_grad, rtol=1e-5, atol=1e-6), name
    report = service.close_round()
    assert set(report.dropped) == set(hostile)
    assert not any("never connected" in reason for reason in report.dropped.values())
    assert report.steps == len(attacks)
    for got, want in zip(service.engine.body.parameters(), local_body.parameters(), strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_second_stream_for_the_same_node_is_refused(start_service):
    service, target = start_service()
    service.open_round(0, {"a": "cls"}, train_body=False, mode="async")
    with RemoteBodyLink(target, token(0, "a")) as link:
        with pytest.raises(BodyServiceError) as caught:
            RemoteBodyLink(target, token(0, "a")).open()
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert link.evaluate(torch.zeros(1, 16, 32)).shape == (1, 16, 32)
    service.close_round()


def test_out_of_order_messages_are_refused(start_service):
    service, target = start_service()
    service.open_round(0, {"a": "cls", "b": "cls"}, train_body=False, mode="async")
    grad = body_pb2.Tensor(dtype="fp32", shape=[1, 16, 32], data=b"\0" * 2048)
    backward_first = body_pb2.ClientMessage(backward=body_pb2.Backward(step=0, grad_output=grad))
    error = _raw_session(target, [_hello(token(0, "a")), backward_first])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "waiting for forward" in error.details()
    skipped = _forward((1, 16, 32), b"\0" * 2048)
    skipped.forward.step = 4
    error = _raw_session(target, [_hello(token(0, "b")), skipped])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected 0" in error.details()
    assert set(service.close_round().dropped) == {"a", "b"}


def test_no_stream_is_accepted_between_rounds(start_service):
    _, target = start_service()
    error = _raw_session(target, [_hello(token(0, "a"))])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert SECRET  # the token itself is genuine: refusal is about the round


def test_a_stream_longer_than_its_limit_is_ended(start_service):
    service, target = start_service(max_stream_s=0.5)
    service.open_round(0, {"a": "cls"}, train_body=False, mode="async")
    with RemoteBodyLink(target, token(0, "a")) as link:
        link.evaluate(torch.zeros(1, 16, 32))
        time.sleep(1.0)
        with pytest.raises(BodyServiceError) as caught:
            link.evaluate(torch.zeros(1, 16, 32))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stream exceeded 0.5 s" in caught.value.reason
    assert "a" in service.close_round().dropped
