"""`festa simulate`: a non-IID federation on one machine.

Two engines run the same `festa.server.federation.Federation` round loop and the same client
handlers against the same gRPC body service:

- "flower" (default): Flower's simulation engine (Ray virtual SuperNodes), the engine `flwr run`
  uses for simulation, so the Flower glue (`festa.server.flower_app`, `festa.client.flower_app`) runs too;
- "inprocess": `festa.simulations.inprocess.InProcessTransport`, every client a plain object in this
  process (no Ray, no Flower messages): for fast experiments.
"""

from __future__ import annotations

import contextlib
import functools
import json
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

ENGINES = ("flower", "inprocess")


def run_simulation(
    cfg: FederationConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    store_path: str | Path | None = None,
    console: Console | None = None,
    engine: str = "flower",
) -> dict[str, Any]:
    """Run `cfg` with `cfg.clients` simulated sites on `engine` ("flower": Flower's simulation
    engine, or "inprocess"); returns the run's summary."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    from festa.client.site_data import federation_plan
    from festa.server.run_plots import write_report

    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts, names, tasks, table, rows = federation_plan(cfg)
    if len(parts) != cfg.clients:
        cfg = cfg.model_copy(update={"clients": len(parts)})
    console.print(table)
    write_json(out / "partition.json", rows)

    store = None
    if store_path is not None:
        from festa.server.store import RunStore

        Path(store_path).parent.mkdir(parents=True, exist_ok=True)
        store = RunStore(store_path)
    started = time.time()
    try:
        if engine == "inprocess":
            from festa.server.federation import Federation
            from festa.simulations.inprocess import InProcessTransport

            Federation(cfg, out, resume=resume, store=store, console=console).run(
                InProcessTransport(cfg)
            )
        else:
            _run_flower(cfg, out, resume, store)
    finally:
        if store is not None:
            store.close()
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without a summary; see the log above and {out}")
    write_report(out)
    console.print(f"done in {time.time() - started:.0f} s -> {out}")
    return json.loads(summary_path.read_text())


def _run_flower(cfg: FederationConfig, out: Path, resume: bool, store: Any) -> None:
    """The run on Flower's simulation engine: `cfg.clients` Ray virtual SuperNodes.

    flwr 1.42 deprecates its Python entry point `flwr.simulation.run_simulation` in favour of
    `flwr run`, whose simulation runtime (`flwr.simulation.app`) calls
    `flwr.simulation.run_simulation._run_simulation` with the apps it loaded. We call that
    function with our apps directly: the same engine as `flwr run`, without the deprecation
    banner, and with the run's config, run store and output folder passed as objects.
    """
    # Ray's FutureWarning about overriding accelerator env vars for num_gpus=0: opt into the
    # future behaviour (we never use GPUs in simulated clients). Must be set before Ray starts.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.supercore.telemetry import EventType
    from flwr.simulation.run_simulation import _run_simulation

    from festa.client.flower_app import app as client_app
    from festa.server.flower_app import make_server_app

    cpus = os.cpu_count() or 1
    backend = {
        # Every client must run at once: sync mode waits for all of them at each body step.
        "client_resources": {"num_cpus": cpus / cfg.clients, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": True},
    }
    # Start Ray before the ServerApp opens the gRPC body service: Ray forks its daemons, and a
    # fork while gRPC threads run can leave them hung (Flower reuses an initialised Ray).
    import ray

    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(**backend["init_args"], logging_level=logging.WARNING)
    try:
        with _workers_for_every_client(cfg.clients):
            _run_simulation(
                num_supernodes=cfg.clients,
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                server_app=make_server_app(cfg, out, resume=resume, store=store),
                client_app=client_app,
                backend_config=backend,
            )
    finally:
        if own_ray:
            ray.shutdown()


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
