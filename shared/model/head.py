"""The client-side head: image -> tokens with position embedding."""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from torch import nn

from festa.shared.config import ModelConfig


def conv_stem_stages(patch_size: int) -> int:
    """Stride-2 conv stages in front of the patch embedding: log2 of the patch size's largest
    power-of-two factor, less one (the last factor of 2 is the patch embedding itself)."""
    factor = patch_size & -patch_size  # largest power of two dividing patch_size
    return max(factor.bit_length() - 2, 0)


class Head(nn.Module):
    """Pixel standardisation, a convolutional stem, a timm patch embedding and a learned
    position embedding.

    image `[B, C, H, W]` in [0, 1] -> tokens `[B, N, D]` with N = (H / patch)^2. Position
    information is added here, on the client, so the body never needs it.

    The stem (stride-2 3x3 convs, GroupNorm, GELU; widths 16, 32, ...) does most of the
    down-sampling before a 2x2 (or patch / 2^stages) patch embedding: early convolutions make
    a small ViT learn from far fewer examples than a single patchify layer (Xiao et al.,
    NeurIPS 2021). Measured on the phantoms (BENCHMARKS.md, "sample efficiency"): the raw
    [0, 1] input with a one-layer stem stays at the class-prior loss after 3,840
    classification examples; standardising the input alone reaches AUC 0.81, this stem 0.88.
    GroupNorm, not BatchNorm: no running statistics to drift apart between sites.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        stages = conv_stem_stages(config.patch_size)
        layers: list[nn.Module] = []
        channels = config.in_chans
        for k in range(stages):
            width = min(16 * 2**k, config.embed_dim)
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1),
                nn.GroupNorm(min(4, width), width),
                nn.GELU(),
            ]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.patch_embed = PatchEmbed(
            img_size=config.image_size // 2**stages,
            patch_size=config.patch_size // 2**stages,
            in_chans=channels,
            embed_dim=config.embed_dim,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, config.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images - self.config.pixel_mean) / self.config.pixel_std
        return self.patch_embed(self.stem(pixels)) + self.pos_embed
