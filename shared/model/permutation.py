"""p-FeSTA random patch permutation of the tokens that leave the client."""

from __future__ import annotations

import torch


class TokenPermutation:
    """One random order of N tokens, drawn per batch; `shuffle` then `unshuffle` is the identity.

    The same order applies to every image of a batch, so the body (permutation-equivariant)
    returns tokens in the shuffled order and the client restores spatial order before its tail.
    """

    def __init__(self, num_tokens: int, generator: torch.Generator | None = None):
        self.order = torch.randperm(num_tokens, generator=generator)
        self.inverse = torch.argsort(self.order)

    @staticmethod
    def for_batch(
        num_tokens: int, generator: torch.Generator | None, permute: bool
    ) -> TokenPermutation | IdentityPermutation:
        """A fresh random order when `permute`, else the identity (which draws nothing)."""
        return TokenPermutation(num_tokens, generator) if permute else IdentityPermutation()

    def shuffle(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, N, D]` in spatial order -> `[B, N, D]` in the random order."""
        return tokens[:, self.order.to(tokens.device)]

    def unshuffle(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, N, D]` in the random order -> `[B, N, D]` in spatial order."""
        return tokens[:, self.inverse.to(tokens.device)]


class IdentityPermutation:
    """Tokens keep their spatial order (permutation off): both directions return the input."""

    def shuffle(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def unshuffle(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens
