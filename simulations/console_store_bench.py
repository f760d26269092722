"""Run-store and console cost: how fast the ServerApp can write, how long one console poll takes.

    python -m festa.simulations.console_store_bench [--rounds 100] [--clients 20] [--append]

Writes a synthetic run (every client every round, task metrics, throughput, restoration,
events) into a fresh SQLite store through the public writer API, then times the console's
2-second poll (GET /api/runs/{id}/snapshot over real HTTP) and the CLI readers.
Prints a table; --append adds it to BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from festa.server.console import ConsoleServer
from festa.server.store import RunStore

app = typer.Typer(add_completion=False)


def _write_run(store: RunStore, rounds: int, clients: int, seed: int) -> tuple[int, int, float]:
    """Returns (run_id, writer calls, seconds)."""
    rng = random.Random(seed)
    tasks = ["classification", "segmentation"]
    run_id = store.create_run("bench", {"num_rounds": rounds, "seed": seed})
    calls, start = 1, time.perf_counter()
    for rnd in track(range(1, rounds + 1), description="writing rounds"):
        store.start_round(run_id, rnd, "task-agnostic")
        for c in range(clients):
            site, task = f"site-{c:03d}", tasks[c % 2]
            store.record_client_round(
                run_id, rnd, c, site, task, 100, 50_000, 40_000, {"loss": rng.random()}
            )
            store.record_restoration(run_id, rnd, site, rnd, 1, 0)
            calls += 2
        for task in tasks:
            store.record_task_metrics(
                run_id, rnd, task, {"loss": rng.random(), "auc": rng.random()}
            )
        store.record_body_throughput(run_id, rnd, 10_000.0, 40)
        store.record_event(run_id, "round", f"round {rnd} done")
        store.finish_round(run_id, rnd)
        calls += 6
    return run_id, calls, time.perf_counter() - start


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@app.command()
def main(
    rounds: Annotated[int, typer.Option(help="Rounds to write.")] = 100,
    clients: Annotated[int, typer.Option(help="Clients per round.")] = 20,
    seed: int = 0,
    append: Annotated[bool, typer.Option(help="Append the table to BENCHMARKS.md.")] = False,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "festa.db")
        run_id, calls, secs = _write_run(store, rounds, clients, seed)
        size_kb = (Path(tmp) / "festa.db").stat().st_size / 1024
        with ConsoleServer(store) as server, httpx.Client(base_url=server.url) as http:
            poll = _median_ms(
                lambda: http.get(f"/api/runs/{run_id}/snapshot").raise_for_status(), 20
            )
            body = len(http.get(f"/api/runs/{run_id}/snapshot").content) / 1024
        readers = _median_ms(
            lambda: (store.run(run_id), store.rounds(run_id), store.clients(run_id)), 20
        )
        store.close()
    rows = [
        ("rounds x clients", f"{rounds} x {clients}"),
        ("writer calls", f"{calls}"),
        ("writer calls / s", f"{calls / secs:,.0f}"),
        ("store file", f"{size_kb:,.0f} KB"),
        ("console poll (snapshot over HTTP), median", f"{poll:.1f} ms"),
        ("snapshot body", f"{body:,.0f} KB"),
        ("status+rounds+clients readers, median", f"{readers:.1f} ms"),
    ]
    table = Table(title="run store / console cost")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if append:
        machine = f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip()
        lines = [
            f"\n## console_store_bench ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}, "
            f"python -m festa.simulations.console_store_bench --rounds {rounds} --clients {clients})\n",
            "| measure | value |",
            "|---|---|",
            *[f"| {a} | {b} |" for a, b in rows],
        ]
        with open("BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app()
