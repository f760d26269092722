"""The body service: the shared transformer body behind one gRPC stream per client per round.

The ServerApp creates a `BodyService` in its own process, `start()`s the gRPC server (background
threads), and for each Flower round calls `open_round()` with the participating nodes, hands
each node a session token (`tokens.issue_token`) inside its Flower `train` message, and calls
`close_round()` when the replies are in. Step semantics (DESIGN §2):

- **sync** (default): for step s the service waits, up to `step_deadline_s` after the first
  arrival, for the forward of every live participant, runs ONE forward on their concatenation
  (clients in node-id order) and returns each slice; then gathers every gradient, runs one
  backward and, when the body trains, one AdamW step. The body's gradient is the sum of the
  clients' gradients (each client's loss already averages its own batch). A participant that
  misses a deadline, breaks its stream or sends a malformed message is dropped for the rest
  of the round (its stream ends with a clear status) and the others go on; a dropped client's
  slice of a step's backward gets a zero gradient.
- **async**: each client's forward+backward is applied on arrival; a lock held from a client's
  forward to its backward serializes them, so autograd never sees parameters changed in place.
- **pipelined async** (`pipeline_depth` K > 1): a client may send up to K Forwards ahead of
  their Backwards, to hide the network's round trip. No lock spans a step: a Forward is
  answered at once from the current weights without keeping a graph (its tokens are kept), and
  its Backward RECOMPUTES the forward with the weights current then, backpropagates the
  client's gradient and takes the AdamW step, atomically. The body output a client's tail saw
  is thus up to K-1 of its own steps (plus other clients' steps in between) older than the
  weights its gradient is applied to: bounded staleness. K = 1 is the async mode above,
  unchanged. Sync mode refuses K > 1: its barrier runs one (step, phase) at a time for all
  clients, and with K Forwards in flight per client it would need an end-of-forwards signal
  per client and a fixed cross-client order of forwards and backwards to stay deterministic;
  not built (see docs/WAN.md).

Refusals end the offending stream with a gRPC status and a reason, are logged, and never touch
the body or other clients' streams: UNAUTHENTICATED (token), INVALID_ARGUMENT (malformed
tensor), FAILED_PRECONDITION (protocol order, no open round), DEADLINE_EXCEEDED (missed step
deadline, stream time), ALREADY_EXISTS (second stream for the same node).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import torch
from torch import nn

from festa.shared.wire.messages import from_proto, to_proto
from festa.server.body_service.engine import BodyEngine, ForwardState, RoundClosedError
from festa.shared.wire.proto import body_pb2, body_pb2_grpc
from festa.server.body_service.tokens import InvalidTokenError, verify_token
from festa.shared.config import ModelConfig
from festa.shared.wire import TokenLimits, WireFormatError, decode, encode

log = logging.getLogger("festa.body_service")

Mode = Literal["sync", "async"]
Code = grpc.StatusCode

# Headroom above the tensor payload limit for the protobuf envelope (shape, dtype, step).
_ENVELOPE_BYTES = 64 * 1024


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the service's TLS identity (certificate chain from the run's CA, key)."""

    cert_chain: Path
    private_key: Path

    def server_credentials(self) -> grpc.ServerCredentials:
        key = Path(self.private_key).read_bytes()
        cert = Path(self.cert_chain).read_bytes()
        return grpc.ssl_server_credentials([(key, cert)])


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


class _Refusal(Exception):
    """End one stream with `code` and `reason`; the round records the reason."""

    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Client:
    node_id: str
    task: str
    events: queue.Queue[tuple[str, Any]] | None = None
    state: str = "waiting"  # waiting | live | finished | dropped
    expect: str = "forward"  # forward | forward_reply | backward | backward_reply
    next_step: int = 0
    token_shape: tuple[int, ...] = ()
    bytes_in: int = 0
    bytes_out: int = 0
    forward_state: ForwardState | None = None  # async mode, between forward and backward
    forward_deadline: float = 0.0  # async mode: the backward must arrive before this
    # pipelined async mode: step -> (tokens kept for the recomputation, backward deadline)
    in_flight: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)
    next_backward: int = 0


