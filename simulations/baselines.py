"""Baselines for federated claims, in one process and without Flower (DESIGN §2).

- local-only: every client trains its own full model (head, body, tail) on its data alone;
- plain FedAvg: every task group trains a full model and averages all of it (body included)
  within the group each round: the body is never shared across tasks;
- centralized (pooled): one body shared by all tasks and one head/tail per task, trained on
  the union of each task's sites' training data, as many batches per task and round as the
  task's clients train together, one AdamW for the whole run.

All use the same sites (partition or federation file), batch size, local steps and rounds as a
festa run, the same client loss (`training_loss`: logit adjustment for classification by
default; the pooled trainer uses the plain task loss, its prior is the global one), and report
the same per-task validation metrics (mean over the task's sites' val rows, weighted by size).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset

from festa.client.local_training import round_loader, round_seed, training_loss
from festa.client.site_data import SiteData, config_for_data, simulated_site
from festa.server.federation import fedavg_by_task, initial_task_states, weighted_means
from festa.shared.config import FederationConfig
from festa.shared.data.datasets import collate
from festa.shared.inference.export import export_model
from festa.shared.inference.trained_model import build_trained_model
from festa.shared.model.body import Body
from festa.shared.train.task_model import TaskModel, cycle_batches, evaluate, make_loader, to_device

KINDS = ("local", "fedavg", "central")


class FullModel(nn.Module):
    """head -> body -> tail in one module (no split)."""

    def __init__(
        self,
        task: str,
        cfg: FederationConfig,
        task_state: dict[str, torch.Tensor],
        body: Body | None = None,
    ):
        super().__init__()
        self.parts = TaskModel.build(task, cfg.model)
        self.parts.load_state_dict(task_state)  # festa's per-task initialisation
        self.head, self.tail = self.parts.head, self.parts.tail
        if body is None:
            torch.manual_seed(cfg.seed)
            body = Body(cfg.model)
        self.body = body

    def loss(self, batch: dict, loss_fn) -> torch.Tensor:
        return loss_fn(self.tail(self.body(self.head(batch["image"]))), batch)


def _train(model: FullModel, cfg: FederationConfig, site: SiteData, r: int) -> int:
    seed = round_seed(cfg.seed, r, site.site_id)
    torch.manual_seed(seed)
    loader = round_loader(cfg, site, r)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    loss_fn = training_loss(cfg, site, model.parts)
    seen = 0
    for batch in cycle_batches(loader, cfg.local_steps):
        loss = model.loss(to_device(batch, cfg.device), loss_fn)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(batch["image"])
    return seen


def _evaluate(
    models: dict[str, FullModel], sites: dict[str, SiteData], cfg: FederationConfig
) -> dict[str, dict[str, float]]:
    per_task: dict[str, dict[str, float]] = {}
    for task in cfg.tasks:
        group = [(name, s) for name, s in sites.items() if s.task == task and len(s.val_indices)]
        results, weights = [], []
        for name, site in group:
            model = models[name]
            loader = make_loader(site.val, site.val_indices, 2 * cfg.optim.batch_size, False, 0)
            results.append(evaluate(model.parts, loader, model.body, cfg.model, cfg.device))
            weights.append(len(site.val_indices))
        per_task[task] = weighted_means(results, weights)
    return per_task


def _pooled_loader(group: list[SiteData], cfg: FederationConfig, seed: int):
    """Batches drawn from the union of the training rows of a task's sites."""
    subsets = [Subset(s.train, s.train_indices.tolist()) for s in group]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ConcatDataset(subsets),
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
    )


