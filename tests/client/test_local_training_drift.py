"""The client's drift remedies on the real `train_round` path (local body link, tiny model)."""

from __future__ import annotations

import numpy as np
import torch

from festa.client import local_training
from festa.client.local_training import round_loader, train_round, training_loss
from festa.client.site_data import simulated_site
from festa.shared.config import DataConfig, DriftConfig, FederationConfig, ModelConfig
from festa.shared.model.body import Body
from festa.shared.model.split import LocalBodyLink
from festa.shared.train.drift import log_class_prior, logit_adjusted_loss
from festa.shared.train.task_model import TaskModel, cycle_batches

CFG = FederationConfig(
    model=ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2),
    data=DataConfig(train_size=60, val_size=12),
    tasks=["classification", "segmentation"],
    clients=2,
    partition="dirichlet:0.3",
    local_steps=4,
    degrade="none",
    restore="none",
)


def _cfg(**drift) -> FederationConfig:
    return CFG.model_copy(update={"drift": DriftConfig(**drift)})


def test_classification_sites_train_on_logits_shifted_by_their_own_prior():
    site = simulated_site(CFG, 0)
    assert site.task == "classification"
    model = TaskModel.build(site.task, CFG.model)
    batch = {"label": torch.tensor([0, 1, 2, 2])}
    logits = torch.randn(4, 3)
    prior = log_class_prior(site.train.labels[site.train_indices], 3)
    adjusted = training_loss(_cfg(logit_adjustment=0.7), site, model)(logits, batch)
    assert torch.allclose(adjusted, logit_adjusted_loss(prior, 0.7)(logits, batch))
    plain = training_loss(_cfg(logit_adjustment=0.0), site, model)(logits, batch)
    assert torch.allclose(plain, model.task.loss(logits, batch))
    assert not torch.allclose(adjusted, plain)  # the site's prior is skewed, not uniform
    seg = simulated_site(CFG, 1)
    seg_model = TaskModel.build(seg.task, CFG.model)
    assert training_loss(_cfg(logit_adjustment=1.0), seg, seg_model) == seg_model.task.loss


def _distance_after_round(cfg: FederationConfig) -> float:
    site = simulated_site(cfg, 0)
    torch.manual_seed(0)
    model = TaskModel.build(site.task, cfg.model)
    start = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    train_round(cfg, site, model, LocalBodyLink(Body(cfg.model)), 1)
    with torch.no_grad():
        return float(
            sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True)).sqrt()
        )


def test_the_proximal_term_keeps_the_round_close_to_the_global_weights():
    free = _distance_after_round(_cfg(proximal_mu=0.0))
    held = _distance_after_round(_cfg(proximal_mu=1e3))
    assert held < 0.6 * free


def test_persistent_client_optimizer_continues_its_adam_state():
    cfg = _cfg(client_optimizer="persist")
    site = simulated_site(cfg, 0)
    model = TaskModel.build(site.task, cfg.model)
    link = LocalBodyLink(Body(cfg.model))
    key = (cfg.model_dump_json(), site.site_id)
    local_training._OPTIMIZER_STATES.pop(key, None)
    train_round(cfg, site, model, link, 1)
    train_round(cfg, site, model, link, 2)
    (state,) = local_training._OPTIMIZER_STATES[key]
    steps = {float(s["step"]) for s in state["state"].values()}
    assert steps == {2.0 * cfg.local_steps}  # 8 Adam steps, not a fresh 4
    fresh = _cfg(client_optimizer="fresh")
    train_round(fresh, simulated_site(fresh, 0), model, link, 1)
    assert (fresh.model_dump_json(), site.site_id) not in local_training._OPTIMIZER_STATES


def test_class_balanced_sampling_draws_a_classification_sites_batches_in_equal_shares():
    cfg = _cfg(sampling="class-balanced").model_copy(
        update={"partition": "dirichlet:0.1", "clients": 4}
    )
    site = simulated_site(cfg, 0)
    pool = np.bincount(site.train.labels[site.train_indices], minlength=3)
    assert pool.max() > 2 * pool[pool > 0].min()  # the site's pool is skewed
    labels = torch.cat([b["label"] for b in cycle_batches(round_loader(cfg, site, 1), 4)])
    counts = np.bincount(labels.numpy(), minlength=3)
    assert len(labels) == cfg.local_steps * cfg.optim.batch_size
    assert counts[pool > 0].max() - counts[pool > 0].min() <= 1 and (counts[pool == 0] == 0).all()
    # the logit adjustment follows the sampled prior, not the pool's
    model = TaskModel.build(site.task, cfg.model)
    batch, logits = {"label": torch.tensor([0, 1, 2, 2])}, torch.randn(4, 3)
    prior = log_class_prior(np.flatnonzero(pool), 3)
    assert torch.allclose(
        training_loss(cfg, site, model)(logits, batch),
        logit_adjusted_loss(prior, 1.0)(logits, batch),
    )
    # a segmentation site still shuffles its own pool
    seg = simulated_site(cfg, 1)
    shuffled = round_loader(cfg.model_copy(update={"drift": DriftConfig()}), seg, 1)
    assert [b["image"].sum() for b in cycle_batches(round_loader(cfg, seg, 1), 2)] == [
        b["image"].sum() for b in cycle_batches(shuffled, 2)
    ]
    train_round(cfg, site, model, LocalBodyLink(Body(cfg.model)), 1)  # trains end to end
