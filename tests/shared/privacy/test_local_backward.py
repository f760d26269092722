"""label_protection = "local-backward": a classification site returns only zero gradients, yet its
head trains on the exact gradient, through the body snapshot the server sends with `train`."""

from __future__ import annotations

import copy

import pytest
import torch

from festa.shared.config import FederationConfig, ModelConfig
from festa.shared.model import Body, Head
from festa.shared.model.split import LocalBodyLink, split_train_step
from festa.shared.privacy import CuriousBodyLink
from festa.shared.privacy.label_protection import (
    LocalBackwardLink,
    split_body_snapshot,
    with_body_snapshot,
)
from festa.shared.tasks import get_task
from tests.shared.privacy.conftest import one_classification_site

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
TASK = get_task("classification")


def _head_grads(link) -> list[torch.Tensor]:
    torch.manual_seed(0)
    head, tail = Head(CFG), TASK.build_tail(CFG)
    gen = torch.Generator().manual_seed(3)
    batch = {"image": torch.rand(8, 1, 32, 32, generator=gen), "label": torch.arange(8) % 3}
    split_train_step(head, tail, TASK.loss, batch, link, torch.Generator().manual_seed(1), True)
    return [p.grad.clone() for p in head.parameters()]


def test_the_head_gets_the_exact_gradient_and_the_server_only_zeros():
    torch.manual_seed(5)
    body = Body(CFG)
    exact = _head_grads(LocalBodyLink(copy.deepcopy(body)))
    server = CuriousBodyLink(copy.deepcopy(body))
    protected = _head_grads(LocalBackwardLink(server, copy.deepcopy(body)))
    assert len(server.grads) == 1 and not server.grads[0].any()
    assert any(g.abs().sum() > 0 for g in exact)
    for a, b in zip(exact, protected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # A different body in the snapshot changes the head's gradient: it really flows through it.
    other = _head_grads(LocalBackwardLink(CuriousBodyLink(copy.deepcopy(body)), Body(CFG)))
    assert not all(torch.allclose(a, b) for a, b in zip(exact, other, strict=True))


def test_snapshot_keys_round_trip_apart_from_the_task_state():
    body = Body(CFG).state_dict()
    task = {"head.w": torch.ones(2), "tail.b": torch.zeros(3)}
    state, weights = split_body_snapshot(with_body_snapshot(task, body))
    assert state.keys() == task.keys() and weights.keys() == body.keys()
    assert split_body_snapshot(task) == (task, {})


def _site_cfg(protection: str) -> FederationConfig:
    return one_classification_site(CFG, 3, 48, label_protection=protection)


def test_a_client_round_trains_the_head_and_returns_no_label_bearing_gradient():
    """`train_round`, the path every client takes: under tail-only only weight decay moves the
    head, local-backward trains it; both send only zero gradients."""
    from festa.client.local_training import train_round
    from festa.client.site_data import simulated_site
    from festa.shared.train.task_model import TaskModel

    moved = {}
    for protection in ("tail-only", "local-backward"):
        cfg = _site_cfg(protection)
        site = simulated_site(cfg, 0)
        torch.manual_seed(0)
        model = TaskModel.build("classification", cfg.model)
        head_before = copy.deepcopy(model.head.state_dict())
        body = Body(cfg.model)
        link = CuriousBodyLink(copy.deepcopy(body))
        snapshot = copy.deepcopy(body) if protection == "local-backward" else None
        train_round(cfg, site, model, link, 1, snapshot)
        assert len(link.grads) == cfg.local_steps and all(not g.any() for g in link.grads)
        moved[protection] = max(
            float((model.head.state_dict()[k] - v).abs().max()) for k, v in head_before.items()
        )
    assert moved["local-backward"] > 10 * moved["tail-only"]


def test_a_local_backward_site_without_a_snapshot_is_refused():
    from festa.client.local_training import train_round
    from festa.client.site_data import simulated_site
    from festa.shared.train.task_model import TaskModel

    cfg = _site_cfg("local-backward")
    model = TaskModel.build("classification", cfg.model)
    with pytest.raises(ValueError, match="no body snapshot"):
        train_round(cfg, simulated_site(cfg, 0), model, CuriousBodyLink(Body(cfg.model)), 1)


def test_a_federation_ships_the_snapshot_and_the_classification_head_learns(tmp_path):
    """The server's round sends the body with a classification site's `train` (in-process
    engine: the real round loop, client handlers and gRPC body service)."""
    from rich.console import Console

    from festa.server.federation import Federation, initial_task_states
    from festa.simulations.inprocess import InProcessTransport

    cfg = _site_cfg("local-backward").model_copy(
        update={"clients": 2, "tasks": ["classification", "segmentation"], "rounds": 2}
    )
    summary = Federation(cfg, tmp_path / "run", console=Console(quiet=True)).run(
        InProcessTransport(cfg)
    )
    assert summary["state"] == "finished"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False)
    start = initial_task_states(cfg)["classification"]
    head = {k: v for k, v in ckpt["task_states"]["classification"].items() if k.startswith("head")}
    assert head and max(float((v - start[k]).abs().max()) for k, v in head.items()) > 1e-3
    assert not any(k.startswith("body-snapshot.") for k in ckpt["task_states"]["classification"])