def _train_central(
    models: dict[str, FullModel], sites: dict[str, SiteData], cfg
) -> list[dict[str, Any]]:
    """Pooled training: per round, each task trains (its clients) x local_steps batches of its
    pooled data, tasks interleaved batch by batch, one AdamW over the shared body and all tails.
    Returns one record per round: {"round", "tasks": validation metrics after it, "seconds":
    cumulative wall time of training up to it plus this round's evaluation}; the time spent on
    the evaluations of earlier rounds is left out (the trainer needs only the last one)."""
    tasks = list(dict.fromkeys(s.task for s in sites.values()))
    groups = {t: [s for s in sites.values() if s.task == t] for t in tasks}
    by_task = {t: models[groups[t][0].site_id] for t in tasks}
    params = {id(p): p for m in by_task.values() for p in m.parameters()}
    opt = torch.optim.AdamW(
        list(params.values()), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    loaders = {t: _pooled_loader(groups[t], cfg, cfg.seed + i) for i, t in enumerate(tasks)}
    history: list[dict[str, Any]] = []
    trained_s = 0.0
    for r in range(1, cfg.rounds + 1):
        started = time.perf_counter()
        streams = {t: cycle_batches(loaders[t], cfg.local_steps * len(groups[t])) for t in tasks}
        while streams:
            for t in list(streams):
                batch = next(streams[t], None)
                if batch is None:
                    del streams[t]
                    continue
                loss = by_task[t].loss(to_device(batch, cfg.device), by_task[t].parts.task.loss)
                opt.zero_grad()
                loss.backward()
                opt.step()
        trained_s += time.perf_counter() - started
        started = time.perf_counter()
        metrics = _evaluate(models, sites, cfg)
        seconds = trained_s + time.perf_counter() - started
        history.append({"round": r, "tasks": metrics, "seconds": seconds})
    return history


def run_baseline(cfg: FederationConfig, kind: str, export_to: Path | None = None) -> dict[str, Any]:
    """`kind` = `local`, `fedavg` or `central`; returns {"final": per-task metrics,
    "history": per-round records (central only, see `_train_central`; [] otherwise),
    "bytes_per_client_round": int, "params": int}. With `export_to`, the trained models are
    written there as `festa export` folders (`festa evaluate` reads them): one per site
    (local), per task (fedavg: each task has its own body) or one for all tasks (central)."""
    if kind not in KINDS:
        raise ValueError(f"baseline kind must be one of {KINDS}, got {kind!r}")
    cfg = config_for_data(cfg)
    sites = {s.site_id: s for s in (simulated_site(cfg, i) for i in range(cfg.clients))}
    initial = initial_task_states(cfg)
    if kind == "central":
        torch.manual_seed(cfg.seed)
        body = Body(cfg.model).to(cfg.device)
        per_task = {
            t: FullModel(t, cfg, initial[t], body).to(cfg.device)
            for t in dict.fromkeys(s.task for s in sites.values())
        }
        models = {name: per_task[site.task] for name, site in sites.items()}
        history = _train_central(models, sites, cfg)
    else:
        history = []
        models = {
            name: FullModel(site.task, cfg, initial[site.task]).to(cfg.device)
            for name, site in sites.items()
        }
        _train_federated(models, sites, cfg, kind)
    if export_to is not None:
        _export(models, sites, cfg, kind, export_to)
    params = sum(p.numel() for p in next(iter(models.values())).parameters())
    # FedAvg moves the whole fp32 model down and up once per round; the others move nothing.
    traffic = 2 * 4 * params if kind == "fedavg" else 0
    return {
        "final": history[-1]["tasks"] if history else _evaluate(models, sites, cfg),
        "history": history,
        "bytes_per_client_round": traffic,
        "params": params,
    }


def _train_federated(models, sites: dict[str, SiteData], cfg: FederationConfig, kind: str):
    for r in range(1, cfg.rounds + 1):
        for name, site in sites.items():
            _train(models[name], cfg, site, r)
        if kind == "fedavg":
            names = list(sites)
            averaged = fedavg_by_task(
                [models[n].state_dict() for n in names],
                [sites[n].task for n in names],
                [len(sites[n].train_indices) for n in names],
            )
            for n in names:
                models[n].load_state_dict(averaged[sites[n].task])


def _export(models, sites: dict[str, SiteData], cfg: FederationConfig, kind: str, out: Path):
    """One export folder per distinct trained model (see `run_baseline`)."""
    groups: dict[str, list[str]] = {}
    for name, site in sites.items():
        key = {"local": name, "fedavg": site.task, "central": "all"}[kind]
        groups.setdefault(key, []).append(name)
    for key, names in groups.items():
        chosen = {sites[n].task: models[n] for n in names}
        body = next(iter(chosen.values())).body
        trained = build_trained_model(
            cfg.model,
            body.state_dict(),
            {t: m.parts.state_dict() for t, m in chosen.items()},
            source=f"baseline {kind} {key}",
            data_source=cfg.data.source,
        )
        export_model(trained, out / key)
