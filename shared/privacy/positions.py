"""Undoing the p-FeSTA shuffle: a classifier predicts each token's grid position from its
content, and a Hungarian assignment gives every token of an image a distinct position."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from festa.shared.config import ModelConfig
from festa.shared.privacy.inversion import TokenTransform


class PositionClassifier(nn.Module):
    """token `[..., D]` -> logits over its grid position `[..., N]`."""

    def __init__(self, config: ModelConfig, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(config.embed_dim),
            nn.Linear(config.embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.num_tokens),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def train_position_classifier(
    config: ModelConfig,
    tokens: torch.Tensor,
    epochs: int = 6,
    seed: int = 0,
    transform: TokenTransform | None = None,
    batch_tokens: int = 1024,
) -> PositionClassifier:
    """Learn each public token's position from its content (tokens `[M, N, D]`, grid order).

    `transform` (applied per image batch, fresh every epoch) lets the attacker train on tokens
    that carry the defence, e.g. a random per-site code it does not know.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clf = PositionClassifier(config)
    n = tokens.shape[1]
    images_per_batch = max(1, batch_tokens // n)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3)
    target = torch.arange(n).repeat(images_per_batch)
    for _ in range(epochs):
        order = torch.randperm(len(tokens), generator=gen)
        for start in range(0, len(tokens), images_per_batch):
            batch = tokens[order[start : start + images_per_batch]]
            if transform is not None:
                batch = transform(batch, gen)
            logits = clf(batch.reshape(-1, batch.shape[-1]))
            loss = nn.functional.cross_entropy(logits, target[: len(logits)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    clf.eval()
    return clf


@torch.no_grad()
def unshuffle_by_position(
    clf: PositionClassifier, tokens: torch.Tensor, shared_order: bool = False
) -> torch.Tensor:
    """Put shuffled tokens `[B, N, D]` back in grid order: one position per token, the
    assignment of highest total log-probability (Hungarian).

    `shared_order`: every image of the batch was shuffled by the same order (as p-FeSTA
    does), so the log-probabilities of a slot are pooled over the batch and one assignment
    serves all its images.
    """
    logp = torch.log_softmax(clf(tokens), dim=-1)  # [B, N tokens, N positions]
    if shared_order:
        logp = logp.sum(dim=0, keepdim=True).expand_as(logp)
    out = torch.empty_like(tokens)
    for i in range(len(tokens)):
        if i == 0 or not shared_order:
            rows, cols = linear_sum_assignment(-logp[i].numpy())
        out[i, torch.as_tensor(cols)] = tokens[i, torch.as_tensor(rows)]
    return out


def placement_accuracy(
    clf: PositionClassifier,
    shuffled: torch.Tensor,
    truth: torch.Tensor,
    shared_order: bool = False,
) -> float:
    """Share of `shuffled` tokens `[B, N, D]` the attacker puts back in their true place.

    `truth` `[B, N, D]` holds the same images' tokens in grid order; a placed token counts as
    in place when it is nearest to the true token of that position. Chance is 1 / N.
    """
    placed = unshuffle_by_position(clf, shuffled, shared_order)
    d = torch.cdist(placed, truth)
    return float((d.argmin(dim=-1) == torch.arange(truth.shape[1])).float().mean())
