"""The task-agnostic transformer body that lives on the server."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from festa.shared.config import ModelConfig


class Body(nn.Module):
    """`depth` timm transformer blocks and a final LayerNorm.

    tokens `[B, N, D]` -> tokens `[B, N, D]`. It holds no position information of its own, so
    it is permutation-equivariant over the token axis: a client may shuffle tokens before
    sending them and un-shuffle the reply (p-FeSTA).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.Sequential(
            *[
                Block(config.embed_dim, config.num_heads, config.mlp_ratio, qkv_bias=True)
                for _ in range(config.depth)
            ]
        )
        self.norm = nn.LayerNorm(config.embed_dim)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(tokens))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
