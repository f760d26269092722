"""One diffusion image prior trained across hospitals with Flower (`festa restore train-prior
--federation FILE`): every round each site trains the shared UNet on its own images for a few
steps, and the server FedAvgs the UNets (weighted by each site's image count). Images never
leave their site: a ClientApp reads only its own site's rows of the federation file, and only
UNet weights and a loss travel in Flower messages.

This module is the ML side and never imports Flower. The Flower glue is
:mod:`festa.client.restoration.federated_prior_flower`: a ServerApp running Flower's ``FedAvg``
(Message API), a ClientApp whose ``train`` handler calls :func:`local_train`, on Flower's
simulation engine (Ray virtual SuperNodes, the engine `flwr run` uses), one SuperNode per
``[[site]]``. The site of SuperNode ``partition-id = i`` is the file's ``i``-th ``[[site]]``;
a site's task is ignored (a prior needs images only).

:func:`local_train` is also how a prior is trained on one site alone or on pooled data for the
comparison in ``simulations/bench_federated_prior.py`` (same loop, same loss, same steps).
The saved prior is a DDPMPipeline folder like ``train-prior``'s, so every solver can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel

from festa.client.restoration.training import (
    TrainConfig,
    ddpm_loss,
    ddpm_scheduler,
    image_sampler,
    optimizer_step,
)


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
    data: str = ""  # replaces every site's data folder (as `festa simulate --data`); "": the file's
    actors: int = 1  # ClientApp actors running at once (~0.9 GB each); sites take turns

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.rounds * self.local_steps, batch=self.batch, lr=self.lr, seed=self.seed
        )


@dataclass
class FederatedPriorResult:
    """The averaged UNet and what each round exchanged (kept for tests and the record)."""

    unet: UNet2DModel
    # per round: "round", "sites" (index -> arrays, num-examples, train-loss), "average"
    rounds: list[dict[str, Any]] = field(default_factory=list)


def site_images(
    federation: str, size: int, split: str = "train", skip_empty: bool = False, data: str = ""
) -> list[tuple[str, np.ndarray]]:
    """``(site id, images [N, size, size] in [0, 1])`` of every site of a federation file
    (``data``: a folder replacing every site's); a site without ``split`` images raises
    ValueError, or is left out with ``skip_empty``."""
    from festa.shared.federation_file import load_federation_file

    out = []
    for site in load_federation_file(federation, data or None).site:
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
def own_site_images(
    federation: str, index: int, size: int, split: str, data: str = ""
) -> np.ndarray:
    """The images of the ``index``-th site of ``federation`` (what one SuperNode holds)."""
    from festa.shared.federation_file import load_federation_file

    fed = load_federation_file(federation, data or None)
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


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts (what the server's FedAvg should compute)."""
    total = float(sum(weights))
    return {
        k: sum(w / total * s[k].double() for s, w in zip(states, weights, strict=True)).float()
        for k in states[0]
    }


def fedavg_in_process(cfg: FederatedPriorConfig, sites: list[np.ndarray]) -> FederatedPriorResult:
    """The same rounds as the Flower run (same :func:`local_train`, seeds and FedAvg weights),
    computed in this process without Flower or Ray: for machines where Ray cannot start its
    actors (the test checks that the Flower run equals this arithmetic round by round)."""
    from festa.client.restoration.training import build_unet

    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.size, cfg.preset)
    result = FederatedPriorResult(unet)
    for server_round in range(1, cfg.rounds + 1):
        start = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        states, counts, losses = [], [], {}
        for index, images in enumerate(sites):
            unet.load_state_dict(start)
            seed = round_seed(cfg.seed, server_round, index)
            losses[index] = float(
                np.mean(local_train(unet, images, cfg.local_steps, cfg.batch, cfg.lr, seed))
            )
            states.append({k: v.detach().clone() for k, v in unet.state_dict().items()})
            counts.append(len(images))
        average = fedavg(states, counts)
        unet.load_state_dict(average)
        result.rounds.append(
            {
                "round": server_round,
                "average": average,
                "sites": {
                    i: {"arrays": st, "num-examples": c, "train-loss": losses[i]}
                    for i, (st, c) in enumerate(zip(states, counts, strict=True))
                },
            }
        )
    return result
