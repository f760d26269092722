"""The body service as an honest-but-curious operator runs it."""

from __future__ import annotations

import torch
from torch import nn

from festa.shared import wire
from festa.shared.model import LocalBodyLink, TokenPermutation
from festa.shared.model.split import split_forward
from festa.shared.model.token_noise import with_token_noise


class CuriousBodyLink(LocalBodyLink):
    """Computes exactly what the real service computes on the wire-decoded tensors, and keeps
    a copy of what it sees.

    `received` holds token batches `[B, N, D]` as decoded from the wire, `outputs` the body's
    outputs, `grads` the decoded gradients w.r.t. those outputs (training only).
    """

    def __init__(self, body: nn.Module, wire_dtype: str = "fp32"):
        super().__init__(body)
        self.wire_dtype = wire_dtype
        self.received: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return wire.decode(wire.encode(tensor, self.wire_dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        received = self._wire(tokens)
        self.received.append(received.clone())
        out = super().forward(received)
        self.outputs.append(out.clone())
        return self._wire(out)

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        grad = self._wire(grad_output)
        self.grads.append(grad.clone())
        return self._wire(super().backward(grad))

    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        received = self._wire(tokens)
        self.received.append(received.clone())
        return self._wire(super().evaluate(received))


def tokens_as_sent(
    head: nn.Module,
    tail: nn.Module,
    body: nn.Module,
    images: torch.Tensor,
    wire_dtype: str = "fp32",
    permute: bool = False,
    token_noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the body service receives when a client evaluates `images` `[B,1,H,W]`.

    Runs the real client path (`split_forward` with the token-noise wrapper and the shuffle)
    in batches of `batch_size` and returns (tokens as received `[B,N,D]`, the same tokens put
    back in grid order with the client's own permutations `[B,N,D]`, for scoring only).
    """
    link = CuriousBodyLink(body, wire_dtype)
    noisy = with_token_noise(link, token_noise, seed)
    perm_gen = torch.Generator().manual_seed(seed + 1)
    in_grid_order = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            before = perm_gen.get_state()
            split_forward(head, tail, images[start : start + batch_size], noisy, perm_gen, permute)
            received = link.received[-1]
            if permute:
                replay = torch.Generator().set_state(before)
                received = TokenPermutation(received.shape[1], replay).unshuffle(received)
            in_grid_order.append(received)
    return torch.cat(link.received), torch.cat(in_grid_order)
