"""`festa simulate`: a non-IID federation on one machine through Flower's simulation engine."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from festa.shared.config import FederationConfig
from festa.shared.runinfo import write_json

log = logging.getLogger(__name__)


def run_simulation(
    cfg: FederationConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    store_path: str | Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run `cfg` with `cfg.clients` virtual SuperNodes; returns the run's summary."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation as flwr_run_simulation

    from festa.client.flower_app import app as client_app
    from festa.client.site_data import federation_plan
    from festa.server.flower_app import make_server_app
    from festa.server.run_plots import write_report

    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts, names, tasks, table, rows = federation_plan(cfg)
    if len(parts) != cfg.clients:
        cfg = cfg.model_copy(update={"clients": len(parts)})
    console.print(table)
    write_json(out / "partition.json", rows)

    cpus = os.cpu_count() or 1
    backend = {
        # Every client must run at once: sync mode waits for all of them at each body step.
        "client_resources": {"num_cpus": cpus / cfg.clients, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": True},
    }
    store = None
    if store_path is not None:
        from festa.server.store import RunStore

        Path(store_path).parent.mkdir(parents=True, exist_ok=True)
        store = RunStore(store_path)
    started = time.time()
    # Start Ray before the ServerApp opens the gRPC body service: Ray forks its daemons, and a
    # fork while gRPC threads run can leave them hung (Flower reuses an initialised Ray).
    import ray

    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(**backend["init_args"], logging_level=logging.WARNING)
    try:
        with _workers_for_every_client(cfg.clients):
            flwr_run_simulation(
                server_app=make_server_app(cfg, out, resume=resume, store=store),
                client_app=client_app,
                num_supernodes=cfg.clients,
                backend_config=backend,
            )
    finally:
        if own_ray:
            ray.shutdown()
        if store is not None:
            store.close()
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without a summary; see the log above and {out}")
    write_report(out)
    console.print(f"done in {time.time() - started:.0f} s -> {out}")
    import json

    return json.loads(summary_path.read_text())


@contextlib.contextmanager
def _workers_for_every_client(clients: int) -> Iterator[None]:
    """Let Flower's simulation engine run `clients` ClientApps at once.

    flwr 1.42's engine (`vce_api`) submits its per-actor workers to a `ThreadPoolExecutor()`
    with the default size min(32, cores + 4): 6 on a 2-core machine, so only 6 virtual clients
    run at a time even with one Ray actor per client. Sync body steps wait for every client, so
    the 7th and later clients missed the step deadline and were dropped (measured: 10 of 16
    dropped in every round). Within this block the engine's pool gets one thread per client.
    """
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.ThreadPoolExecutor
    default = min(32, (os.cpu_count() or 1) + 4)
    vce_api.ThreadPoolExecutor = functools.partial(original, max_workers=max(clients, default))
    try:
        yield
    finally:
        vce_api.ThreadPoolExecutor = original
