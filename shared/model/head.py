"""The client-side head: image -> tokens with position embedding."""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from torch import nn

from festa.shared.config import ModelConfig


class Head(nn.Module):
    """A small conv stem, a timm patch embedding and a learned position embedding.

    image `[B, C, H, W]` -> tokens `[B, N, D]` with N = (H / patch)^2. Position information
    is added here, on the client, so the body never needs it.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        stem_width = 16
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, stem_width, 3, padding=1),
            nn.GELU(),
        )
        self.patch_embed = PatchEmbed(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=stem_width,
            embed_dim=config.embed_dim,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, config.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(self.stem(images)) + self.pos_embed
