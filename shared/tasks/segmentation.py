"""Lung segmentation: a per-pixel mask, mean per-image Dice."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from festa.shared.config import ModelConfig
from festa.shared.tasks.base import Batch, Task, register_task, tokens_to_grid


class SegmentationTail(nn.Module):
    """tokens `[B, N, D]` -> mask logits `[B, 1, H, W]`: a small progressive-upsampling decoder."""

    def __init__(self, config: ModelConfig, width: int = 64):
        super().__init__()
        stages = int(math.log2(config.patch_size))
        if 2**stages != config.patch_size:
            raise ValueError("segmentation tail needs a power-of-two patch size")
        self.norm = nn.LayerNorm(config.embed_dim)
        self.proj = nn.Conv2d(config.embed_dim, width, 1)
        layers: list[nn.Module] = []
        ch = width
        for _ in range(stages):
            out = max(ch // 2, 16)
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(ch, out, 3, padding=1),
                nn.GroupNorm(4, out),
                nn.GELU(),
            ]
            ch = out
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, 1, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.proj(tokens_to_grid(self.norm(tokens)))))


def dice_per_image(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dice of binary (or soft) masks `[B, 1, H, W]` -> `[B]`; two empty masks score 1."""
    inter = (pred * target).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (2 * inter + eps) / (total + eps)


class DiceMetric:
    def __init__(self) -> None:
        self.scores: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        pred = (outputs.detach() > 0).float()
        self.scores.append(dice_per_image(pred, batch["mask"]).cpu())

    def compute(self) -> dict[str, float]:
        if not self.scores:
            return {}
        return {"dice": float(torch.cat(self.scores).mean())}


@register_task("segmentation")
class Segmentation(Task):
    primary_metric = "dice"

    def build_tail(self, config: ModelConfig) -> nn.Module:
        return SegmentationTail(config)

    def accepts(self, sample: dict[str, Any]) -> bool:
        return sample.get("mask") is not None

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        target = batch["mask"]
        bce = F.binary_cross_entropy_with_logits(outputs, target)
        soft_dice = dice_per_image(torch.sigmoid(outputs), target).mean()
        return bce + (1 - soft_dice)

    def new_metric(self, config: ModelConfig) -> DiceMetric:
        return DiceMetric()
