"""Baselines for federated claims, in one process and without Flower (DESIGN §2).

- local-only: every client trains its own full model (head, body, tail) on its data alone;
- plain FedAvg: every task group trains a full model and averages all of it (body included)
  within the group each round: the body is never shared across tasks.

Both use the same partition, batch size, local steps and rounds as a festa run, and report
the same per-task validation metrics (mean over the task's clients, weighted by val size).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from festa.client.local_training import round_seed
from festa.client.site_data import SiteData, simulated_site
from festa.server.federation import fedavg_by_task, initial_task_states, weighted_means
from festa.shared.config import FederationConfig
from festa.shared.model.body import Body
from festa.shared.train.task_model import TaskModel, cycle_batches, evaluate, make_loader, to_device


class FullModel(nn.Module):
    """head -> body -> tail in one module (no split)."""

    def __init__(self, task: str, cfg: FederationConfig, task_state: dict[str, torch.Tensor]):
        super().__init__()
        self.parts = TaskModel.build(task, cfg.model)
        self.parts.load_state_dict(task_state)  # festa's per-task initialisation
        self.head, self.tail = self.parts.head, self.parts.tail
        torch.manual_seed(cfg.seed)
        self.body = Body(cfg.model)


def _train(model: FullModel, cfg: FederationConfig, site: SiteData, r: int) -> int:
    seed = round_seed(cfg.seed, r, site.site_id)
    torch.manual_seed(seed)
    loader = make_loader(site.train, site.train_indices, cfg.optim.batch_size, True, seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    seen = 0
    for batch in cycle_batches(loader, cfg.local_steps):
        batch = to_device(batch, cfg.device)
        loss = model.parts.task.loss(model.tail(model.body(model.head(batch["image"]))), batch)
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


def run_baseline(cfg: FederationConfig, kind: str) -> dict[str, Any]:
    """`kind` = `local` or `fedavg`; returns {"final": per-task metrics, "bytes_per_client_round": int}."""
    if kind not in ("local", "fedavg"):
        raise ValueError(kind)
    sites = {s.site_id: s for s in (simulated_site(cfg, i) for i in range(cfg.clients))}
    initial = initial_task_states(cfg)
    models = {
        name: FullModel(site.task, cfg, initial[site.task]).to(cfg.device)
        for name, site in sites.items()
    }
    for r in range(1, cfg.rounds + 1):
        for name, site in sites.items():
            _train(models[name], cfg, site, r)
        examples = {name: len(site.train_indices) for name, site in sites.items()}
        if kind == "fedavg":
            names = list(sites)
            averaged = fedavg_by_task(
                [models[n].state_dict() for n in names],
                [sites[n].task for n in names],
                [examples[n] for n in names],
            )
            for n in names:
                models[n].load_state_dict(averaged[sites[n].task])
    params = sum(p.numel() for p in next(iter(models.values())).parameters())
    # FedAvg moves the whole fp32 model down and up once per round; local-only moves nothing.
    traffic = 2 * 4 * params if kind == "fedavg" else 0
    return {
        "final": _evaluate(models, sites, cfg),
        "bytes_per_client_round": traffic,
        "params": params,
    }
