"""Async step mode: each client's forward+backward is applied on arrival, serialized.

A lock held from a client's forward to its backward serializes the clients, so autograd never
sees parameters changed in place between a forward and its backward. The backward is due
`step_deadline_s` after the forward (the lock holds the body for it); a client that misses it
is dropped and the lock released.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from festa.server.body_service.engine import BodyEngine
from festa.server.body_service.round_state import (
    ClientState,
    Code,
    Refusal,
    Round,
    RoundClient,
    advance_lockstep,
    compute,
    read_lockstep_message,
    tensor_reply,
)
from festa.shared.wire import TokenLimits
from festa.shared.wire.proto import body_pb2


class AsyncLock:
    """One round's async steps: the train lock, taken by a forward, released by its backward."""

    def __init__(self, rnd: Round, engine: BodyEngine, limits: TokenLimits):
        self.rnd = rnd
        self.engine = engine
        self.limits = limits
        self.train_lock = threading.Lock()

    def step(self, client: RoundClient, message: Any) -> body_pb2.ServerMessage:
        rnd = self.rnd
        kind, tensor, dtype = read_lockstep_message(client, message, self.limits)
        if kind == "forward":
            while not self.train_lock.acquire(timeout=0.2):
                if rnd.closed or client.state is not ClientState.LIVE:
                    raise Refusal(Code.FAILED_PRECONDITION, "round closed while waiting")
            try:
                state, output = compute(self.engine.forward, tensor)
            except BaseException:
                self.train_lock.release()
                raise
            client.forward_state = state
            client.forward_deadline = time.monotonic() + rnd.step_deadline_s
            rnd.book(tokens=tensor.shape[0] * tensor.shape[1])
            return tensor_reply(client.next_step, "output", output, dtype)
        state, client.forward_state = client.forward_state, None
        assert state is not None
        try:
            (grad_tokens,) = compute(self.engine.backward, [state], [tensor], rnd.train_body)
        finally:
            self.train_lock.release()
        rnd.book(steps=1)
        return tensor_reply(client.next_step, "grad_tokens", grad_tokens, dtype)

    def deadline(self, client: RoundClient) -> tuple[float, str] | None:
        if client.forward_state is None:
            return None
        return (
            client.forward_deadline,
            f"no backward within {self.rnd.step_deadline_s:g} s of the forward of step "
            f"{client.next_step} (async mode holds the body for it)",
        )

    def note_reply(self, client: RoundClient, reply: body_pb2.ServerMessage) -> None:
        advance_lockstep(client, reply)

    def release(self, client: RoundClient) -> None:
        if client.forward_state is not None:  # never leave the train lock held
            client.forward_state = None
            self.train_lock.release()

    def close(self) -> None:
        pass