@dataclass
class _Group:
    """Sync mode: one concatenated forward (clients with the same token count N)."""

    nodes: list[str]
    sizes: list[int]
    state: ForwardState


@dataclass
class _StepContext:
    """Sync mode: the forwards of one step, waiting for their gradients."""

    groups: list[_Group]

    @property
    def nodes(self) -> list[str]:
        return [n for group in self.groups for n in group.nodes]


@dataclass
class _Round:
    round_id: int
    clients: dict[str, _Client]
    train_body: bool
    mode: Mode
    step_deadline_s: float
    pipeline_depth: int = 1
    opened: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition)
    train_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    dropped: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    tokens_processed: int = 0
    # sync barrier
    step: int = 0
    phase: str = "forward"
    submitted: dict[str, tuple[torch.Tensor, str]] = field(default_factory=dict)
    first_arrival: float | None = None
    context: _StepContext | None = None

    def drop(self, client: _Client, code: grpc.StatusCode, reason: str) -> None:
        """Drop a waiting or live client for the rest of the round (call under `cond`)."""
        if client.state in ("dropped", "finished"):
            return
        client.state = "dropped"
        self.dropped[client.node_id] = reason
        if client.events is not None:
            client.events.put(("drop", (code, reason)))
        log.warning("round %d: dropped node %s: %s", self.round_id, client.node_id, reason)
        self.cond.notify_all()


