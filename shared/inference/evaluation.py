"""`festa evaluate`: a trained model's metrics per task and per site, with bootstrap intervals.

Each task is scored on the samples that carry its labels, over the whole set and over each
site (the manifest's `site` column). The 95 % interval is the 2.5-97.5 percentile range of the
metric over bootstrap resamples of the images (with replacement, same size); a resample where
the metric is undefined (one class only, for AUC) is left out and the count says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from festa.shared.data.datasets import (
    CXRDataset,
    ManifestSpec,
    collate,
    folder_dataset,
    load_dataset,
)
from festa.shared.inference.trained_model import TrainedModel
from festa.shared.tasks import primary_metric
from festa.shared.train.task_model import task_indices


def evaluation_data(
    model: TrainedModel, data: str, split: str = "val", phantoms: int = 400, seed: int = 0
) -> CXRDataset:
    """`data` (`phantoms` or a folder laid out like cxr-open) at the model's image size, with
    labels on the model's class names (other findings carry no classification label).
    `split` "all" keeps every row of the manifest."""
    size = model.config.image_size
    if data == "phantoms":
        return load_dataset("phantoms", split, size, phantoms, seed)
    spec = ManifestSpec(class_names=model.class_names)
    return folder_dataset(data, size=size, split=None if split == "all" else split, spec=spec)


def _take(value: Any, positions: np.ndarray) -> Any:
    """Rows `positions` of a tensor, of every tensor in a dict, or of a per-image list."""
    if isinstance(value, torch.Tensor):
        return value[torch.as_tensor(positions, dtype=torch.long)]
    if isinstance(value, dict):
        return {k: _take(v, positions) for k, v in value.items()}
    if isinstance(value, list):
        return [value[int(i)] for i in positions]
    return value


def _concat(chunks: list[Any]) -> Any:
    if isinstance(chunks[0], dict):
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    return torch.cat(chunks)


def _metrics(model: TrainedModel, task: str, outputs: Any, batch: dict, positions) -> dict:
    metric = model.tasks[task].task.new_metric(model.config)
    metric.update(_take(outputs, positions), _take(batch, positions))
    return metric.compute()


def _with_intervals(
    model: TrainedModel,
    task: str,
    outputs: Any,
    batch: dict,
    positions: np.ndarray,
    bootstrap: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    point = _metrics(model, task, outputs, batch, positions)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(bootstrap):
        sample = rng.choice(positions, size=len(positions), replace=True)
        for k, v in _metrics(model, task, outputs, batch, sample).items():
            if k in draws:
                draws[k].append(v)
    result: dict[str, Any] = {"n": int(len(positions))}
    for k, v in point.items():
        entry: dict[str, Any] = {"value": float(v)}
        if draws[k]:
            lo, hi = np.percentile(draws[k], [2.5, 97.5])
            entry["ci95"] = [float(lo), float(hi)]
            entry["resamples"] = len(draws[k])
        result[k] = entry
    return result


@torch.no_grad()
def task_outputs(
    model: TrainedModel,
    task: str,
    dataset: CXRDataset,
    indices: Sequence[int],
    batch_size: int = 64,
) -> Any:
    """The task tail's raw outputs for `dataset[indices]`, concatenated over batches."""
    chunks = []
    for start in range(0, len(indices), batch_size):
        images = torch.stack(
            [dataset[int(i)]["image"] for i in indices[start : start + batch_size]]
        )
        chunks.append(model.outputs(task, images))
    return _concat(chunks)


def evaluate_model(
    model: TrainedModel, dataset: CXRDataset, bootstrap: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Metrics of every task of `model` on `dataset`: overall and per site, each metric with
    its value and bootstrap 95 % interval (`bootstrap` resamples, seeded)."""
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {
        "model": model.source,
        "images": len(dataset),
        "bootstrap": bootstrap,
        "tasks": {},
    }
    for name, task_model in model.tasks.items():
        indices = task_indices(dataset, task_model.task)
        entry: dict[str, Any] = {"primary_metric": primary_metric(name), "n": int(len(indices))}
        report["tasks"][name] = entry
        if len(indices) == 0:
            entry["note"] = "no images carry this task's labels"
            continue
        outputs = task_outputs(model, name, dataset, indices)
        batch = collate([dataset[int(i)] for i in indices])
        everything = np.arange(len(indices))
        entry["overall"] = _with_intervals(model, name, outputs, batch, everything, bootstrap, rng)
        sites = np.asarray(batch["site"])
        entry["sites"] = {
            site: _with_intervals(
                model, name, outputs, batch, np.nonzero(sites == site)[0], bootstrap, rng
            )
            for site in sorted(set(batch["site"]))
        }
    return report
