"""One round's state on the server: its clients, their state machine, refusals, the report.

Shared by the stream handler (`servicer`) and the step modes (`sync_step`, `async_step`,
`pipelined_step`); none of it touches the body's parameters (that is `engine`).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import grpc
import torch

from festa.server.body_service.engine import ForwardState, RoundClosedError
from festa.shared.wire import TokenLimits, WireFormatError, decode, encode
from festa.shared.wire.messages import from_proto, to_proto
from festa.shared.wire.proto import body_pb2

log = logging.getLogger("festa.body_service")

Mode = Literal["sync", "async"]
Code = grpc.StatusCode


class ClientState(enum.Enum):
    """Where a participant is in the round: WAITING -> LIVE -> FINISHED | DROPPED.

    WAITING: listed by `open_round`, no stream yet. LIVE: authenticated stream open.
    FINISHED: sent Done between steps. DROPPED: refused, vanished or missed a deadline; the
    reason is in `Round.dropped`. FINISHED and DROPPED are final for the round.
    """

    WAITING = "waiting"
    LIVE = "live"
    FINISHED = "finished"
    DROPPED = "dropped"


class Expect(enum.Enum):
    """What a lockstep (sync or async) client's stream waits for next within its step."""

    FORWARD = "forward"
    FORWARD_REPLY = "forward_reply"
    BACKWARD = "backward"
    BACKWARD_REPLY = "backward_reply"


class Event(enum.Enum):
    """What arrives on a stream's event queue."""

    MESSAGE = "msg"  # a client message (from the pump)
    REPLY = "reply"  # a reply computed by another thread (sync barrier)
    DROP = "drop"  # the round dropped this client: (code, reason)
    END = "end"  # the client closed its side
    BROKEN = "broken"  # the transport failed: a description


@dataclass
class RoundReport:
    """What happened in one round, for the run store and the console."""

    round_id: int
    dropped: dict[str, str]  # node_id -> reason
    steps: int  # body steps: sync = concatenated steps, async = forward/backward pairs
    bytes_in: dict[str, int]  # node_id -> bytes received from it (protobuf message sizes)
    bytes_out: dict[str, int]  # node_id -> bytes sent to it
    tokens_processed: int  # tokens through the body's forward (training and evaluation)
    seconds: float


class Refusal(Exception):
    """End one stream with `code` and `reason`; the round records the reason."""

    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class RoundClient:
    """One participant of the round and the books its stream keeps."""

    node_id: str
    task: str
    events: queue.Queue[tuple[Event, Any]] | None = None
    state: ClientState = ClientState.WAITING
    expect: Expect = Expect.FORWARD  # lockstep modes
    next_step: int = 0
    token_shape: tuple[int, ...] = ()
    bytes_in: int = 0
    bytes_out: int = 0
    forward_state: ForwardState | None = None  # async mode, between forward and backward
    forward_deadline: float = 0.0  # async mode: the backward must arrive before this
    # pipelined mode: step -> (tokens kept for the recomputation, backward deadline)
    in_flight: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)
    next_backward: int = 0


class StepMode(Protocol):
    """How a round runs Forward/Backward (one module per mode)."""

    def step(self, client: RoundClient, message: Any) -> body_pb2.ServerMessage | None:
        """A Forward or Backward -> its reply now, or None (the reply comes as an event)."""

    def deadline(self, client: RoundClient) -> tuple[float, str] | None:
        """When this client's next message is due because of the mode, and why."""

    def note_reply(self, client: RoundClient, reply: body_pb2.ServerMessage) -> None:
        """Advance the client's books once `reply` goes out."""

    def release(self, client: RoundClient) -> None:
        """The client's stream ended: free what the mode holds for it."""

    def close(self) -> None:
        """The round closed: stop the mode's threads."""


