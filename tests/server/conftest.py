"""Fixtures for the server tests: a run store filled the way a real 2-task, 4-site run fills it."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from festa.server.store import RunStore

SITES = {
    "site-a": "classification",
    "site-b": "classification",
    "site-c": "segmentation",
    "site-d": "segmentation",
}
PHASE_OF_ROUND = {1: "warmup", 2: "task-agnostic", 3: "task-specific", 4: "finetune"}


class FakeClock:
    """UTC epoch seconds that advance only when told (deterministic round times)."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_round(store: RunStore, run_id: int, rnd: int, clock: FakeClock | None = None) -> None:
    """Write one round through the public writer API, as the ServerApp would: every site
    trains (site-d drops out of round 2), tasks get aggregated metrics, the body reports
    throughput, sites report restoration counts, a checkpoint is written."""
    rng = random.Random(rnd)
    store.start_round(run_id, rnd, PHASE_OF_ROUND.get(rnd, "finetune"))
    for i, (site, task) in enumerate(SITES.items()):
        node = 1000 + i
        if rnd == 2 and site == "site-d":
            store.record_client_round(run_id, rnd, node, site, task, 0, 0, 512, dropped="timeout")
            store.record_event(
                run_id, "node_dropped", f"{site} timed out", node_id=node, site_id=site
            )
            continue
        store.record_client_round(
            run_id,
            rnd,
            node,
            site,
            task,
            num_examples=100 + 10 * i,
            bytes_in=50_000 * rnd + i,
            bytes_out=40_000 * rnd + i,
            metrics={"loss": round(1.0 / rnd + 0.01 * i, 4)},
        )
        store.record_restoration(
            run_id, rnd, site, restored=5 * rnd + i, pending=3 - min(rnd, 3), quarantined=i % 2
        )
    for t, task in enumerate(sorted(set(SITES.values()))):
        metric = "auroc" if task == "classification" else "dice"
        store.record_task_metrics(
            run_id,
            rnd,
            task,
            {
                "loss": round(1.2 / rnd + 0.1 * t, 4),
                metric: round(0.5 + 0.1 * rnd + rng.random() * 0.01, 4),
            },
        )
    store.record_body_throughput(run_id, rnd, tokens_per_s=12_000.0 + 100 * rnd, steps=40)
    if clock is not None:
        clock.advance(30.0)
    store.finish_round(run_id, rnd)
    store.record_checkpoint(run_id, rnd, f"runs/ckpt/round-{rnd}.pt")


def fill_demo_run(
    store: RunStore, rounds: int = 3, num_rounds: int = 5, clock: FakeClock | None = None
) -> int:
    """A run with two tasks and four sites that has gone through `rounds` of `num_rounds`."""
    run_id = store.create_run("demo-2task", {"num_rounds": num_rounds, "model": "tiny", "seed": 0})
    for i, (site, task) in enumerate(SITES.items()):
        store.mark_client(run_id, site, online=True, node_id=1000 + i, task=task)
        store.record_event(
            run_id, "node_joined", f"{site} joined ({task})", node_id=1000 + i, site_id=site
        )
    for rnd in range(1, rounds + 1):
        write_round(store, run_id, rnd, clock)
    return run_id


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "festa.db"


@pytest.fixture
def demo_store(store_path: Path, clock: FakeClock) -> tuple[RunStore, int]:
    """A file-backed store holding a 3-of-5-round demo run (fake clock, 30 s per round)."""
    store = RunStore(store_path, clock=clock)
    run_id = fill_demo_run(store, clock=clock)
    yield store, run_id
    store.close()


@pytest.fixture
def demo_writers() -> tuple[Callable[..., int], Callable[..., None]]:
    """(fill_demo_run, write_round) for tests that write more as they go."""
    return fill_demo_run, write_round
