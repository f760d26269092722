"""Pipelined split training: K micro-batches in flight per client, to hide the network's RTT.

With the plain FeSTA step (`split.split_train_step`) each batch costs two round trips to the
body service (forward, then backward) during which the client and, in async mode, the body
wait. Over a WAN (20-80 ms RTT) that latency dominates a round. Here a client keeps up to
`depth` = K micro-batches *in flight*: a micro-batch is in flight from the moment its Forward
is sent until its token gradient has come back and been applied to the head.

One client's loop (`split_train_pipelined`), driven by the replies in the order they arrive:

- while fewer than K micro-batches are in flight: head forward (no graph kept) on the next
  batch, send Forward(s);
- on the body output of step s: tail forward, loss, tail backward, **tail optimizer step**,
  send Backward(s) with the gradient w.r.t. the body output;
- on the token gradient of step s: **recompute** the head forward of step s with the current
  head weights, backpropagate the token gradient, **head optimizer step**; s leaves the flight.

The body side (`LocalPipelinedBodyLink` here; the body service in async mode with
`pipeline_depth` K over gRPC) processes the client's messages in the order they were sent: a
Forward is answered from the current weights without keeping a graph, a Backward recomputes
the forward with the weights current then, backpropagates and takes one optimizer step.

Recomputation, not a kept graph, because every optimizer step between a micro-batch's forward
and its backward changes the weights in place, which autograd refuses on a graph that saved
them. (Weight stashing, as in PipeDream, would keep K copies of the weights instead.) It costs
one extra body forward per step on the server and one extra head forward per step on the client.

Bounded staleness, in the client's own steps: Forward(s) is sent only once step s-K has left
the flight, so the head that produced step s's tokens and the body that produced its output
include every update up to step s-K; they are applied at step s to weights that include every
update up to s-1. So gradients are computed at weights at most K-1 steps newer than the ones
the tail's loss saw (in async mode, other clients' body steps interleave as well). The tail has
no staleness (it runs and steps on arrival). K = 1 is the plain step: no staleness, the same
numbers as `split_train_step` up to float rounding (the head and tail step separately, which
AdamW, being per-parameter, does not notice).

The body's learning rate. With C clients the shared body takes up to C x K optimizer steps
whose gradients were all computed before any of them shows in an output a tail sees, and the
per-step losses jump right after the first K steps of a round (bench_wan). A pipelined round
can run the body at lr x `staleness_lr_scale(K, rule)` (`FederationConfig.pipeline_body_lr`:
"constant" = lr, the default, "sqrt" = lr / sqrt(K), "linear" = lr / K; the body service's
`open_round(lr_scale=...)`; with `LocalPipelinedBodyLink`, give it an optimizer at that rate).
Measured over 3-5 runs, lr / K smooths the segmentation loss curve but does not raise the
final Dice beyond the run-to-run spread of async training, so the default stays lr. Also
measured, none a clear gain: head/tail/body lr / sqrt(K), weight stashing for the head (the
exact gradient of the stashed weights: no difference from recomputation), a linear warm-up over
each round's first K steps, body AdamW without momentum; see docs/WAN.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from festa.shared.model.permutation import IdentityPermutation, TokenPermutation
from festa.shared.model.split import LossFn, SplitStepResult


def staleness_lr_scale(depth: int, rule: str) -> float:
    """Body learning-rate factor for pipelined rounds of depth K: 1, 1/sqrt(K) or 1/K for
    `rule` "constant", "sqrt" or "linear" (`FederationConfig.pipeline_body_lr`); 1 at K = 1."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    factors = {"constant": 1.0, "sqrt": depth**-0.5, "linear": 1.0 / depth}
    if rule not in factors:
        raise ValueError(f"unknown pipeline body learning-rate rule {rule!r}")
    return factors[rule]


class PipelinedBodyLink(Protocol):
    """A body that takes Forwards ahead of their Backwards and answers in the order sent."""

    def send_forward(self, step: int, tokens: torch.Tensor) -> None:
        """Queue step `step`'s tokens `[B, N, D]` (no autograd history); returns at once."""
        ...

    def send_backward(self, step: int, grad_output: torch.Tensor) -> None:
        """Queue the grad w.r.t. step `step`'s body output `[B, N, D]`; returns at once."""
        ...

    def receive(self) -> tuple[str, int, torch.Tensor]:
        """Next reply in send order: ("output", step, body output) or ("grad_tokens", step,
        grad w.r.t. that step's tokens), each `[B, N, D]`."""
        ...


