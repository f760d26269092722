"""What a task is, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from festa.shared.config import ModelConfig
from festa.shared.model.head import Head

Batch = dict[str, Any]


class MetricAccumulator(Protocol):
    """Collects a task's predictions batch by batch; `compute` gives the final numbers."""

    def update(self, outputs: Any, batch: Batch) -> None: ...

    def compute(self) -> dict[str, float]: ...


class Task:
    """One learning problem on CXRs: its own head and tail around the shared body."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]

    def build_head(self, config: ModelConfig) -> nn.Module:
        """image `[B, 1, H, W]` -> tokens `[B, N, D]`; the same patch head for every task by default."""
        return Head(config)

    def build_tail(self, config: ModelConfig) -> nn.Module:
        """tokens `[B, N, D]` (spatial order) -> task output."""
        raise NotImplementedError

    def accepts(self, sample: dict[str, Any]) -> bool:
        """Whether a sample carries this task's labels (label loading)."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def new_metric(self, config: ModelConfig) -> MetricAccumulator:
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator that adds a `Task` subclass to the registry under `name`."""

    def wrap(cls: type[Task]) -> type[Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        cls.name = name
        TASKS[name] = cls
        return cls

    return wrap


def get_task(name: str) -> Task:
    """A fresh instance of the registered task `name`."""
    try:
        return TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}") from None


def primary_metric(task_name: str) -> str:
    """The metric a task is judged by (`loss` for a name the registry does not know)."""
    return TASKS[task_name].primary_metric if task_name in TASKS else "loss"


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """tokens `[B, N, D]` in spatial order -> feature map `[B, D, g, g]` with g*g = N."""
    b, n, d = tokens.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    return tokens.transpose(1, 2).reshape(b, d, g, g)
