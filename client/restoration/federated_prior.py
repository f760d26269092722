"""One diffusion image prior trained across hospitals with Flower (`festa restore train-prior
--federation FILE`): every round each site trains the shared UNet on its own images for a few
steps, and the server FedAvgs the UNets (weighted by each site's image count). Images never
leave their site: a ClientApp reads only its own site's rows of the federation file, and only
UNet weights and a loss travel in Flower messages.

The run uses Flower's simulation engine (Ray virtual SuperNodes, one per `[[site]]` of the
file, the engine `flwr run` uses) with the Message API: a ServerApp running Flower's
``FedAvg`` strategy and a ClientApp whose ``train`` handler is :func:`local_train`. The site of
SuperNode ``partition-id = i`` is the file's ``i``-th ``[[site]]``; a site's task is ignored (a
prior needs images only).

:func:`local_train` is also how a prior is trained on one site alone or on pooled data for the
comparison in ``simulations/bench_federated_prior.py`` (same loop, same loss, same steps).
The saved prior is a DDPMPipeline folder like ``train-prior``'s, so every solver can use it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel

from festa.client.restoration.training import (
    TrainConfig,
    build_unet,
    ddpm_loss,
    ddpm_scheduler,
    image_sampler,
    optimizer_step,
    save_pipeline,
    write_record,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FederatedPriorConfig:
    """A federated prior run: ``rounds`` x ``local_steps`` steps at every site."""

    federation: str  # path of the federation file
    rounds: int = 6
    local_steps: int = 12
    batch: int = 8
    lr: float = 1e-3
    seed: int = 0
    size: int = 64
    preset: str = "small"
    split: str = "train"  # the sites' split the prior trains on (never val)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.rounds * self.local_steps, batch=self.batch, lr=self.lr, seed=self.seed
        )


@dataclass
class FederatedPriorResult:
    """The averaged UNet and what each round exchanged (kept for tests and the record)."""

    unet: UNet2DModel
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: sites' arrays, counts


def site_images(
    federation: str, size: int, split: str = "train", skip_empty: bool = False
) -> list[tuple[str, np.ndarray]]:
    """``(site id, images [N, size, size] in [0, 1])`` of every site of a federation file; a
    site without ``split`` images raises ValueError, or is left out with ``skip_empty``."""
    from festa.shared.federation_file import load_federation_file

    out = []
    for site in load_federation_file(federation).site:
        try:
            out.append((site.id, _declared_images(site, split, size)))
        except ValueError:
            if not skip_empty:
                raise
    return out


def _declared_images(site: Any, split: str, size: int) -> np.ndarray:
    from festa.shared.data.site_datasets import declared_site_data

    data = declared_site_data(site, split, size)
    if len(data) == 0:
        raise ValueError(f"site {site.id}: no {split} images")
    return torch.stack([s["image"][0] for s in data.samples]).float().numpy()


@lru_cache(maxsize=4)
def _own_site_images(federation: str, index: int, size: int, split: str) -> np.ndarray:
    """The images of the ``index``-th site of ``federation`` (what one SuperNode holds)."""
    from festa.shared.federation_file import load_federation_file

    fed = load_federation_file(federation)
    if not 0 <= index < len(fed.site):
        raise ValueError(f"partition-id {index}: {federation} has {len(fed.site)} sites")
    return _declared_images(fed.site[index], split, size)


def local_train(
    unet: UNet2DModel, images: np.ndarray, steps: int, batch: int, lr: float, seed: int
) -> list[float]:
    """Train ``unet`` in place for ``steps`` DDPM steps on ``images`` ``[N, H, W]`` (a fresh
    AdamW, no EMA, batches drawn with ``seed``); returns the losses. Deterministic for a seed."""
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    sample, loss_fn = image_sampler(images), ddpm_loss(ddpm_scheduler())
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    unet.train()
    losses = []
    for step in range(steps):
        loss = loss_fn(unet, sample(batch, rng, gen), gen)
        optimizer_step(unet, opt, loss, f"local prior step {step + 1}")
        losses.append(loss.item())
    return losses


def round_seed(seed: int, server_round: int, site: int) -> int:
    """The batch seed of ``site`` in ``server_round``: distinct per site and round."""
    return seed * 1_000_003 + server_round * 1009 + site


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
        images = _own_site_images(
            str(conf["federation"]), index, int(conf["size"]), str(conf["split"])
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
            result.rounds.append({"round": server_round, "sites": sites})
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

    n_sites = len(load_federation_file(cfg.federation).site)
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.size, cfg.preset)
    result = FederatedPriorResult(unet)
    server_app = _server_app(cfg, unet, n_sites, result)
    _run_flower(server_app, make_client_app(), n_sites)
    if len(result.rounds) != cfg.rounds:
        raise RuntimeError(f"federated prior: {len(result.rounds)} of {cfg.rounds} rounds ran")
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
                "local-steps": cfg.local_steps,
                "batch": cfg.batch,
                "lr": cfg.lr,
                "seed": cfg.seed,
            }
        )
        res = _recording_fedavg(n_sites, result).start(
            grid, ArrayRecord(_state(unet)), num_rounds=cfg.rounds, train_config=config
        )
        unet.load_state_dict(res.arrays.to_torch_state_dict())

    return app


def _run_flower(server_app, client_app, n_sites: int) -> None:
    """Flower's simulation engine with one virtual SuperNode per site, at most one per core."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    cpus = os.cpu_count() or 1
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        _run_simulation(
            num_supernodes=n_sites,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app=server_app,
            client_app=client_app,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
    finally:
        if own_ray:
            ray.shutdown()


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts (what the server's FedAvg should compute)."""
    total = float(sum(weights))
    return {
        k: sum(w / total * s[k].double() for s, w in zip(states, weights, strict=True)).float()
        for k in states[0]
    }
