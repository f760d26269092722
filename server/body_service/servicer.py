"""The gRPC handler of one client stream: admission, authentication, and the pump that answers
Forward/Backward/Evaluate in order (the step itself is the round's mode: `sync_step`,
`async_step` or `pipelined_step`).

Admission: a stream that has not authenticated never holds a slot a legitimate client needs.
The grpc server runs one thread per open stream, so a slot is a thread. Two separate budgets:

- **authenticated streams** (`max_streams`): a stream gets one of these only once its session
  token checks out. `RemoteBodyLink` sends the token in the call metadata
  (`SESSION_TOKEN_METADATA`), so the service verifies it the moment the stream opens, before it
  waits for anything: a bad token is refused at once and holds nothing. Its Hello must repeat
  the same token.
- **streams waiting for a Hello** (`max_pending`): a stream that opens without a metadata token
  may still authenticate with its Hello within `auth_timeout_s`, but only `max_pending` such
  streams wait at a time; more are refused at once with RESOURCE_EXHAUSTED.

So idle unauthenticated streams can fill only the pending budget, never the authenticated one:
whatever number a peer holds open, a client whose token is valid is admitted (the thread pool
and gRPC's own concurrency limit are sized for both budgets plus headroom for the refusals).
A short Hello timeout alone would leave the port lockable between timeouts, and a per-peer
limit does not help on loopback, where every client shares one address. Deployments add
mutual TLS (`TlsFiles.client_ca`): a peer without a certificate from the deployment's CA does
not get past the handshake. The insecure loopback simulation and the TLS deployment run this
same code.

Refusals end the offending stream with a gRPC status and a reason, are logged, and never touch
the body or other clients' streams: UNAUTHENTICATED (token), INVALID_ARGUMENT (malformed
tensor), FAILED_PRECONDITION (protocol order, no open round), DEADLINE_EXCEEDED (missed step
deadline, no Hello in time, stream time), ALREADY_EXISTS (second stream for the same node),
RESOURCE_EXHAUSTED (no slot).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from festa.server.body_service.engine import BodyEngine
from festa.server.body_service.round_state import (
    ClientState,
    Code,
    Event,
    Expect,
    Refusal,
    Round,
    RoundClient,
    compute,
    decode_tensor,
    tensor_reply,
)
from festa.server.body_service.tokens import InvalidTokenError, verify_token
from festa.shared.wire import SESSION_TOKEN_METADATA, TokenLimits
from festa.shared.wire.proto import body_pb2, body_pb2_grpc

log = logging.getLogger("festa.body_service")

Events = queue.Queue[tuple[Event, Any]]


class Slots:
    """The two admission budgets: authenticated streams and streams waiting for a Hello."""

    def __init__(self, max_streams: int, max_pending: int):
        self._limits = {"authenticated": max_streams, "pending": max_pending}
        self._held = {"authenticated": 0, "pending": 0}
        self._lock = threading.Lock()

    def in_use(self) -> dict[str, int]:
        """Slots held now, per budget ("authenticated", "pending")."""
        with self._lock:
            return dict(self._held)

    @contextlib.contextmanager
    def hold(self, budget: str) -> Iterator[None]:
        """Hold one slot of `budget` for the block, or RESOURCE_EXHAUSTED when none is free."""
        with self._lock:
            if self._held[budget] >= self._limits[budget]:
                raise Refusal(
                    Code.RESOURCE_EXHAUSTED,
                    f"all {self._limits[budget]} {budget} stream slots are taken",
                )
            self._held[budget] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[budget] -= 1


class Servicer(body_pb2_grpc.BodyServiceServicer):
    """`Session`: one stream per node per round, admitted, authenticated, then pumped."""

    def __init__(
        self,
        *,
        current_round: Callable[[], Round | None],
        engine: BodyEngine,
        limits: TokenLimits,
        secret: bytes,
        run_id: str | None,
        slots: Slots,
        max_stream_s: float,
        auth_timeout_s: float,
    ):
        self._current_round = current_round
        self._engine = engine
        self._limits = limits
        self._secret = secret
        self._run_id = run_id
        self._slots = slots
        self._max_stream_s = max_stream_s
        self._auth_timeout_s = auth_timeout_s

    def Session(self, requests: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Authenticate, then answer Forward/Backward/Evaluate in order."""
        started = time.monotonic()
        rnd: Round | None = None
        client: RoundClient | None = None
        try:
            with contextlib.ExitStack() as held, contextlib.ExitStack() as pending:
                metadata_token = dict(context.invocation_metadata()).get(SESSION_TOKEN_METADATA)
                if metadata_token is not None:
                    self._claims(metadata_token)  # refused here, before any wait
                    held.enter_context(self._slots.hold("authenticated"))
                else:
                    pending.enter_context(self._slots.hold("pending"))
                events: Events = queue.Queue()
                threading.Thread(target=_pump, args=(requests, events), daemon=True).start()
                context.add_callback(lambda: events.put((Event.BROKEN, "the stream was closed")))
                auth_deadline = (started + self._auth_timeout_s, "no Hello within the time limit")
                first = self._next_event(events, auth_deadline, "authentication")[1]
                token = _hello_token(first)
                if metadata_token is None:
                    pending.close()  # trade the pending slot for an authenticated one
                    self._claims(token)
                    held.enter_context(self._slots.hold("authenticated"))
                elif token != metadata_token:
                    raise Refusal(Code.UNAUTHENTICATED, "the Hello token differs from the stream's")
                rnd, client = self._admit(token, events)
                client.bytes_in += first.ByteSize()
                yield from self._pump_replies(rnd, client, events, started)
        except Refusal as refusal:
            who = client.node_id if client else context.peer()
            log.warning("body service refused %s: %s: %s", who, refusal.code.name, refusal.reason)
            if rnd is not None and client is not None:
                with rnd.cond:
                    rnd.drop(client, refusal.code, refusal.reason)
            context.abort(refusal.code, refusal.reason)
        finally:
            if rnd is not None and client is not None:
                self._release(rnd, client)

    def _pump_replies(
        self, rnd: Round, client: RoundClient, events: Events, started: float
    ) -> Iterator[body_pb2.ServerMessage]:
        welcome = self._welcome(rnd, client)
        client.bytes_out += welcome.ByteSize()
        yield welcome
        assert rnd.stepper is not None
        while True:
            kind, item = self._next_event(events, self._deadline(rnd, client, started))
            if kind is Event.MESSAGE:
                client.bytes_in += item.ByteSize()
                reply = self._handle(rnd, client, item)
            elif kind is Event.REPLY:
                reply = item
            elif kind is Event.DROP:
                raise Refusal(*item)
            elif kind is Event.END:
                if client.state is not ClientState.FINISHED:
                    raise Refusal(
                        Code.CANCELLED,
                        f"stream ended without Done at step {client.next_step} "
                        "(client vanished or the transport cut it)",
                    )
                return
            else:  # broken
                raise Refusal(Code.CANCELLED, f"stream broke: {item}")
            if reply is not None:
                rnd.stepper.note_reply(client, reply)
                client.bytes_out += reply.ByteSize()
                yield reply

    def _next_event(
        self, events: Events, deadline: tuple[float, str], what: str = ""
    ) -> tuple[Event, Any]:
        """The stream's next event, or DEADLINE_EXCEEDED with the deadline's reason."""
        when, reason = deadline
        try:
            timeout = when - time.monotonic()
            if timeout <= 0:
                raise queue.Empty
            event = events.get(timeout=timeout)
        except queue.Empty:
            raise Refusal(Code.DEADLINE_EXCEEDED, reason) from None
        if what and event[0] is not Event.MESSAGE:
            raise Refusal(Code.UNAUTHENTICATED, f"stream ended before {what}")
        return event

    def _deadline(self, rnd: Round, client: RoundClient, started: float) -> tuple[float, str]:
        deadline = (started + self._max_stream_s, f"stream exceeded {self._max_stream_s:g} s")
        assert rnd.stepper is not None
        step_deadline = rnd.stepper.deadline(client)
        return deadline if step_deadline is None else min(deadline, step_deadline)

    # ---- admission -------------------------------------------------------------------------

    def _claims(self, token: str) -> tuple[Round, RoundClient]:
        """The open round and the participant `token` names; UNAUTHENTICATED if it names none."""
        try:
            claims = verify_token(self._secret, token)
        except InvalidTokenError as exc:
            raise Refusal(Code.UNAUTHENTICATED, str(exc)) from None
        if self._run_id is not None and claims.run_id != self._run_id:
            raise Refusal(Code.UNAUTHENTICATED, f"token is for run {claims.run_id!r}")
        rnd = self._current_round()
        if rnd is None or rnd.closed:
            raise Refusal(Code.FAILED_PRECONDITION, "no round is open")
        if claims.round != rnd.round_id:
            raise Refusal(
                Code.UNAUTHENTICATED,
                f"token is for round {claims.round}; round {rnd.round_id} is open",
            )
        client = rnd.clients.get(claims.node_id)
        if client is None or client.task != claims.task:
            raise Refusal(
                Code.UNAUTHENTICATED,
                f"node {claims.node_id!r} with task {claims.task!r} is not in round {rnd.round_id}",
            )
        return rnd, client

    def _admit(self, token: str, events: Events) -> tuple[Round, RoundClient]:
        """WAITING -> LIVE for the participant `token` names; refused in any other state."""
        rnd, client = self._claims(token)
        with rnd.cond:
            if client.state is ClientState.LIVE:
                raise Refusal(Code.ALREADY_EXISTS, f"node {client.node_id!r} already has a stream")
            if client.state is ClientState.DROPPED:
                reason = rnd.dropped.get(client.node_id, "")
                raise Refusal(Code.FAILED_PRECONDITION, f"dropped from this round: {reason}")
            if client.state is ClientState.FINISHED:
                raise Refusal(Code.FAILED_PRECONDITION, "already finished this round")
            client.state = ClientState.LIVE
            client.events = events
        log.info("round %d: node %s (%s) connected", rnd.round_id, client.node_id, client.task)
        return rnd, client

    def _welcome(self, rnd: Round, client: RoundClient) -> body_pb2.ServerMessage:
        return body_pb2.ServerMessage(
            step=-1,
            welcome=body_pb2.Welcome(
                round=rnd.round_id,
                node_id=client.node_id,
                task=client.task,
                mode=rnd.mode,
                train_body=rnd.train_body,
                embed_dim=self._limits.embed_dim,
                max_tokens=self._limits.max_tokens,
                max_batch=self._limits.max_batch,
                max_message_bytes=self._limits.max_bytes,
                pipeline_depth=rnd.pipeline_depth,
            ),
        )

    # ---- messages after the Hello ----------------------------------------------------------

    def _handle(
        self, rnd: Round, client: RoundClient, message: Any
    ) -> body_pb2.ServerMessage | None:
        """One client message -> its reply now (async, evaluate) or None (sync: reply comes later)."""
        kind = message.WhichOneof("kind")
        if client.state is not ClientState.LIVE:
            raise Refusal(Code.FAILED_PRECONDITION, f"{kind} after this node left the round")
        if kind == "done":
            self._finish(rnd, client)
            return None
        if kind == "evaluate":
            if not message.evaluate.HasField("tokens"):
                raise Refusal(Code.INVALID_ARGUMENT, "evaluate without tokens")
            tokens, dtype = decode_tensor(message.evaluate.tokens, "evaluate tokens", self._limits)
            output = compute(self._engine.evaluate, tokens)
            rnd.book(tokens=tokens.shape[0] * tokens.shape[1])
            return tensor_reply(-1, "output", output, dtype)
        if kind not in ("forward", "backward"):
            raise Refusal(Code.INVALID_ARGUMENT, f"unexpected message {kind!r} after Hello")
        assert rnd.stepper is not None
        return rnd.stepper.step(client, message)

    def _finish(self, rnd: Round, client: RoundClient) -> None:
        """Done: the client leaves the round between steps; sync steps stop waiting for it."""
        if client.in_flight:
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"Done with steps {sorted(client.in_flight)} still in flight",
            )
        if client.expect is not Expect.FORWARD:
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"Done in the middle of step {client.next_step} "
                f"(waiting for {client.expect.value})",
            )
        with rnd.cond:
            if client.state is ClientState.LIVE:
                client.state = ClientState.FINISHED
                rnd.cond.notify_all()
                log.info("round %d: node %s finished", rnd.round_id, client.node_id)

    def _release(self, rnd: Round, client: RoundClient) -> None:
        assert rnd.stepper is not None
        rnd.stepper.release(client)
        with rnd.cond:
            if client.state is ClientState.LIVE:
                rnd.drop(
                    client,
                    Code.CANCELLED,
                    "stream closed by the transport (connection lost or a message over the "
                    "gRPC size limit)",
                )


def _hello_token(message: Any) -> str:
    if message.WhichOneof("kind") != "hello" or not message.hello.token:
        raise Refusal(Code.UNAUTHENTICATED, "the first message must be Hello with a session token")
    return str(message.hello.token)


def _pump(requests: Any, events: Events) -> None:
    """Move a stream's incoming messages onto its event queue (own thread, so waits can time out)."""
    try:
        for message in requests:
            events.put((Event.MESSAGE, message))
        events.put((Event.END, None))
    except Exception as exc:  # grpc raises when the client cancels or the connection breaks
        events.put((Event.BROKEN, f"{type(exc).__name__}: {exc}"))
