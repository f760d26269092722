"""One training step through the split seam, with the body behind a `BodyLink`.

This is the FeSTA client step of DESIGN §2: head forward -> tokens to the body -> body output
back -> tail + loss -> gradient w.r.t. the body output to the body -> gradient w.r.t. the
tokens back -> head backward. The same function drives the in-process link used by tests and
the gRPC link used by federated clients, so what is tested is what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from festa.shared.model.permutation import TokenPermutation


class BodyLink(Protocol):
    """What a client needs from the body: one forward and one backward per step."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, N, D]` (no autograd history) -> body output `[B, N, D]`."""
        ...

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        """grad w.r.t. the last forward's output `[B, N, D]` -> grad w.r.t. its input tokens."""
        ...

    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        """Body output without keeping autograd state (validation)."""
        ...


class LocalBodyLink:
    """The body in this process, detached at the seam exactly as the body service does it."""

    def __init__(self, body: nn.Module):
        self.body = body
        self._inputs: torch.Tensor | None = None
        self._outputs: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self._inputs = tokens.detach().requires_grad_(True)
        self._outputs = self.body(self._inputs)
        return self._outputs.detach()

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        if self._outputs is None or self._inputs is None:
            raise RuntimeError("backward() called before forward()")
        self._outputs.backward(grad_output)
        grad_tokens = self._inputs.grad
        self._inputs = self._outputs = None
        assert grad_tokens is not None
        return grad_tokens

    @torch.no_grad()
    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.body(tokens)


@dataclass
class SplitStepResult:
    loss: float
    outputs: Any
    num_examples: int


LossFn = Callable[[Any, dict[str, Any]], torch.Tensor]
# (grad w.r.t. body output, body output, tail as a function of it, batch) -> gradient to send
GradTransform = Callable[
    [torch.Tensor, torch.Tensor, Callable[[torch.Tensor], Any], dict[str, Any]], torch.Tensor
]


def split_train_step(
    head: nn.Module,
    tail: nn.Module,
    loss_fn: LossFn,
    batch: dict[str, Any],
    link: BodyLink,
    permutation_generator: torch.Generator | None = None,
    permute: bool = False,
    grad_transform: GradTransform | None = None,
) -> SplitStepResult:
    """Forward and backward of one batch through head, remote body and tail.

    Leaves gradients in `head` and `tail` (the body's are handled by the link's owner);
    optimizer steps are the caller's. `grad_transform` rewrites the gradient w.r.t. the body
    output before it is sent (label protection, `festa.shared.privacy.label_protection`).
    """
    images = batch["image"]
    tokens = head(images)  # [B, N, D], spatial order, position embedding included
    perm = TokenPermutation.for_batch(tokens.shape[1], permutation_generator, permute)
    sent = perm.shuffle(tokens)
    body_out = link.forward(sent.detach()).requires_grad_(True)
    outputs = tail(perm.unshuffle(body_out))
    loss = loss_fn(outputs, batch)
    loss.backward()
    assert body_out.grad is not None
    grad = body_out.grad
    if grad_transform is not None:
        grad = grad_transform(grad, body_out, lambda o: tail(perm.unshuffle(o)), batch)
    grad_tokens = link.backward(grad)
    sent.backward(grad_tokens)
    return SplitStepResult(float(loss.detach()), outputs, int(images.shape[0]))


@torch.no_grad()
def split_forward(
    head: nn.Module,
    tail: nn.Module,
    images: torch.Tensor,
    link: BodyLink,
    permutation_generator: torch.Generator | None = None,
    permute: bool = False,
) -> Any:
    """Inference through the seam (no autograd state anywhere)."""
    return tail(permuted_body(link, permutation_generator, permute)(head(images)))


def permuted_body(
    link: BodyLink, permutation_generator: torch.Generator | None = None, permute: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The body as seen from the client at inference: tokens `[B, N, D]` in spatial order ->
    body output `[B, N, D]` in spatial order, each batch sent in a fresh order when `permute`."""

    def body(tokens: torch.Tensor) -> torch.Tensor:
        perm = TokenPermutation.for_batch(tokens.shape[1], permutation_generator, permute)
        return perm.unshuffle(link.evaluate(perm.shuffle(tokens)))

    return body
