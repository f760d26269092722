"""Gaussian noise on the tokens a client sends to the body (a privacy setting, issue 8).

The noise is *relative*: a setting of `std` adds N(0, (std * rms)^2) to every token value,
where rms is the root mean square of the batch's tokens as the client sends them, so 0.1
means "noise at 10 % of the signal's RMS" whatever scale the head has learned. It is added on
the client, after the head and before the wire, to training and evaluation tokens alike; the
body computes on the noisy tokens, and the gradient it returns goes straight to the head
(d(tokens + noise)/d tokens = I). `token_noise = 0` leaves the link untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from festa.shared.model.split import BodyLink


def add_token_noise(
    tokens: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """tokens `[B, N, D]` + N(0, (std * RMS(tokens))^2), drawn from `generator` (CPU).

    RMS is over the whole batch. Returns `tokens` itself when `std` is 0.
    """
    if std < 0:
        raise ValueError(f"token noise std must be >= 0, got {std}")
    if std == 0:
        return tokens
    with torch.no_grad():
        rms = tokens.detach().float().pow(2).mean().sqrt()
        noise = torch.randn(tokens.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(tokens.device, tokens.dtype) * (std * rms).to(tokens.dtype)
    return tokens + noise


class NoisyBodyLink:
    """A `BodyLink` that adds relative Gaussian noise to every token tensor it sends.

    Wraps any link (in-process or gRPC); backward passes the body's gradient through unchanged.
    Attributes the wrapper does not define (e.g. a link's statistics) come from the inner link.
    """

    def __init__(self, link: BodyLink, std: float, generator: torch.Generator):
        if std < 0:
            raise ValueError(f"token noise std must be >= 0, got {std}")
        self.link, self.std, self.generator = link, std, generator

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.link.forward(add_token_noise(tokens, self.std, self.generator))

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        return self.link.backward(grad_output)

    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.link.evaluate(add_token_noise(tokens, self.std, self.generator))

    def send_forward(self, step: int, tokens: torch.Tensor) -> None:
        """Pipelined links (`festa.shared.model.pipeline`): the Forward gets the same noise."""
        self.link.send_forward(step, add_token_noise(tokens, self.std, self.generator))

    def __getattr__(self, name: str) -> Any:
        if name == "link":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.link, name)


def with_token_noise(link: BodyLink, std: float, seed: int) -> BodyLink:
    """`link` itself when `std` is 0, else a `NoisyBodyLink` seeded with `seed`."""
    if std == 0:
        return link
    return NoisyBodyLink(link, std, torch.Generator().manual_seed(seed))
