"""The data one federated client holds: its partition of phantoms, or its site's folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from rich.table import Table

from festa.shared.config import FederationConfig
from festa.shared.data.datasets import CXRDataset, load_dataset, model_for_data
from festa.shared.data.partition import assign_tasks, natural, partition, partition_table
from festa.shared.data.site_datasets import (
    ResolvedFederation,
    declared_site_data,
    resolve_federation,
    site_indices,
)
from festa.shared.federation_file import SiteDeclaration, load_federation_file
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
    With a federation file, each client is one declared site and `parts` index its own data.
    """
    if cfg.federation:
        fed = declared_federation(cfg)
        parts = [np.arange(len(s.train)) for s in fed.sites]
        names = [s.declaration.id for s in fed.sites]
        tasks = [s.declaration.task for s in fed.sites]
        table, rows = partition_table(
            _offsets(parts, [len(s.train) for s in fed.sites]),
            np.concatenate([s.train.labels for s in fed.sites]),
            fed.class_names,
            tasks,
            names,
        )
        return parts, names, tasks, table, rows
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


def declared_federation(cfg: FederationConfig) -> ResolvedFederation:
    """The sites of `cfg.federation` with their data (checked against their tasks)."""
    data = cfg.data
    folder = data.source if data.source != "phantoms" else ""
    return _resolved(
        cfg.federation, folder, cfg.model.image_size, cfg.seed, data.train_split, data.val_split
    )


@lru_cache(maxsize=4)
def _resolved(
    path: str, folder: str, size: int, seed: int, train_split: str, val_split: str
) -> ResolvedFederation:
    fed = load_federation_file(path, data=folder or None)
    return resolve_federation(fed, size, seed, train_split, val_split)


def _offsets(parts: list[np.ndarray], sizes: list[int]) -> list[np.ndarray]:
    """Per-site index arrays shifted into one concatenated index space."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return [p + start for p, start in zip(parts, starts, strict=True)]


def simulated_site(cfg: FederationConfig, partition_id: int) -> SiteData:
    """Client `partition_id` of a simulated federation (its slice of the pooled data, or its
    declared site of the federation file)."""
    if cfg.federation:
        sites = declared_federation(cfg).sites
        if not 0 <= partition_id < len(sites):
            raise ValueError(
                f"partition {partition_id} out of range: the federation has {len(sites)} sites"
            )
        site = sites[partition_id]
        train_idx, val_idx = site_indices(site)
        decl = site.declaration
        return SiteData(decl.id, decl.task, site.train, train_idx, site.val, val_idx)
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
    # The same declaration a federation file holds (a demo site gets phantoms seeded by its id).
    site = SiteDeclaration(id=site_id, task=task, data=data_path)  # type: ignore[arg-type]
    train = declared_site_data(site, "train", image_size, seed)
    val = declared_site_data(site, "val", image_size, seed)
    return SiteData(site_id, task, train, task_indices(train, t), val, task_indices(val, t))


def config_for_data(cfg: FederationConfig) -> FederationConfig:
    """`cfg` made to fit its data: class names and counts from the sites' data, and with a
    federation file one client per declared site and the tasks they train. Raises
    FederationFileError (a ConfigError) when a site cannot serve its task."""
    if cfg.federation:
        fed = declared_federation(cfg)
        tasks = list(dict.fromkeys(s.declaration.task for s in fed.sites))
        update = {"clients": len(fed.sites), "tasks": tasks, "partition": "natural"}
        return cfg.model_copy(update={**update, "model": fed.model_config(cfg.model)})
    data = cfg.data
    pool = _pooled(data.source, data.train_split, cfg.model.image_size, data.train_size, cfg.seed)
    return cfg.model_copy(update={"model": model_for_data(cfg.model, pool)})
