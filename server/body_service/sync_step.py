"""Sync step mode (the default, DESIGN §2): one barrier per (step, phase) across the round.

For step s the barrier waits, up to `step_deadline_s` after the first arrival, for the forward
of every live participant, runs ONE forward on their concatenation (clients in participants'
order; one forward per distinct token count N) and returns each slice; then it gathers every
gradient, runs one backward and, when the body trains, one AdamW step. The body's gradient is
the sum of the clients' gradients (each client's loss already averages its own batch). A
participant that misses a deadline is dropped for the rest of the round and the others go on;
a dropped client's slice of a step's backward gets a zero gradient.

Streams hand their Forward/Backward to the barrier (`step` returns None); one coordinator
thread per round computes and puts each client's reply on its stream's event queue.
Pipelining (K > 1) is refused at `open_round`: the barrier would need an end-of-forwards
signal per client and a fixed cross-client order of forwards and backwards (docs/WAN.md).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from festa.server.body_service.engine import BodyEngine, ForwardState, RoundClosedError
from festa.server.body_service.round_state import (
    ClientState,
    Code,
    Event,
    Expect,
    Refusal,
    Round,
    RoundClient,
    advance_lockstep,
    read_lockstep_message,
    tensor_reply,
)
from festa.shared.wire import TokenLimits
from festa.shared.wire.proto import body_pb2

log = logging.getLogger("festa.body_service")

Batch = dict[str, tuple[torch.Tensor, str]]  # node_id -> (tensor [B, N, D], wire dtype)


@dataclass
class _Group:
    """One concatenated forward (clients with the same token count N)."""

    nodes: list[str]
    sizes: list[int]
    state: ForwardState


class SyncBarrier:
    """One round's sync steps: the barrier's books and the coordinator thread that runs them."""

    def __init__(self, rnd: Round, engine: BodyEngine, limits: TokenLimits):
        self.rnd = rnd
        self.engine = engine
        self.limits = limits
        # all under rnd.cond
        self.step_index = 0
        self.phase: Literal["forward", "backward"] = "forward"
        self.submitted: Batch = {}
        self.first_arrival: float | None = None
        self.groups: list[_Group] | None = None  # the step's forwards, waiting for gradients
        self._thread = threading.Thread(
            target=self._run, name=f"body-sync-round-{rnd.round_id}", daemon=True
        )
        self._thread.start()

    # ---- the stream's side -----------------------------------------------------------------

    def step(self, client: RoundClient, message: Any) -> None:
        kind, tensor, dtype = read_lockstep_message(client, message, self.limits)
        client.expect = Expect.FORWARD_REPLY if kind == "forward" else Expect.BACKWARD_REPLY
        with self.rnd.cond:
            self.submitted[client.node_id] = (tensor, dtype)
            if self.first_arrival is None:
                self.first_arrival = time.monotonic()
            self.rnd.cond.notify_all()

    def deadline(self, client: RoundClient) -> tuple[float, str] | None:
        return None  # the coordinator enforces the step deadline for everyone

    def note_reply(self, client: RoundClient, reply: body_pb2.ServerMessage) -> None:
        advance_lockstep(client, reply)

    def release(self, client: RoundClient) -> None:
        pass

    def close(self) -> None:
        self._thread.join()

    # ---- the coordinator -------------------------------------------------------------------

    def _run(self) -> None:
        rnd = self.rnd
        while True:
            with rnd.cond:
                batch = self._wait_for_phase()
                if batch is None:
                    return
                phase = self.phase
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
                    self.phase, self.groups = "forward", None

    def _expected(self) -> set[str]:
        rnd = self.rnd
        if self.phase == "forward":
            return {
                n
                for n, c in rnd.clients.items()
                if c.state in (ClientState.WAITING, ClientState.LIVE)
            }
        assert self.groups is not None
        return {
            n
            for group in self.groups
            for n in group.nodes
            if rnd.clients[n].state is ClientState.LIVE
        }

    def _wait_for_phase(self) -> Batch | None:
        """Block (under cond) until every expected client submitted or the deadline passed."""
        rnd = self.rnd
        while not rnd.closed:
            expected = self._expected()
            live_submitted = {n for n in self.submitted if rnd.clients[n].state is ClientState.LIVE}
            if (live_submitted and expected <= live_submitted) or (
                self.phase == "backward" and not expected
            ):
                batch = {n: self.submitted[n] for n in live_submitted}
                self.submitted.clear()
                self.first_arrival = None
                return batch
            if self.first_arrival is None:
                rnd.cond.wait()
                continue
            remaining = self.first_arrival + rnd.step_deadline_s - time.monotonic()
            if remaining > 0:
                rnd.cond.wait(remaining)
                continue
            for node in sorted(expected - live_submitted):
                rnd.drop(
                    rnd.clients[node],
                    Code.DEADLINE_EXCEEDED,
                    f"missed the {rnd.step_deadline_s:g} s deadline for the {self.phase} "
                    f"of step {self.step_index}",
                )
        return None

    def _forward(self, batch: Batch) -> None:
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
            self.groups = groups
            self.phase = "backward"
            self._publish(replies)

    def _backward(self, batch: Batch) -> None:
        """One backward over the step's forwards and one optimizer step; dropped clients' slices
        get zero gradient."""
        rnd = self.rnd
        groups = self.groups
        assert groups is not None
        replies = {}
        if batch:
            grads = []
            for group in groups:
                shape = group.state.outputs.shape[1:]
                grads.append(
                    torch.cat(
                        [
                            batch[n][0] if n in batch else torch.zeros(size, *shape)
                            for n, size in zip(group.nodes, group.sizes, strict=True)
                        ]
                    )
                )
            states = [group.state for group in groups]
            grad_tokens = self.engine.backward(states, grads, rnd.train_body)
            parts = {}
            for group, grad in zip(groups, grad_tokens, strict=True):
                parts.update(zip(group.nodes, grad.split(group.sizes), strict=True))
            replies = self._encode_replies("grad_tokens", parts, batch)
        with rnd.cond:
            if batch:
                rnd.steps += 1
            self.step_index += 1
            self.phase, self.groups = "forward", None
            self._publish(replies)

    def _encode_replies(
        self, kind: str, parts: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, body_pb2.ServerMessage | Refusal]:
        replies: dict[str, body_pb2.ServerMessage | Refusal] = {}
        for node in batch:
            try:
                replies[node] = tensor_reply(self.step_index, kind, parts[node], batch[node][1])
            except Refusal as refusal:  # only this client's reply is lost
                replies[node] = refusal
        return replies

    def _publish(self, replies: dict[str, body_pb2.ServerMessage | Refusal]) -> None:
        """Hand each client its reply, or drop it if its reply could not be encoded (under cond)."""
        for node, reply in replies.items():
            client = self.rnd.clients[node]
            if isinstance(reply, Refusal):
                self.rnd.drop(client, reply.code, reply.reason)
            elif client.state is ClientState.LIVE and client.events is not None:
                client.events.put((Event.REPLY, reply))
