"""Federated prior training: two Flower rounds in simulation over phantom sites; the server's
UNet is the FedAvg of what the sites sent, and each site trained on its own images only."""

from __future__ import annotations

from pathlib import Path

import torch

from festa.client.restoration.federated_prior import (
    FederatedPriorConfig,
    fedavg,
    fedavg_in_process,
    local_train,
    own_site_images,
    round_seed,
)
from festa.client.restoration.federated_prior_flower import train_federated_prior
from festa.client.restoration.models import load_prior
from festa.client.restoration.training import build_unet

FEDERATION = """
[[site]]
id = "a"
task = "segmentation"
data = "phantoms"
phantoms = 6

[[site]]
id = "b"
task = "segmentation"
data = "phantoms"
phantoms = 12
"""


def test_two_federated_rounds_average_the_sites_unets(tmp_path: Path) -> None:
    fed = tmp_path / "federation.toml"
    fed.write_text(FEDERATION)
    cfg = FederatedPriorConfig(
        federation=str(fed), rounds=2, local_steps=2, batch=2, size=32, preset="tiny"
    )
    result = train_federated_prior(cfg, out=tmp_path / "prior")

    assert [r["round"] for r in result.rounds] == [1, 2]
    last = result.rounds[-1]["sites"]
    assert sorted(last) == [0, 1] and [last[i]["num-examples"] for i in (0, 1)] == [6, 12]
    expected = fedavg([last[i]["arrays"] for i in (0, 1)], [6, 12])
    for k, v in result.unet.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)
    # the sites sent different weights, so the average is not one site's model
    k = next(iter(expected))
    assert not torch.equal(last[0]["arrays"][k], last[1]["arrays"][k])

    # Site b's round-2 update is local training from the round-1 average on b's own images.
    start = build_unet(32, "tiny")
    start.load_state_dict(result.rounds[0]["average"])  # what the server sent in round 2
    local_train(
        start,
        own_site_images(str(fed.resolve()), 1, 32, "train"),
        2,
        2,
        cfg.lr,
        round_seed(cfg.seed, 2, 1),
    )
    for k, v in start.state_dict().items():
        torch.testing.assert_close(v, last[1]["arrays"][k], rtol=1e-5, atol=1e-6)

    # The in-process engine runs the same arithmetic (used where Ray cannot start actors).
    plain = fedavg_in_process(
        cfg, [own_site_images(str(fed.resolve()), i, 32, "train") for i in (0, 1)]
    )
    # Flower averages in float32, fedavg in float64; through Adam a rare weight with a ~0
    # gradient can then differ by up to 2 lr, while a wrong site, seed or weighting moves most
    # weights by ~lr: compare the share of weights that agree.
    diffs = torch.cat(
        [
            (v - result.unet.state_dict()[k]).abs().flatten()
            for k, v in plain.unet.state_dict().items()
        ]
    )
    assert (diffs > 1e-5).float().mean() < 1e-3, (diffs > 1e-5).float().mean()

    prior = load_prior(tmp_path / "prior")  # saved as a DDPMPipeline folder every solver loads
    assert prior.size == 32