class PipelineProtocolError(RuntimeError):
    """The body answered a step that is not in flight, or with an unexpected kind."""


class LocalPipelinedBodyLink:
    """The reference body side of pipelining, in process: the body and its optimizer, each
    message handled in send order (a Forward from the current weights, a Backward by
    recomputing the forward with the weights current then, backward, one optimizer step)."""

    def __init__(self, body: nn.Module, optimizer: torch.optim.Optimizer | None):
        self.body = body
        self.optimizer = optimizer
        self._sent: deque[tuple[str, int, torch.Tensor]] = deque()
        self._tokens: dict[int, torch.Tensor] = {}

    def send_forward(self, step: int, tokens: torch.Tensor) -> None:
        self._sent.append(("forward", step, tokens.detach().clone()))

    def send_backward(self, step: int, grad_output: torch.Tensor) -> None:
        self._sent.append(("backward", step, grad_output.detach().clone()))

    def receive(self) -> tuple[str, int, torch.Tensor]:
        if not self._sent:
            raise PipelineProtocolError("receive() with nothing sent")
        kind, step, tensor = self._sent.popleft()
        if kind == "forward":
            self._tokens[step] = tensor
            with torch.no_grad():
                return "output", step, self.body(tensor)
        inputs = self._tokens.pop(step).requires_grad_(True)
        self.body(inputs).backward(tensor)
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        assert inputs.grad is not None
        return "grad_tokens", step, inputs.grad


@dataclass
class _InFlight:
    batch: dict[str, Any]
    perm: TokenPermutation | IdentityPermutation


def split_train_pipelined(
    head: nn.Module,
    tail: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[dict[str, Any]],
    link: PipelinedBodyLink,
    *,
    depth: int,
    head_optimizer: torch.optim.Optimizer,
    tail_optimizer: torch.optim.Optimizer,
    permutation_generator: torch.Generator | None = None,
    permute: bool = False,
) -> list[SplitStepResult]:
    """Train on every batch of `batches` (images `[B, 1, H, W]` under "image") with up to
    `depth` micro-batches in flight; returns one result per batch, in batch order.

    Unlike `split_train_step` this owns the optimizer steps: the tail steps when a body output
    arrives, the head when that step's token gradient arrives (see the module docstring).
    Permutations are drawn in batch order, as the plain loop draws them.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    source = iter(batches)
    in_flight: dict[int, _InFlight] = {}
    results: list[SplitStepResult] = []
    next_step = 0
    exhausted = False
    while True:
        while not exhausted and len(in_flight) < depth:
            batch = next(source, None)
            if batch is None:
                exhausted = True
                break
            with torch.no_grad():
                tokens = head(batch["image"])  # [B, N, D]
            perm = TokenPermutation.for_batch(tokens.shape[1], permutation_generator, permute)
            link.send_forward(next_step, perm.shuffle(tokens))
            in_flight[next_step] = _InFlight(batch, perm)
            next_step += 1
        if not in_flight:
            return results
        kind, step, tensor = link.receive()
        entry = in_flight.get(step)
        if entry is None:
            raise PipelineProtocolError(f"got {kind} for step {step}, not in flight")
        if kind == "output":
            if step != len(results):
                raise PipelineProtocolError(f"body output of step {step} out of order")
            body_out = tensor.detach().requires_grad_(True)
            outputs = tail(entry.perm.unshuffle(body_out))
            loss = loss_fn(outputs, entry.batch)
            tail_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            tail_optimizer.step()
            assert body_out.grad is not None
            link.send_backward(step, body_out.grad)
            images = entry.batch["image"]
            results.append(SplitStepResult(float(loss.detach()), outputs, int(images.shape[0])))
        elif kind == "grad_tokens":
            if step >= len(results):
                raise PipelineProtocolError(f"token gradient of step {step} before its output")
            head_optimizer.zero_grad(set_to_none=True)
            tokens = head(entry.batch["image"])  # recomputed with the current head weights
            entry.perm.shuffle(tokens).backward(tensor)
            head_optimizer.step()
            del in_flight[step]
        else:
            raise PipelineProtocolError(f"unexpected reply kind {kind!r}")
