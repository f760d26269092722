"""Non-IID partitioners: which samples each federated client holds, and which task it trains."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.table import Table

Partition = list[np.ndarray]  # one index array per client


def natural(sites: Sequence[str]) -> tuple[Partition, list[str]]:
    """One client per site (sorted by site name); returns the partition and the site names."""
    names = sorted(set(sites))
    arr = np.asarray(sites)
    return [np.nonzero(arr == name)[0] for name in names], names


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0, min_size: int = 2
) -> Partition:
    """Label skew: each class is split over clients with proportions ~ Dirichlet(alpha).

    Smaller alpha gives more skew. Redraws (up to 100 times) until every client has
    at least `min_size` samples.
    """
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    if num_clients * min_size > len(labels):
        raise ValueError(f"{len(labels)} samples cannot give {num_clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.nonzero(labels == cls)[0])
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client] += chunk.tolist()
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not draw a Dirichlet({alpha}) partition with {min_size}+ per client")


def quantity_skew(
    num_samples: int, num_clients: int, seed: int = 0, alpha: float = 1.0
) -> Partition:
    """Quantity skew: IID labels, client sizes drawn from Dirichlet(alpha) (each ≥ 1 sample)."""
    if num_clients > num_samples:
        raise ValueError("more clients than samples")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(num_samples)
    props = rng.dirichlet(np.full(num_clients, alpha))
    sizes = np.maximum(1, np.floor(props * (num_samples - num_clients)).astype(int) + 1)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(idx, cuts)]


def iid(num_samples: int, num_clients: int, seed: int = 0) -> Partition:
    rng = np.random.default_rng(seed)
    return [np.sort(p) for p in np.array_split(rng.permutation(num_samples), num_clients)]


def assign_tasks(num_clients: int, tasks: Sequence[str]) -> list[str]:
    """Task of each client: round-robin over `tasks`, so every task gets ⌊n/T⌋ or ⌈n/T⌉ clients."""
    if not tasks:
        raise ValueError("no tasks to assign")
    return [tasks[i % len(tasks)] for i in range(num_clients)]


def partition(
    spec: str, labels: np.ndarray, sites: Sequence[str], num_clients: int, seed: int = 0
) -> Partition:
    """Partition from a spec: `natural`, `dirichlet:ALPHA`, `quantity[:ALPHA]` or `iid`."""
    kind, _, arg = spec.partition(":")
    if kind == "natural":
        parts, _ = natural(sites)
        return parts
    if kind == "dirichlet":
        return dirichlet(labels, num_clients, float(arg or 0.5), seed)
    if kind == "quantity":
        return quantity_skew(len(labels), num_clients, seed, float(arg or 1.0))
    if kind == "iid":
        return iid(len(labels), num_clients, seed)
    raise ValueError(f"unknown partition {spec!r}: use natural, dirichlet:ALPHA, quantity or iid")


def partition_table(
    parts: Partition,
    labels: np.ndarray,
    class_names: Sequence[str],
    client_tasks: Sequence[str] | None = None,
    client_names: Sequence[str] | None = None,
) -> tuple[Table, list[dict]]:
    """A rich table (clients x classes x counts) and the same rows as plain dicts for the record."""
    table = Table(title="partition")
    table.add_column("client")
    if client_tasks:
        table.add_column("task")
    for name in class_names:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    rows = []
    for i, idx in enumerate(parts):
        counts = [int((labels[idx] == c).sum()) for c in range(len(class_names))]
        name = client_names[i] if client_names else str(i)
        row = {
            "client": name,
            "counts": dict(zip(class_names, counts, strict=True)),
            "total": len(idx),
        }
        cells = [name]
        if client_tasks:
            row["task"] = client_tasks[i]
            cells.append(client_tasks[i])
        table.add_row(*cells, *map(str, counts), str(len(idx)))
        rows.append(row)
    return table, rows
