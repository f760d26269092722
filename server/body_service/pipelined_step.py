"""Pipelined async step mode (`pipeline_depth` K > 1): up to K Forwards ahead of their Backwards.

A client may send up to K Forwards before their Backwards, to hide the network's round trip.
No lock spans a step: a Forward is answered at once from the current weights without keeping a
graph (its tokens are kept), and its Backward RECOMPUTES the forward with the weights current
then, backpropagates the client's gradient and takes the AdamW step, atomically
(`BodyEngine.recompute_backward`). The body output a client's tail saw is thus up to K-1 of its
own steps (plus other clients' steps in between) older than the weights its gradient is applied
to: bounded staleness. Each Backward is due `step_deadline_s` after its Forward.
"""

from __future__ import annotations

import time
from typing import Any

from festa.server.body_service.engine import BodyEngine
from festa.server.body_service.round_state import (
    Code,
    Refusal,
    Round,
    RoundClient,
    compute,
    decode_tensor,
    tensor_reply,
)
from festa.shared.wire import TokenLimits
from festa.shared.wire.proto import body_pb2


class PipelinedRecompute:
    """One round's pipelined steps: kept tokens per step in flight, recomputed at the Backward."""

    def __init__(self, rnd: Round, engine: BodyEngine, limits: TokenLimits):
        self.rnd = rnd
        self.engine = engine
        self.limits = limits

    def step(self, client: RoundClient, message: Any) -> body_pb2.ServerMessage:
        if message.WhichOneof("kind") == "forward":
            return self._forward(client, message.forward)
        return self._backward(client, message.backward)

    def _forward(self, client: RoundClient, forward: Any) -> body_pb2.ServerMessage:
        rnd, step = self.rnd, forward.step
        if step != client.next_step:
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"got forward for step {step}, expected {client.next_step}",
            )
        if len(client.in_flight) >= rnd.pipeline_depth:
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"forward of step {step} would put more than {rnd.pipeline_depth} "
                "micro-batches in flight",
            )
        if not forward.HasField("tokens"):
            raise Refusal(Code.INVALID_ARGUMENT, "forward without tokens")
        tokens, dtype = decode_tensor(forward.tokens, "forward tokens", self.limits)
        output = compute(self.engine.forward_detached, tokens)
        client.in_flight[step] = (tokens, time.monotonic() + rnd.step_deadline_s)
        client.next_step += 1
        rnd.book(tokens=tokens.shape[0] * tokens.shape[1])
        return tensor_reply(step, "output", output, dtype)

    def _backward(self, client: RoundClient, backward: Any) -> body_pb2.ServerMessage:
        rnd, step = self.rnd, backward.step
        if step != client.next_backward or step not in client.in_flight:
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"got backward for step {step}, expected the backward of step "
                f"{client.next_backward}" + ("" if client.in_flight else " after its forward"),
            )
        if not backward.HasField("grad_output"):
            raise Refusal(Code.INVALID_ARGUMENT, "backward without grad_output")
        grad, dtype = decode_tensor(backward.grad_output, "backward grad_output", self.limits)
        tokens = client.in_flight[step][0]
        if grad.shape != tokens.shape:
            raise Refusal(
                Code.INVALID_ARGUMENT,
                f"grad_output shape {list(grad.shape)} does not match the forward's "
                f"{list(tokens.shape)}",
            )
        grad_tokens = compute(self.engine.recompute_backward, tokens, grad, rnd.train_body)
        del client.in_flight[step]
        client.next_backward += 1
        rnd.book(tokens=tokens.shape[0] * tokens.shape[1], steps=1)
        return tensor_reply(step, "grad_tokens", grad_tokens, dtype)

    def deadline(self, client: RoundClient) -> tuple[float, str] | None:
        if not client.in_flight:
            return None
        step = min(client.in_flight)
        return (
            client.in_flight[step][1],
            f"no backward within {self.rnd.step_deadline_s:g} s of the forward of step {step}",
        )

    def note_reply(self, client: RoundClient, reply: body_pb2.ServerMessage) -> None:
        pass  # `step` keeps the pipelined books itself

    def release(self, client: RoundClient) -> None:
        client.in_flight.clear()  # the kept tokens only; the body is untouched

    def close(self) -> None:
        pass
