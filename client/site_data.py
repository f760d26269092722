"""The data one federated client holds: its partition of phantoms, or its site's folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from rich.table import Table

from festa.shared.config import FederationConfig
from festa.shared.data.datasets import CXRDataset, folder_dataset, load_dataset, phantom_dataset
from festa.shared.data.partition import assign_tasks, natural, partition, partition_table
from festa.shared.tasks import get_task
from festa.shared.train.task_model import task_indices


@dataclass
class SiteData:
    """A client's training pool and validation set, restricted to samples its task can use."""

    site_id: str
    task: str
    train: CXRDataset
    train_indices: np.ndarray
    val: CXRDataset
    val_indices: np.ndarray
    restoration: dict[str, int] = field(default_factory=dict)  # restored/pending/quarantined counts


@lru_cache(maxsize=4)
def _pooled(source: str, split: str, size: int, n: int, seed: int) -> CXRDataset:
    # Virtual clients that share a process (one Ray actor) share one copy of the pool.
    return load_dataset(source, split, size, n, seed)


def federation_plan(
    cfg: FederationConfig,
) -> tuple[list[np.ndarray], list[str], list[str], Table, list[dict]]:
    """Partition of the pooled training data into clients: (parts, client names, tasks, table, rows).

    Deterministic in the config, so the server and every simulated client compute the same plan.
    """
    data = cfg.data
    pool = _pooled(data.source, data.train_split, cfg.model.image_size, data.train_size, cfg.seed)
    if cfg.partition == "natural":
        parts, names = natural(pool.sites)
        tasks = assign_tasks(len(parts), cfg.tasks)
    else:
        # Each task group gets a disjoint random share of the pool, then the skew is applied
        # among that group's clients: non-IID within every task, yet every task sees every class.
        tasks = assign_tasks(cfg.clients, cfg.tasks)
        shares = np.array_split(
            np.random.default_rng(cfg.seed).permutation(len(pool)), len(cfg.tasks)
        )
        parts = [np.empty(0, dtype=np.int64)] * cfg.clients
        for t, task in enumerate(cfg.tasks):
            members = [i for i, name in enumerate(tasks) if name == task]
            share = np.sort(shares[t])
            sub = partition(
                cfg.partition,
                pool.labels[share],
                [pool.sites[i] for i in share],
                len(members),
                cfg.seed + t,
            )
            for client, idx in zip(members, sub, strict=True):
                parts[client] = share[idx]
        names = [f"client-{i}" for i in range(len(parts))]
    table, rows = partition_table(parts, pool.labels, pool.class_names, tasks, names)
    return parts, names, tasks, table, rows


def simulated_site(cfg: FederationConfig, partition_id: int) -> SiteData:
    """Client `partition_id` of a simulated federation (its slice of the pooled data)."""
    parts, names, tasks, _, _ = federation_plan(cfg)
    if not 0 <= partition_id < len(parts):
        raise ValueError(
            f"partition {partition_id} out of range: the plan has {len(parts)} clients"
        )
    data = cfg.data
    size = cfg.model.image_size
    train = _pooled(data.source, data.train_split, size, data.train_size, cfg.seed)
    val = _pooled(data.source, data.val_split, size, data.val_size, cfg.seed)
    task = get_task(tasks[partition_id])
    val_pool = None
    if data.source != "phantoms":  # real sites validate on their own val rows
        val_pool = np.asarray([i for i, s in enumerate(val.sites) if s == names[partition_id]])
    return SiteData(
        site_id=names[partition_id],
        task=task.name,
        train=train,
        train_indices=task_indices(train, task, parts[partition_id]),
        val=val,
        val_indices=task_indices(val, task, val_pool),
    )


def deployed_site(
    site_id: str, task: str, data_path: str, image_size: int, seed: int = 0
) -> SiteData:
    """A deployed site's own folder (`data_path` with a manifest), or `phantoms` for a demo site."""
    t = get_task(task)
    if data_path == "phantoms":
        # A demo site: its own phantom set, seeded by its id so sites differ.
        site_seed = seed + sum(site_id.encode())
        train = phantom_dataset(300, image_size, site_seed, site=site_id)
        val = phantom_dataset(100, image_size, site_seed + 100_003, site=site_id)
    else:
        train = folder_dataset(data_path, size=image_size, split="train")
        val = folder_dataset(data_path, size=image_size, split="val")
    return SiteData(site_id, task, train, task_indices(train, t), val, task_indices(val, t))