class BodyService:
    """The body, its AdamW optimizer and the gRPC service that drives them (DESIGN §2–§4)."""

    def __init__(
        self,
        body: nn.Module,
        config: ModelConfig,
        *,
        secret: bytes,
        lr: float,
        weight_decay: float = 0.01,
        device: str | torch.device = "cpu",
        autocast_bf16: bool = False,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_batch: int = 256,
        max_streams: int = 64,
        max_stream_s: float = 3600.0,
        auth_timeout_s: float = 10.0,
        run_id: str | None = None,
    ):
        if not secret:
            raise ValueError("the session-token secret must not be empty")
        self.config = config
        self.engine = BodyEngine(
            body, lr=lr, weight_decay=weight_decay, device=device, autocast_bf16=autocast_bf16
        )
        self.engine.is_open = self._round_is_open
        self.limits = TokenLimits(
            embed_dim=config.embed_dim,
            max_tokens=config.num_tokens,
            max_batch=max_batch,
            max_bytes=max_message_bytes,
        )
        self._secret = secret
        self._run_id = run_id
        self._max_streams = max_streams
        self._max_stream_s = max_stream_s
        self._auth_timeout_s = auth_timeout_s
        self._round: _Round | None = None
        self._coordinator: threading.Thread | None = None
        self._server: grpc.Server | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0, tls: TlsFiles | None = None) -> int:
        """Serve on `host:port` (0 picks a free port) in background threads; return the port."""
        if self._server is not None:
            raise RuntimeError("the body service is already started")
        limit = self.limits.max_bytes + _ENVELOPE_BYTES
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_streams + 4),
            maximum_concurrent_rpcs=self._max_streams,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        body_pb2_grpc.add_BodyServiceServicer_to_server(_Servicer(self), server)
        address = f"{host}:{port}"
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, tls.server_credentials())
        if bound == 0:
            raise OSError(f"could not bind the body service to {address}")
        server.start()
        self._server = server
        log.info("body service listening on %s:%d (%s)", host, bound, "TLS" if tls else "insecure")
        return bound

    def stop(self, grace_s: float = 1.0) -> None:
        """Close any open round and stop serving."""
        if self._round is not None and not self._round.closed:
            self.close_round()
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None

    def __enter__(self) -> BodyService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- rounds ----------------------------------------------------------------------------

    def open_round(
        self,
        round_id: int,
        participants: dict[str, str],
        *,
        train_body: bool,
        mode: Mode = "sync",
        step_deadline_s: float = 60.0,
        pipeline_depth: int = 1,
        lr_scale: float = 1.0,
    ) -> None:
        """Accept streams from `participants` (node_id -> task) holding tokens for `round_id`.

        Sync steps concatenate the clients' tokens in `participants` order: pass a stable order
        (e.g. by site) for runs that reproduce bit for bit. `pipeline_depth` K > 1 lets each
        client keep K micro-batches in flight (async mode only; see the module docstring).
        `lr_scale` multiplies the body's learning rate for this round's steps
        (`shared.model.pipeline.staleness_lr_scale`).
        """
        if self._round is not None and not self._round.closed:
            raise RuntimeError(f"round {self._round.round_id} is still open; close it first")
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        if step_deadline_s <= 0:
            raise ValueError(f"step_deadline_s must be positive, got {step_deadline_s}")
        if pipeline_depth < 1:
            raise ValueError(f"pipeline_depth must be >= 1, got {pipeline_depth}")
        if pipeline_depth > 1 and mode != "async":
            raise ValueError(
                f"pipeline_depth {pipeline_depth} needs mode='async': the sync barrier runs one "
                "step for all clients at a time and does not pipeline"
            )
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be positive, got {lr_scale}")
        self.engine.set_trainable(train_body)
        self.engine.set_lr_scale(lr_scale)
        clients = {str(n): _Client(str(n), str(t)) for n, t in participants.items()}
        rnd = _Round(round_id, clients, train_body, mode, step_deadline_s, pipeline_depth)
        self._round = rnd
        if mode == "sync":
            self._coordinator = threading.Thread(
                target=_SyncCoordinator(rnd, self.engine).run,
                name=f"body-sync-round-{round_id}",
                daemon=True,
            )
            self._coordinator.start()
        log.info(
            "round %d open: %d participants, %s, train_body=%s, pipeline depth %d",
            round_id,
            len(clients),
            mode,
            train_body,
            pipeline_depth,
        )

    def close_round(self) -> RoundReport:
        """End the round: streams still open are ended, absentees recorded; returns the report.

        After this returns no computation of the round can change the body.
        """
        rnd = self._round
        if rnd is None or rnd.closed:
            raise RuntimeError("no round is open")
        with self.engine.lock:  # waits for an in-flight computation, then bars new ones
            rnd.closed = True
        with rnd.cond:
            for client in rnd.clients.values():
                if client.state == "waiting":
                    rnd.drop(client, Code.FAILED_PRECONDITION, "never connected")
                elif client.state == "live":
                    rnd.drop(
                        client, Code.FAILED_PRECONDITION, "still connected when the round closed"
                    )
            rnd.cond.notify_all()
        if self._coordinator is not None:
            self._coordinator.join()
            self._coordinator = None
        report = RoundReport(
            round_id=rnd.round_id,
            dropped=dict(rnd.dropped),
            steps=rnd.steps,
            bytes_in={n: c.bytes_in for n, c in rnd.clients.items()},
            bytes_out={n: c.bytes_out for n, c in rnd.clients.items()},
            tokens_processed=rnd.tokens_processed,
            seconds=time.monotonic() - rnd.opened,
        )
        log.info("round %d closed: %s", rnd.round_id, report)
        return report

    def _round_is_open(self) -> bool:
        return self._round is not None and not self._round.closed

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Body weights and body-optimizer state (CPU copies), for checkpoint and resume."""
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned; only between rounds."""
        if self._round_is_open():
            raise RuntimeError("cannot load a body checkpoint while a round is open")
        self.engine.load_state_dict(state)

    # ---- one stream ------------------------------------------------------------------------

    def session(self, requests: Any, context: grpc.ServicerContext) -> Any:
        """The gRPC handler: authenticate, then answer Forward/Backward/Evaluate in order."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        threading.Thread(target=_pump, args=(requests, events), daemon=True).start()
        context.add_callback(lambda: events.put(("broken", "the stream was closed")))
        started = time.monotonic()
        rnd: _Round | None = None
        client: _Client | None = None
        try:
            auth_deadline = (started + self._auth_timeout_s, "no Hello within the time limit")
            first = self._next_event(events, auth_deadline, "authentication")
            rnd, client = self._admit(first, events)
            client.bytes_in += first[1].ByteSize()
            welcome = self._welcome(rnd, client)
            client.bytes_out += welcome.ByteSize()
            yield welcome
            while True:
                kind, item = self._next_event(events, self._deadline(rnd, client, started))
                if kind == "msg":
                    client.bytes_in += item.ByteSize()
                    reply = self._handle(rnd, client, item)
                elif kind == "reply":
                    reply = item
                elif kind == "drop":
                    raise _Refusal(*item)
                elif kind == "end":
                    if client.state != "finished":
                        raise _Refusal(
                            Code.CANCELLED,
                            f"stream ended without Done at step {client.next_step} "
                            "(client vanished or the transport cut it)",
                        )
                    return
                else:  # broken
                    raise _Refusal(Code.CANCELLED, f"stream broke: {item}")
                if reply is not None:
                    self._note_reply(rnd, client, reply)
                    client.bytes_out += reply.ByteSize()
                    yield reply
        except _Refusal as refusal:
            who = client.node_id if client else context.peer()
            log.warning("body service refused %s: %s: %s", who, refusal.code.name, refusal.reason)
            if rnd is not None and client is not None:
                with rnd.cond:
                    rnd.drop(client, refusal.code, refusal.reason)
            context.abort(refusal.code, refusal.reason)
        finally:
            if rnd is not None and client is not None:
                self._release(rnd, client)

    def _next_event(
        self, events: queue.Queue[tuple[str, Any]], deadline: tuple[float, str], what: str = ""
    ) -> tuple[str, Any]:
        """The stream's next event, or DEADLINE_EXCEEDED with the deadline's reason."""
        when, reason = deadline
        try:
            timeout = when - time.monotonic()
            if timeout <= 0:
                raise queue.Empty
            event = events.get(timeout=timeout)
        except queue.Empty:
            raise _Refusal(Code.DEADLINE_EXCEEDED, reason) from None
        if what and event[0] != "msg":
            raise _Refusal(Code.UNAUTHENTICATED, f"stream ended before {what}")
        return event

    def _deadline(self, rnd: _Round, client: _Client, started: float) -> tuple[float, str]:
        deadline = (started + self._max_stream_s, f"stream exceeded {self._max_stream_s:g} s")
        if rnd.mode == "async" and client.forward_state is not None:
            deadline = min(
                deadline,
                (
                    client.forward_deadline,
                    f"no backward within {rnd.step_deadline_s:g} s of the forward of step "
                    f"{client.next_step} (async mode holds the body for it)",
                ),
            )
        if client.in_flight:
            step = min(client.in_flight)
            deadline = min(
                deadline,
                (
                    client.in_flight[step][1],
                    f"no backward within {rnd.step_deadline_s:g} s of the forward of step {step}",
                ),
            )
        return deadline

    def _admit(
        self, first: tuple[str, Any], events: queue.Queue[tuple[str, Any]]
    ) -> tuple[_Round, _Client]:
        message = first[1]
        if message.WhichOneof("kind") != "hello" or not message.hello.token:
            raise _Refusal(
                Code.UNAUTHENTICATED, "the first message must be Hello with a session token"
            )
        try:
            claims = verify_token(self._secret, message.hello.token)
        except InvalidTokenError as exc:
            raise _Refusal(Code.UNAUTHENTICATED, str(exc)) from None
        if self._run_id is not None and claims.run_id != self._run_id:
            raise _Refusal(Code.UNAUTHENTICATED, f"token is for run {claims.run_id!r}")
        rnd = self._round
        if rnd is None or rnd.closed:
            raise _Refusal(Code.FAILED_PRECONDITION, "no round is open")
        if claims.round != rnd.round_id:
            raise _Refusal(
                Code.UNAUTHENTICATED,
                f"token is for round {claims.round}; round {rnd.round_id} is open",
            )
        client = rnd.clients.get(claims.node_id)
        if client is None or client.task != claims.task:
            raise _Refusal(
                Code.UNAUTHENTICATED,
                f"node {claims.node_id!r} with task {claims.task!r} is not in round {rnd.round_id}",
            )
        with rnd.cond:
            if client.state == "live":
                raise _Refusal(Code.ALREADY_EXISTS, f"node {client.node_id!r} already has a stream")
            if client.state == "dropped":
                reason = rnd.dropped.get(client.node_id, "")
                raise _Refusal(Code.FAILED_PRECONDITION, f"dropped from this round: {reason}")
            if client.state == "finished":
                raise _Refusal(Code.FAILED_PRECONDITION, "already finished this round")
            client.state = "live"
            client.events = events
        log.info("round %d: node %s (%s) connected", rnd.round_id, client.node_id, client.task)
        return rnd, client

    def _welcome(self, rnd: _Round, client: _Client) -> body_pb2.ServerMessage:
        return body_pb2.ServerMessage(
            step=-1,
            welcome=body_pb2.Welcome(
                round=rnd.round_id,
                node_id=client.node_id,
                task=client.task,
                mode=rnd.mode,
                train_body=rnd.train_body,
                embed_dim=self.limits.embed_dim,
                max_tokens=self.limits.max_tokens,
                max_batch=self.limits.max_batch,
                max_message_bytes=self.limits.max_bytes,
                pipeline_depth=rnd.pipeline_depth,
            ),
        )

    def _decode(self, message: Any, name: str) -> tuple[torch.Tensor, str]:
        try:
            wire = from_proto(message)
            return decode(wire, self.limits), wire.dtype
        except WireFormatError as exc:
            raise _Refusal(Code.INVALID_ARGUMENT, f"{name}: {exc}") from None

    def _handle(self, rnd: _Round, client: _Client, message: Any) -> body_pb2.ServerMessage | None:
        """One client message -> its reply now (async, evaluate) or None (sync: reply comes later)."""
        kind = message.WhichOneof("kind")
        if client.state != "live":
            raise _Refusal(Code.FAILED_PRECONDITION, f"{kind} after this node left the round")
        if kind == "done":
            self._finish(rnd, client)
            return None
        if kind == "evaluate":
            if not message.evaluate.HasField("tokens"):
                raise _Refusal(Code.INVALID_ARGUMENT, "evaluate without tokens")
            tokens, dtype = self._decode(message.evaluate.tokens, "evaluate tokens")
            output = self._compute(self.engine.evaluate, tokens)
            with rnd.cond:
                rnd.tokens_processed += tokens.shape[0] * tokens.shape[1]
            return _tensor_reply(-1, "output", output, dtype)
        if kind not in ("forward", "backward"):
            raise _Refusal(Code.INVALID_ARGUMENT, f"unexpected message {kind!r} after Hello")
        if rnd.pipeline_depth > 1:
            return self._pipelined_step(rnd, client, message)
        if kind == "forward":
            body, field_name = message.forward, "tokens"
        else:
            body, field_name = message.backward, "grad_output"
        if client.expect != kind:
            raise _Refusal(
                Code.FAILED_PRECONDITION,
                f"got {kind} for step {body.step} while waiting for {client.expect} "
                f"of step {client.next_step}",
            )
        if body.step != client.next_step:
            raise _Refusal(
                Code.FAILED_PRECONDITION,
                f"got {kind} for step {body.step}, expected {client.next_step}",
            )
        if not body.HasField(field_name):
            raise _Refusal(Code.INVALID_ARGUMENT, f"{kind} without {field_name}")
        tensor, dtype = self._decode(getattr(body, field_name), f"{kind} {field_name}")
        if kind == "forward":
            client.token_shape = tuple(tensor.shape)
        elif tuple(tensor.shape) != client.token_shape:
            raise _Refusal(
                Code.INVALID_ARGUMENT,
                f"grad_output shape {list(tensor.shape)} does not match the forward's "
                f"{list(client.token_shape)}",
            )
        if rnd.mode == "sync":
            client.expect = f"{kind}_reply"
            _SyncCoordinator.submit(rnd, client, tensor, dtype)
            return None
        return self._async_step(rnd, client, kind, tensor, dtype)

    def _async_step(
        self, rnd: _Round, client: _Client, kind: str, tensor: torch.Tensor, dtype: str
    ) -> body_pb2.ServerMessage:
        if kind == "forward":
            while not rnd.train_lock.acquire(timeout=0.2):
                if rnd.closed or client.state != "live":
                    raise _Refusal(Code.FAILED_PRECONDITION, "round closed while waiting")
            try:
                state, output = self._compute(self.engine.forward, tensor)
            except BaseException:
                rnd.train_lock.release()
                raise
            client.forward_state = state
            client.forward_deadline = time.monotonic() + rnd.step_deadline_s
            with rnd.cond:
                rnd.tokens_processed += tensor.shape[0] * tensor.shape[1]
            return _tensor_reply(client.next_step, "output", output, dtype)
        state, client.forward_state = client.forward_state, None
        assert state is not None
        try:
            (grad_tokens,) = self._compute(self.engine.backward, [state], [tensor], rnd.train_body)
        finally:
            rnd.train_lock.release()
        with rnd.cond:
            rnd.steps += 1
        return _tensor_reply(client.next_step, "grad_tokens", grad_tokens, dtype)

    def _pipelined_step(self, rnd: _Round, client: _Client, message: Any) -> body_pb2.ServerMessage:
        """Pipelined async: a Forward is answered without a graph and its tokens kept; a
        Backward recomputes that forward with the current weights, backpropagates, steps."""
        kind = message.WhichOneof("kind")
        if kind == "forward":
            step = message.forward.step
            if step != client.next_step:
                raise _Refusal(
                    Code.FAILED_PRECONDITION,
                    f"got forward for step {step}, expected {client.next_step}",
                )
            if len(client.in_flight) >= rnd.pipeline_depth:
                raise _Refusal(
                    Code.FAILED_PRECONDITION,
                    f"forward of step {step} would put more than {rnd.pipeline_depth} "
                    "micro-batches in flight",
                )
            if not message.forward.HasField("tokens"):
                raise _Refusal(Code.INVALID_ARGUMENT, "forward without tokens")
            tokens, dtype = self._decode(message.forward.tokens, "forward tokens")
            output = self._compute(self.engine.forward_detached, tokens)
            client.in_flight[step] = (tokens, time.monotonic() + rnd.step_deadline_s)
            client.next_step += 1
            with rnd.cond:
                rnd.tokens_processed += tokens.shape[0] * tokens.shape[1]
            return _tensor_reply(step, "output", output, dtype)
        step = message.backward.step
        if step != client.next_backward or step not in client.in_flight:
            raise _Refusal(
                Code.FAILED_PRECONDITION,
                f"got backward for step {step}, expected the backward of step "
                f"{client.next_backward}" + ("" if client.in_flight else " after its forward"),
            )
        if not message.backward.HasField("grad_output"):
            raise _Refusal(Code.INVALID_ARGUMENT, "backward without grad_output")
        grad, dtype = self._decode(message.backward.grad_output, "backward grad_output")
        tokens = client.in_flight[step][0]
        if grad.shape != tokens.shape:
            raise _Refusal(
                Code.INVALID_ARGUMENT,
                f"grad_output shape {list(grad.shape)} does not match the forward's "
                f"{list(tokens.shape)}",
            )
        grad_tokens = self._compute(self.engine.recompute_backward, tokens, grad, rnd.train_body)
        del client.in_flight[step]
        client.next_backward += 1
        with rnd.cond:
            rnd.steps += 1
            rnd.tokens_processed += tokens.shape[0] * tokens.shape[1]
        return _tensor_reply(step, "grad_tokens", grad_tokens, dtype)

    def _compute(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RoundClosedError:
            raise _Refusal(Code.FAILED_PRECONDITION, "the round is closed") from None
        except Exception as exc:  # a body failure is the server's fault, not the client's
            log.exception("body computation failed")
            raise _Refusal(Code.INTERNAL, f"body computation failed: {exc}") from None

    def _note_reply(self, rnd: _Round, client: _Client, reply: body_pb2.ServerMessage) -> None:
        if rnd.pipeline_depth > 1:  # _pipelined_step keeps its own books
            return
        kind = reply.WhichOneof("kind")
        if kind == "output" and reply.step >= 0:
            client.expect = "backward"
        elif kind == "grad_tokens":
            client.expect = "forward"
            client.next_step += 1

    def _finish(self, rnd: _Round, client: _Client) -> None:
        """Done: the client leaves the round between steps; sync steps stop waiting for it."""
        if client.in_flight:
            raise _Refusal(
                Code.FAILED_PRECONDITION,
                f"Done with steps {sorted(client.in_flight)} still in flight",
            )
        if client.expect != "forward":
            raise _Refusal(
                Code.FAILED_PRECONDITION,
                f"Done in the middle of step {client.next_step} (waiting for {client.expect})",
            )
        with rnd.cond:
            if client.state == "live":
                client.state = "finished"
                rnd.cond.notify_all()
                log.info("round %d: node %s finished", rnd.round_id, client.node_id)

    def _release(self, rnd: _Round, client: _Client) -> None:
        if client.forward_state is not None:  # async: never leave the train lock held
            client.forward_state = None
            rnd.train_lock.release()
        client.in_flight.clear()  # pipelined: the kept tokens only; the body is untouched
        with rnd.cond:
            if client.state == "live":
                rnd.drop(
                    client,
                    Code.CANCELLED,
                    "stream closed by the transport (connection lost or a message over the gRPC size limit)",
                )


class _SyncCoordinator:
    """Sync mode: one thread per round that runs each step on the concatenated batch."""

    def __init__(self, rnd: _Round, engine: BodyEngine):
        self.rnd = rnd
        self.engine = engine

    @staticmethod
    def submit(rnd: _Round, client: _Client, tensor: torch.Tensor, dtype: str) -> None:
        with rnd.cond:
            rnd.submitted[client.node_id] = (tensor, dtype)
            if rnd.first_arrival is None:
                rnd.first_arrival = time.monotonic()
            rnd.cond.notify_all()

    def run(self) -> None:
        rnd = self.rnd
        while True:
            with rnd.cond:
                batch = self._wait_for_phase()
                if batch is None:
                    return
                phase = rnd.phase
            try:
                if phase == "forward":
                    self._forward(batch)
                else:
                    self._backward(batch)
            except RoundClosedError:  # close_round() won the race; it drops everyone
                return
            except Exception as exc:
                log.exception("sync step failed")
                with rnd.cond:
                    for node in batch:
                        rnd.drop(rnd.clients[node], Code.INTERNAL, f"body step failed: {exc}")
                    rnd.phase, rnd.context = "forward", None

    def _expected(self) -> set[str]:
        rnd = self.rnd
        if rnd.phase == "forward":
            return {n for n, c in rnd.clients.items() if c.state in ("waiting", "live")}
        assert rnd.context is not None
        return {n for n in rnd.context.nodes if rnd.clients[n].state == "live"}

    def _wait_for_phase(self) -> dict[str, tuple[torch.Tensor, str]] | None:
        """Block (under cond) until every expected client submitted or the deadline passed."""
        rnd = self.rnd
        while not rnd.closed:
            expected = self._expected()
            live_submitted = {n for n in rnd.submitted if rnd.clients[n].state == "live"}
            if (live_submitted and expected <= live_submitted) or (
                rnd.phase == "backward" and not expected
            ):
                batch = {n: rnd.submitted[n] for n in live_submitted}
                rnd.submitted.clear()
                rnd.first_arrival = None
                return batch
            if rnd.first_arrival is None:
                rnd.cond.wait()
                continue
            remaining = rnd.first_arrival + rnd.step_deadline_s - time.monotonic()
            if remaining > 0:
                rnd.cond.wait(remaining)
                continue
            for node in sorted(expected - live_submitted):
                rnd.drop(
                    rnd.clients[node],
                    Code.DEADLINE_EXCEEDED,
                    f"missed the {rnd.step_deadline_s:g} s deadline for the {rnd.phase} "
                    f"of step {rnd.step}",
                )
        return None

    def _forward(self, batch: dict[str, tuple[torch.Tensor, str]]) -> None:
        """One forward on the concatenation of the step's tokens (one per distinct N)."""
        rnd = self.rnd
        by_count: dict[int, list[str]] = {}
        # Participants' order, not arrival or node-id order: node ids change between runs, and
        # float sums in another order would make a resumed run drift from an uninterrupted one.
        for node in (n for n in rnd.clients if n in batch):
            by_count.setdefault(batch[node][0].shape[1], []).append(node)
        groups, parts = [], {}
        for count in sorted(by_count):
            nodes = by_count[count]
            sizes = [batch[n][0].shape[0] for n in nodes]
            state, output = self.engine.forward(torch.cat([batch[n][0] for n in nodes]))
            groups.append(_Group(nodes, sizes, state))
            parts.update(zip(nodes, output.split(sizes), strict=True))
        replies = self._encode_replies("output", parts, batch)
        with rnd.cond:
            rnd.tokens_processed += sum(t.shape[0] * t.shape[1] for t, _ in batch.values())
            rnd.context = _StepContext(groups)
            rnd.phase = "backward"
            self._publish(replies)

    def _backward(self, batch: dict[str, tuple[torch.Tensor, str]]) -> None:
        """One backward over the step's forwards and one optimizer step; dropped clients' slices
        get zero gradient."""
        rnd = self.rnd
        context = rnd.context
        assert context is not None
        replies = {}
        if batch:
            grads = []
            for group in context.groups:
                shape = group.state.outputs.shape[1:]
                grads.append(
                    torch.cat(
                        [
                            batch[n][0] if n in batch else torch.zeros(size, *shape)
                            for n, size in zip(group.nodes, group.sizes, strict=True)
                        ]
                    )
                )
            states = [group.state for group in context.groups]
            grad_tokens = self.engine.backward(states, grads, rnd.train_body)
            parts = {}
            for group, grad in zip(context.groups, grad_tokens, strict=True):
                parts.update(zip(group.nodes, grad.split(group.sizes), strict=True))
            replies = self._encode_replies("grad_tokens", parts, batch)
        with rnd.cond:
            if batch:
                rnd.steps += 1
            rnd.step += 1
            rnd.phase, rnd.context = "forward", None
            self._publish(replies)

    def _encode_replies(
        self,
        kind: str,
        parts: dict[str, torch.Tensor],
        batch: dict[str, tuple[torch.Tensor, str]],
    ) -> dict[str, body_pb2.ServerMessage | _Refusal]:
        replies: dict[str, body_pb2.ServerMessage | _Refusal] = {}
        for node in batch:
            try:
                replies[node] = _tensor_reply(self.rnd.step, kind, parts[node], batch[node][1])
            except _Refusal as refusal:  # only this client's reply is lost
                replies[node] = refusal
        return replies

    def _publish(self, replies: dict[str, body_pb2.ServerMessage | _Refusal]) -> None:
        """Hand each client its reply, or drop it if its reply could not be encoded (under cond)."""
        for node, reply in replies.items():
            client = self.rnd.clients[node]
            if isinstance(reply, _Refusal):
                self.rnd.drop(client, reply.code, reply.reason)
            elif client.state == "live" and client.events is not None:
                client.events.put(("reply", reply))


class _Servicer(body_pb2_grpc.BodyServiceServicer):
    def __init__(self, service: BodyService):
        self._service = service

    def Session(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._service.session(request_iterator, context)


def _pump(requests: Any, events: queue.Queue[tuple[str, Any]]) -> None:
    """Move a stream's incoming messages onto its event queue (own thread, so waits can time out)."""
    try:
        for message in requests:
            events.put(("msg", message))
        events.put(("end", None))
    except Exception as exc:  # grpc raises when the client cancels or the connection breaks
        events.put(("broken", f"{type(exc).__name__}: {exc}"))


def _tensor_reply(step: int, kind: str, tensor: torch.Tensor, dtype: str) -> body_pb2.ServerMessage:
    """A reply carrying `tensor` in the client's wire dtype (`_Refusal` if it cannot be encoded)."""
    try:
        wire = encode(tensor, dtype)
    except WireFormatError as exc:
        raise _Refusal(Code.OUT_OF_RANGE, f"the {kind} cannot be sent as {dtype}: {exc}") from None
    return body_pb2.ServerMessage(step=step, **{kind: to_proto(wire)})
