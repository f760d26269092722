"""Finding classification: one label per image, macro one-vs-rest ROC AUC."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from festa.shared.config import ModelConfig
from festa.shared.tasks.base import Batch, Task, register_task


class ClassificationTail(nn.Module):
    """tokens `[B, N, D]` -> class logits `[B, C]` (LayerNorm, mean over tokens, linear)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.embed_dim)
        self.fc = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(tokens).mean(dim=1))


class ClassificationMetric:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.probs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        self.probs.append(torch.softmax(outputs.detach().float(), dim=1).cpu().numpy())
        self.labels.append(batch["label"].cpu().numpy())

    def compute(self) -> dict[str, float]:
        if not self.labels:
            return {}
        probs, labels = np.concatenate(self.probs), np.concatenate(self.labels)
        result = {"accuracy": float((probs.argmax(1) == labels).mean())}
        present = np.unique(labels)
        if len(present) >= 2:
            # Macro AUC over the classes present in this evaluation set.
            p = probs[:, present] / probs[:, present].sum(1, keepdims=True)
            if len(present) == 2:
                result["auc"] = float(roc_auc_score(labels == present[1], p[:, 1]))
            else:
                result["auc"] = float(
                    roc_auc_score(labels, p, multi_class="ovr", average="macro", labels=present)
                )
        return result


@register_task("classification")
class Classification(Task):
    primary_metric = "auc"

    def build_tail(self, config: ModelConfig) -> nn.Module:
        return ClassificationTail(config)

    def accepts(self, sample: dict[str, Any]) -> bool:
        return sample.get("label", -1) >= 0

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch["label"])

    def new_metric(self, config: ModelConfig) -> ClassificationMetric:
        return ClassificationMetric(config.num_classes)
