"""A task's client-side parts (head and tail), its data loaders, and evaluation through any body."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from festa.shared.config import ModelConfig
from festa.shared.data.datasets import CXRDataset, collate
from festa.shared.tasks import Task, get_task

BodyFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TaskModel:
    """The head and tail one task keeps on its clients."""

    task: Task
    head: nn.Module
    tail: nn.Module

    @classmethod
    def build(cls, task_name: str, config: ModelConfig) -> TaskModel:
        task = get_task(task_name)
        return cls(task, task.build_head(config), task.build_tail(config))

    def parameters(self):
        return [*self.head.parameters(), *self.tail.parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Head and tail weights in one flat dict with `head.` / `tail.` prefixes."""
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state.update({f"tail.{k}": v for k, v in self.tail.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        self.tail.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("tail.")})

    def train(self, mode: bool = True) -> None:
        self.head.train(mode)
        self.tail.train(mode)

    def to(self, device: str | torch.device) -> TaskModel:
        self.head.to(device)
        self.tail.to(device)
        return self


def task_indices(dataset: CXRDataset, task: Task, indices: np.ndarray | None = None) -> np.ndarray:
    """Indices (within `indices`, default all) of samples that carry `task`'s labels."""
    pool = np.arange(len(dataset)) if indices is None else indices
    return np.asarray([i for i in pool if task.accepts(dataset[int(i)])], dtype=np.int64)


def make_loader(
    dataset: CXRDataset, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int
) -> DataLoader:
    """A DataLoader over a subset with festa's collate and a seeded shuffle order."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        Subset(dataset, indices.tolist()),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=generator,
        drop_last=False,
    )


def cycle_batches(loader: DataLoader, steps: int):
    """Exactly `steps` batches from `loader`, starting a new pass whenever one ends."""
    batches = iter(loader)
    for _ in range(steps):
        try:
            yield next(batches)
        except StopIteration:
            batches = iter(loader)
            yield next(batches)


def to_device(batch: dict, device: str | torch.device) -> dict:
    out = dict(batch)
    for key in ("image", "label", "mask"):
        if key in out:
            out[key] = out[key].to(device)
    return out


@torch.no_grad()
def evaluate(
    model: TaskModel, loader: DataLoader, body: BodyFn, config: ModelConfig, device: str = "cpu"
) -> dict[str, float]:
    """Task metrics (and mean loss) of `model` on `loader`, tokens passed through `body`."""
    model.train(False)
    metric = model.task.new_metric(config)
    total, count = 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        outputs = model.tail(body(model.head(batch["image"])))
        total += float(model.task.loss(outputs, batch)) * len(batch["image"])
        count += len(batch["image"])
        metric.update(outputs, batch)
    model.train(True)
    result = metric.compute()
    if count:
        result["loss"] = total / count
    return result
