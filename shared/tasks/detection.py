"""Box detection (lungs, lesions) with an anchor-free head on the token grid; mAP@0.5.

Each token of the patch grid predicts, for every box class, an objectness score and a box:
the offset of the box centre from that cell's corner, in [-0.5, 1.5] cells, and the box width
and height. The cell that holds a ground-truth box's centre is its only objectness positive
(CenterNet-style); the box itself is regressed from that cell and from its horizontal and
vertical neighbours nearest the centre (YOLOv5-style), three times the box supervision.
This is box coding 2 (`festa.shared.config.BOX_CODING`): a change to how boxes encode or decode
must bump it, so that weights trained under the old coding are refused rather than misread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, sigmoid_focal_loss

from festa.shared.config import ModelConfig
from festa.shared.tasks.average_precision import mean_average_precision
from festa.shared.tasks.base import Batch, Task, register_task, tokens_to_grid


class DetectionTail(nn.Module):
    """tokens `[B, N, D]` -> `{"logits": [B, C, g, g], "boxes": [B, 4, g, g]}` (raw regressions)."""

    def __init__(self, config: ModelConfig, width: int = 96):
        super().__init__()
        self.norm = nn.LayerNorm(config.embed_dim)
        self.trunk = nn.Sequential(
            nn.Conv2d(config.embed_dim, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
        )
        self.cls = nn.Conv2d(width, config.num_box_classes, 1)
        self.reg = nn.Conv2d(width, 4 * config.num_box_classes, 1)
        nn.init.constant_(self.cls.bias, -4.0)  # start from "no object" everywhere

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.trunk(tokens_to_grid(self.norm(tokens)))
        return {"logits": self.cls(x), "boxes": self.reg(x)}


def encode_targets(
    boxes: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int, grid: int, cell: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground truth -> (objectness `[B, C, g, g]`, one per box at its centre cell; regression
    targets `[B, C, 4, g, g]`; mask `[B, C, g, g]` of the cells that regress a box)."""
    b = len(boxes)
    obj = torch.zeros(b, num_classes, grid, grid)
    reg = torch.zeros(b, num_classes, 4, grid, grid)
    regresses = torch.zeros(b, num_classes, grid, grid, dtype=torch.bool)
    for i, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        for box, c in zip(bx.tolist(), lb.tolist(), strict=True):
            cx, cy = (box[0] + box[2]) / 2 / cell, (box[1] + box[3]) / 2 / cell
            gx, gy = min(int(cx), grid - 1), min(int(cy), grid - 1)
            w, h = max(box[2] - box[0], 1.0) / cell, max(box[3] - box[1], 1.0) / cell
            obj[i, c, gy, gx] = 1.0
            nx = gx - 1 if cx - gx < 0.5 else gx + 1  # the neighbours nearest the centre
            ny = gy - 1 if cy - gy < 0.5 else gy + 1
            for x, y in ((gx, gy), (nx, gy), (gx, ny)):
                if 0 <= x < grid and 0 <= y < grid:
                    reg[i, c, :, y, x] = torch.tensor([cx - x, cy - y, np.log(w), np.log(h)])
                    regresses[i, c, y, x] = True
    return obj, reg, regresses


def centre_offset(raw: torch.Tensor) -> torch.Tensor:
    """Raw centre regressions -> the centre's offset from the cell corner, in [-0.5, 1.5] cells."""
    return 2 * torch.sigmoid(raw) - 0.5


def decode(
    outputs: dict[str, torch.Tensor], cell: float, score_threshold: float = 0.05, top_k: int = 20
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw tail outputs -> per image (boxes `[M, 4]` px, scores `[M]`, labels `[M]`) after NMS."""
    logits = outputs["logits"].detach().float()
    b, c, g, _ = logits.shape
    reg = outputs["boxes"].detach().float().reshape(b, c, 4, g, g)
    ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    cx = (xs + centre_offset(reg[:, :, 0])) * cell
    cy = (ys + centre_offset(reg[:, :, 1])) * cell
    w = torch.exp(reg[:, :, 2].clamp(max=6)) * cell
    h = torch.exp(reg[:, :, 3].clamp(max=6)) * cell
    all_boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    scores = torch.sigmoid(logits)
    results = []
    for i in range(b):
        sc = scores[i].flatten()
        bx = all_boxes[i].reshape(-1, 4)
        lb = torch.arange(c).repeat_interleave(g * g)
        keep = sc >= score_threshold
        sc, bx, lb = sc[keep], bx[keep], lb[keep]
        keep = batched_nms(bx, sc, lb, 0.5)[:top_k]
        results.append((bx[keep].numpy(), sc[keep].numpy(), lb[keep].numpy()))
    return results


class DetectionMetric:
    def __init__(self, config: ModelConfig):
        self.cell = float(config.patch_size)
        self.predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.ground_truth: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, outputs: dict[str, torch.Tensor], batch: Batch) -> None:
        self.predictions += decode({k: v.cpu() for k, v in outputs.items()}, self.cell)
        self.ground_truth += [
            (b.cpu().numpy(), lb.cpu().numpy())
            for b, lb in zip(batch["boxes"], batch["box_labels"], strict=True)
        ]

    def compute(self) -> dict[str, float]:
        if not self.ground_truth:
            return {}
        return mean_average_precision(self.predictions, self.ground_truth, 0.5)


@register_task("detection")
class Detection(Task):
    primary_metric = "map50"

    def build_tail(self, config: ModelConfig) -> nn.Module:
        return DetectionTail(config)

    def accepts(self, sample: dict[str, Any]) -> bool:
        boxes = sample.get("boxes")
        return boxes is not None and len(boxes) > 0

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Focal objectness + box regression, each box class normalised by its own boxes
        (objectness) and its own regressing cells (regression).

        One normaliser for all classes let the two lung boxes of every image outweigh the one
        lesion of a third of the images about 6:1, and lesions stayed unlearned (lesion AP
        0.14 after 3,840 examples; 0.39 with per-class normalisation; BENCHMARKS.md).
        Regressing from three cells raised festa's lesion AP; making all three objectness
        positives as well slowed the start of lesion learning and cost classification
        (BENCHMARKS.md, 2026-12-08).
        """
        logits, raw = outputs["logits"], outputs["boxes"]
        b, c, g, _ = logits.shape
        cell = batch["image"].shape[-1] / g
        obj, reg_t, regresses = encode_targets(batch["boxes"], batch["box_labels"], c, g, cell)
        obj, reg_t, regresses = (t.to(logits.device) for t in (obj, reg_t, regresses))
        boxes = obj.sum(dim=(0, 2, 3)).clamp(min=1)  # [C] boxes of each class
        cells = regresses.sum(dim=(0, 2, 3)).clamp(min=1)  # [C] cells regressing them
        cls_loss = sigmoid_focal_loss(logits, obj, reduction="none").sum(dim=(0, 2, 3))
        reg = raw.reshape(b, c, 4, g, g)
        pred = torch.cat([centre_offset(reg[:, :, :2]), reg[:, :, 2:]], dim=2)
        reg_err = F.smooth_l1_loss(pred, reg_t, reduction="none", beta=0.1).sum(dim=2)
        reg_loss = (reg_err * regresses).sum(dim=(0, 2, 3))
        return (cls_loss / boxes + reg_loss / cells).sum()

    def new_metric(self, config: ModelConfig) -> DetectionMetric:
        return DetectionMetric(config)