@dataclass
class Round:
    round_id: int
    clients: dict[str, RoundClient]
    train_body: bool
    mode: Mode
    step_deadline_s: float
    pipeline_depth: int = 1
    opened: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False
    dropped: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    tokens_processed: int = 0
    stepper: StepMode | None = None

    def drop(self, client: RoundClient, code: grpc.StatusCode, reason: str) -> None:
        """Drop a waiting or live client for the rest of the round (call under `cond`)."""
        if client.state in (ClientState.DROPPED, ClientState.FINISHED):
            return
        client.state = ClientState.DROPPED
        self.dropped[client.node_id] = reason
        if client.events is not None:
            client.events.put((Event.DROP, (code, reason)))
        log.warning("round %d: dropped node %s: %s", self.round_id, client.node_id, reason)
        self.cond.notify_all()

    def book(self, *, tokens: int = 0, steps: int = 0) -> None:
        """Count `tokens` through the body's forward and `steps` body steps."""
        with self.cond:
            self.tokens_processed += tokens
            self.steps += steps

    def report(self) -> RoundReport:
        return RoundReport(
            round_id=self.round_id,
            dropped=dict(self.dropped),
            steps=self.steps,
            bytes_in={n: c.bytes_in for n, c in self.clients.items()},
            bytes_out={n: c.bytes_out for n, c in self.clients.items()},
            tokens_processed=self.tokens_processed,
            seconds=time.monotonic() - self.opened,
        )


def decode_tensor(message: Any, name: str, limits: TokenLimits) -> tuple[torch.Tensor, str]:
    """A received protobuf `Tensor` -> (validated tensor, its wire dtype), or INVALID_ARGUMENT."""
    try:
        wire = from_proto(message)
        return decode(wire, limits), wire.dtype
    except WireFormatError as exc:
        raise Refusal(Code.INVALID_ARGUMENT, f"{name}: {exc}") from None


def tensor_reply(step: int, kind: str, tensor: torch.Tensor, dtype: str) -> body_pb2.ServerMessage:
    """A reply carrying `tensor` in the client's wire dtype (`Refusal` if it cannot be encoded)."""
    try:
        wire = encode(tensor, dtype)
    except WireFormatError as exc:
        raise Refusal(Code.OUT_OF_RANGE, f"the {kind} cannot be sent as {dtype}: {exc}") from None
    return body_pb2.ServerMessage(step=step, **{kind: to_proto(wire)})


def compute(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a body computation; a failure is the server's fault (INTERNAL), not the client's."""
    try:
        return fn(*args)
    except RoundClosedError:
        raise Refusal(Code.FAILED_PRECONDITION, "the round is closed") from None
    except Exception as exc:
        log.exception("body computation failed")
        raise Refusal(Code.INTERNAL, f"body computation failed: {exc}") from None


def read_lockstep_message(
    client: RoundClient, message: Any, limits: TokenLimits
) -> tuple[str, torch.Tensor, str]:
    """Check a sync/async Forward or Backward against the client's step; return
    (kind, tensor `[B, N, D]`, wire dtype). A Backward's gradient must match its forward's shape."""
    kind = message.WhichOneof("kind")
    if kind == "forward":
        body, field_name = message.forward, "tokens"
    else:
        body, field_name = message.backward, "grad_output"
    if client.expect.value != kind:
        raise Refusal(
            Code.FAILED_PRECONDITION,
            f"got {kind} for step {body.step} while waiting for {client.expect.value} "
            f"of step {client.next_step}",
        )
    if body.step != client.next_step:
        raise Refusal(
            Code.FAILED_PRECONDITION,
            f"got {kind} for step {body.step}, expected {client.next_step}",
        )
    if not body.HasField(field_name):
        raise Refusal(Code.INVALID_ARGUMENT, f"{kind} without {field_name}")
    tensor, dtype = decode_tensor(getattr(body, field_name), f"{kind} {field_name}", limits)
    if kind == "forward":
        client.token_shape = tuple(tensor.shape)
    elif tuple(tensor.shape) != client.token_shape:
        raise Refusal(
            Code.INVALID_ARGUMENT,
            f"grad_output shape {list(tensor.shape)} does not match the forward's "
            f"{list(client.token_shape)}",
        )
    return kind, tensor, dtype


def advance_lockstep(client: RoundClient, reply: body_pb2.ServerMessage) -> None:
    """After a lockstep reply: an output means the backward is next; grad_tokens end the step."""
    kind = reply.WhichOneof("kind")
    if kind == "output" and reply.step >= 0:
        client.expect = Expect.BACKWARD
    elif kind == "grad_tokens":
        client.expect = Expect.FORWARD
        client.next_step += 1
