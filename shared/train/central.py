"""`festa train-central`: the split model trained in one process on pooled data.

This is the yardstick for every federated number: same heads, body and tails, same data,
no network. Tasks take turns batch by batch, so the one body learns from all of them.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from festa.shared.config import CentralConfig
from festa.shared.data.datasets import load_dataset, model_for_data
from festa.shared.model.body import Body
from festa.shared.runinfo import append_jsonl, environment_info, seed_everything, write_json
from festa.shared.train.task_model import TaskModel, evaluate, make_loader, task_indices, to_device


def train_central(
    config: CentralConfig, out_dir: str | Path, console: Console | None = None
) -> dict[str, Any]:
    """Train, evaluate every epoch, and write config/metrics/summary/checkpoint into `out_dir`."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    started = time.perf_counter()
    mcfg, device = config.model, config.device

    data = config.data
    train_set = load_dataset(
        data.source, data.train_split, mcfg.image_size, data.train_size, config.seed
    )
    val_set = load_dataset(data.source, data.val_split, mcfg.image_size, data.val_size, config.seed)
    mcfg = model_for_data(mcfg, train_set)
    config = config.model_copy(update={"model": mcfg})
    write_json(out / "config.json", config.model_dump())

    body = Body(mcfg).to(device)
    models = {name: TaskModel.build(name, mcfg).to(device) for name in config.tasks}
    train_loaders, val_loaders = {}, {}
    for i, (name, model) in enumerate(models.items()):
        train_idx = task_indices(train_set, model.task)
        val_idx = task_indices(val_set, model.task)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError(f"task {name}: no labelled samples in the train or val split")
        train_loaders[name] = make_loader(
            train_set, train_idx, config.optim.batch_size, True, config.seed + i
        )
        val_loaders[name] = make_loader(val_set, val_idx, 2 * config.optim.batch_size, False, 0)

    params = list(body.parameters()) + [p for m in models.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(
        params, lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    steps_per_epoch = sum(len(loader) for loader in train_loaders.values())
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.optim.lr,
        total_steps=steps_per_epoch * config.epochs,
        pct_start=0.1,
    )

    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    history: list[dict[str, Any]] = []
    samples_seen = 0
    train_seconds = 0.0
    with Progress(
        TextColumn("[bold]central[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("train", total=steps_per_epoch * config.epochs, epoch=1, status="")
        for epoch in range(1, config.epochs + 1):
            progress.update(bar, epoch=f"{epoch}/{config.epochs}")
            epoch_start = time.perf_counter()
            losses: dict[str, list[float]] = {name: [] for name in models}
            for name, batch in _interleave(train_loaders):
                model = models[name]
                batch = to_device(batch, device)
                outputs = model.tail(body(model.head(batch["image"])))
                loss = model.task.loss(outputs, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses[name].append(float(loss.detach()))
                samples_seen += len(batch["image"])
                progress.advance(bar)
            train_seconds += time.perf_counter() - epoch_start
            record: dict[str, Any] = {"epoch": epoch, "train_loss": {}, "val": {}}
            for name, model in models.items():
                record["train_loss"][name] = sum(losses[name]) / max(len(losses[name]), 1)
                record["val"][name] = evaluate(model, val_loaders[name], body, mcfg, device)
            record["seconds"] = time.perf_counter() - started
            append_jsonl(metrics_path, record)
            history.append(record)
            progress.update(bar, status=_status_line(models, record))

    torch.save(
        {
            "body": body.state_dict(),
            "tasks": {name: m.state_dict() for name, m in models.items()},
            "config": config.model_dump(),
        },
        out / "checkpoint.pt",
    )
    final = history[-1]["val"]
    summary = {
        "final": final,
        "primary": {name: final[name].get(m.task.primary_metric) for name, m in models.items()},
        "epochs": config.epochs,
        "seed": config.seed,
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
        "train_samples_per_second": samples_seen / max(train_seconds, 1e-9),
        "train_size": len(train_set),
        "val_size": len(val_set),
        "class_names": list(train_set.class_names),
        "skipped_files": [vars(s) for s in train_set.skipped + val_set.skipped],
        "config": config.model_dump(),
        "environment": environment_info(),
    }
    write_json(out / "summary.json", summary)
    return summary


def _interleave(loaders: dict[str, Any]):
    """Yield (task, batch) alternating between tasks until every loader is exhausted."""
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    for name in itertools.cycle(list(iterators)):
        if not iterators:
            return
        if name not in iterators:
            continue
        try:
            yield name, next(iterators[name])
        except StopIteration:
            del iterators[name]


def _status_line(models: dict[str, TaskModel], record: dict[str, Any]) -> str:
    parts = []
    for name, model in models.items():
        value = record["val"][name].get(model.task.primary_metric)
        if value is not None:
            parts.append(f"{name[:4]} {model.task.primary_metric}={value:.3f}")
    return "  ".join(parts)
