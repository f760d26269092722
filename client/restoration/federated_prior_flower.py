"""Flower glue of the federated diffusion prior (`festa restore train-prior --federation FILE`):
a ServerApp running Flower's ``FedAvg`` over every site each round, a ClientApp whose ``train``
handler unpacks the UNet, calls :func:`festa.client.restoration.federated_prior.local_train` on
this SuperNode's own site and packs the weights back, and Flower's simulation engine with one
virtual SuperNode per site (at most one running per CPU core). Only UNet weights, the image
count and a loss travel in messages; the ML code lives in ``federated_prior``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

from festa.client.restoration.federated_prior import (
    FederatedPriorConfig,
    FederatedPriorResult,
    local_train,
    own_site_images,
    round_seed,
)
from festa.client.restoration.training import build_unet, save_pipeline, write_record


def _state(unet: UNet2DModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def make_client_app():
    """The ClientApp: ``train`` loads the global UNet, trains it on this SuperNode's own site
    and returns the weights with ``num-examples`` (its image count)."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        conf = msg.content["config"]
        index = int(context.node_config["partition-id"])
        images = own_site_images(
            str(conf["federation"]), index, int(conf["size"]), str(conf["split"]), str(conf["data"])
        )
        unet = build_unet(int(conf["size"]), str(conf["preset"]))
        unet.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        seed = round_seed(int(conf["seed"]), int(conf["server-round"]), index)
        losses = local_train(
            unet, images, int(conf["local-steps"]), int(conf["batch"]), float(conf["lr"]), seed
        )
        metrics = MetricRecord(
            {"num-examples": len(images), "site-index": index, "train-loss": float(np.mean(losses))}
        )
        content = RecordDict({"arrays": ArrayRecord(unet.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    return app


def _recording_fedavg(n_sites: int, result: FederatedPriorResult):
    """Flower's FedAvg over every site each round, keeping each round's site weights."""
    from flwr.serverapp.strategy import FedAvg

    class RecordingFedAvg(FedAvg):
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            sites = {}
            for r in replies:
                if r.has_content():
                    m = r.content["metrics"]
                    sites[int(m["site-index"])] = {
                        "arrays": r.content["arrays"].to_torch_state_dict(),
                        "num-examples": int(m["num-examples"]),
                        "train-loss": float(m["train-loss"]),
                    }
            arrays, metrics = super().aggregate_train(server_round, replies)
            average = arrays.to_torch_state_dict() if arrays is not None else {}
            result.rounds.append({"round": server_round, "sites": sites, "average": average})
            return arrays, metrics

    return RecordingFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=n_sites,
        min_evaluate_nodes=0,
        min_available_nodes=n_sites,
    )


def train_federated_prior(
    cfg: FederatedPriorConfig, out: Path | None = None
) -> FederatedPriorResult:
    """Run ``cfg.rounds`` Flower rounds over the sites of ``cfg.federation`` and return the
    averaged UNet; with ``out``, save it as a DDPMPipeline folder with its record."""
    from festa.shared.federation_file import load_federation_file

    n_sites = len(load_federation_file(cfg.federation, cfg.data or None).site)
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.size, cfg.preset)
    result = FederatedPriorResult(unet)
    server_app = _server_app(cfg, unet, n_sites, result)
    _run_flower(server_app, make_client_app(), n_sites, cfg.actors)
    if len(result.rounds) != cfg.rounds:
        raise RuntimeError(f"federated prior: {len(result.rounds)} of {cfg.rounds} rounds ran")
    short = [r["round"] for r in result.rounds if len(r["sites"]) < n_sites]
    if short:
        raise RuntimeError(
            f"federated prior: rounds {short} lost sites (a ClientApp failed, e.g. killed for "
            "memory); the average is not over every site"
        )
    if out is not None:
        save_pipeline(result.unet, out)
        losses = [s["train-loss"] for r in result.rounds for s in r["sites"].values()]
        write_record(
            out,
            "image-prior",
            cfg.train_config(),
            losses,
            {
                "data": f"federation {cfg.federation}",
                "federated": asdict(cfg),
                "sites": n_sites,
                "size": cfg.size,
                "preset": cfg.preset,
                "round_losses": [
                    {str(i): s["train-loss"] for i, s in sorted(r["sites"].items())}
                    for r in result.rounds
                ],
            },
        )
    return result


def _server_app(cfg: FederatedPriorConfig, unet: UNet2DModel, n_sites: int, result):
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = ConfigRecord(
            {
                "federation": str(Path(cfg.federation).resolve()),
                "size": cfg.size,
                "preset": cfg.preset,
                "split": cfg.split,
                "data": str(Path(cfg.data).resolve()) if cfg.data else "",
                "local-steps": cfg.local_steps,
                "batch": cfg.batch,
                "lr": cfg.lr,
                "seed": cfg.seed,
            }
        )
        res = _recording_fedavg(n_sites, result).start(
            grid, ArrayRecord(_state(unet)), num_rounds=cfg.rounds, train_config=config
        )
        arrays = res.arrays.to_torch_state_dict() if res.arrays is not None else {}
        if arrays:  # else every site failed; train_federated_prior reports the lost rounds
            unet.load_state_dict(arrays)

    return app


def _run_flower(server_app, client_app, n_sites: int, actors: int) -> None:
    """Flower's simulation engine with one virtual SuperNode per site and at most ``actors``
    ClientApp actors at once (each holds torch + diffusers, ~0.9 GB; the sites take turns,
    which FedAvg does not mind)."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    cpus = os.cpu_count() or 1
    actors = max(1, min(cpus, actors))
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        _run_simulation(
            num_supernodes=n_sites,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app=server_app,
            client_app=client_app,
            backend_config={"client_resources": {"num_cpus": cpus / actors, "num_gpus": 0.0}},
        )
    finally:
        if own_ray:
            ray.shutdown()
