"""What a client does in a round, without Flower: train its head/tail against the body, evaluate.

The message handlers are plain functions (`describe_site`, `train_instruction`,
`evaluate_instruction`): the Flower ClientApp (`festa.client.flower_app`) unpacks a message and calls
them, and so does the in-process transport (`festa.simulations.inprocess`), so both run one client.
Each takes the server's message config (round, task, body endpoint, session token, the run's
`FederationConfig` as JSON) and the task's head/tail weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from festa.client.body_client import LinkTls, RemoteBodyLink
from festa.client.restored_data import with_scanner
from festa.client.site_data import SiteData, simulated_site
from festa.shared.config import FederationConfig
from festa.shared.model.body import Body
from festa.shared.model.pipeline import PipelinedBodyLink, split_train_pipelined
from festa.shared.model.split import BodyLink, GradTransform, permuted_body, split_train_step
from festa.shared.model.token_noise import with_token_noise
from festa.shared.privacy.label_protection import (
    LabelGradientNoise,
    LocalBackwardLink,
    ships_body_snapshot,
    split_body_snapshot,
    zero_gradient,
)
from festa.shared.privacy.update_dp import privatize_update
from festa.shared.train.drift import (
    add_proximal_term,
    class_balanced_indices,
    logit_adjusted_loss,
    sampled_log_prior,
)
from festa.shared.train.task_model import TaskModel, cycle_batches, evaluate, make_loader, to_device

# Per-site client optimizer state across rounds (`drift.client_optimizer = "persist"`), keyed
# by (run config, site). Lives as long as the process that runs the site's client.
_OPTIMIZER_STATES: dict[tuple[str, str], list[dict[str, Any]]] = {}


class SimulatedFault(RuntimeError):
    """Raised by the fault-injection setting (`FederationConfig.fault`), never otherwise."""


def round_seed(seed: int, round_number: int, site_id: str) -> int:
    """A seed unique to (run seed, round, site), stable across processes and restarts."""
    return int(np.random.SeedSequence([seed, round_number, *site_id.encode()]).generate_state(1)[0])


def noise_seed(
    cfg: FederationConfig, round_number: int, site_id: str, evaluation: bool = False
) -> int:
    """Seed of the token-noise stream of (run, round, site), apart from the shuffle's stream."""
    return round_seed(
        cfg.seed, round_number, f"{site_id}/token-noise{'/eval' if evaluation else ''}"
    )


def train_round(
    cfg: FederationConfig,
    site: SiteData,
    model: TaskModel,
    link: BodyLink,
    round_number: int,
    body_snapshot: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """`cfg.local_steps` split steps of `model` on the site's data; returns the reply metrics.

    With `cfg.pipeline_depth` K > 1 the link must also be a `PipelinedBodyLink` and the steps
    run with K micro-batches in flight (`festa.shared.model.pipeline`). `body_snapshot` is the
    body copy a `label_protection = "local-backward"` classification site backpropagates
    through (`festa.shared.privacy.label_protection.LocalBackwardLink`).
    """
    if len(site.train_indices) == 0:
        raise ValueError(f"site {site.site_id} has no training samples for task {site.task}")
    seed = round_seed(cfg.seed, round_number, site.site_id)
    torch.manual_seed(seed)
    loader = round_loader(cfg, site, round_number)
    perm_gen = torch.Generator().manual_seed(seed)
    if ships_body_snapshot(cfg.label_protection, site.task):
        if body_snapshot is None:
            raise ValueError(
                "label_protection = local-backward: this classification site got no body "
                "snapshot to backpropagate through (the server must send one with `train`)"
            )
        link = LocalBackwardLink(link, body_snapshot)
    link = with_token_noise(link, cfg.token_noise, noise_seed(cfg, round_number, site.site_id))
    model.train(True)
    losses: list[float] = []
    examples = 0
    started = time.perf_counter()
    fault = cfg.fault

    def batches():
        for step, batch in enumerate(cycle_batches(loader, cfg.local_steps)):
            if (fault.site, fault.round, fault.after_steps) == (site.site_id, round_number, step):
                raise SimulatedFault(
                    f"{site.site_id} failed on purpose in round {round_number} at step {step}"
                )
            yield to_device(batch, cfg.device)

    loss_fn = training_loss(cfg, site, model)
    if cfg.pipeline_depth > 1:
        optimizers = [
            _adamw(cfg, model.head.parameters()),
            _adamw(cfg, model.tail.parameters()),
        ]
    else:
        optimizers = [_adamw(cfg, model.parameters())]
    state_key = (cfg.model_dump_json(), site.site_id)
    if cfg.drift.client_optimizer == "persist" and state_key in _OPTIMIZER_STATES:
        for optimizer, saved in zip(optimizers, _OPTIMIZER_STATES[state_key], strict=True):
            optimizer.load_state_dict(saved)
    for optimizer in optimizers:
        add_proximal_term(optimizer, _params(optimizer), cfg.drift.proximal_mu)
    if cfg.pipeline_depth > 1:
        results = split_train_pipelined(
            model.head,
            model.tail,
            loss_fn,
            batches(),
            _pipelined(link),
            depth=cfg.pipeline_depth,
            head_optimizer=optimizers[0],
            tail_optimizer=optimizers[1],
            permutation_generator=perm_gen,
            permute=cfg.permute,
        )
        losses = [r.loss for r in results]
        examples = sum(r.num_examples for r in results)
    else:
        (optimizer,) = optimizers
        protect = label_protection(cfg, site, round_number, loss_fn)
        for batch in batches():
            optimizer.zero_grad(set_to_none=True)
            result = split_train_step(
                model.head,
                model.tail,
                loss_fn,
                batch,
                link,
                perm_gen,
                permute=cfg.permute,
                grad_transform=protect,
            )
            optimizer.step()
            losses.append(result.loss)
            examples += result.num_examples
    if cfg.drift.client_optimizer == "persist":
        _OPTIMIZER_STATES[state_key] = [o.state_dict() for o in optimizers]
    return {
        # FedAvg weighs a client by its dataset size, not by how often it looped over it.
        "num-examples": int(len(site.train_indices)),
        "examples-seen": examples,
        "train-loss": float(np.mean(losses)),
        "train-loss-last": losses[-1],
        "steps": cfg.local_steps,
        "seconds": time.perf_counter() - started,
    }


def samples_class_balanced(cfg: FederationConfig, site: SiteData) -> bool:
    """Whether `site` draws its batches in equal class shares (`drift.sampling`)."""
    return cfg.drift.sampling == "class-balanced" and site.task == "classification"


def round_loader(cfg: FederationConfig, site: SiteData, round_number: int) -> DataLoader:
    """The seeded loader of one site's round; its first `cfg.local_steps` batches
    (`cycle_batches`) are what the site trains on: its shuffled pool, or under class-balanced
    sampling `local_steps` batches drawn in equal class shares."""
    seed = round_seed(cfg.seed, round_number, site.site_id)
    batch = cfg.optim.batch_size
    if samples_class_balanced(cfg, site):
        count = cfg.local_steps * batch
        drawn = class_balanced_indices(site.train.labels, site.train_indices, count, seed)
        return make_loader(site.train, drawn, batch, False, seed)
    return make_loader(site.train, site.train_indices, batch, True, seed)


def label_protection(
    cfg: FederationConfig, site: SiteData, round_number: int, loss_fn: Callable
) -> GradTransform | None:
    """The returned-gradient label protection of a classification site (`cfg.label_protection`,
    `cfg.label_noise`), seeded per (run, round, site); None for other tasks or when off."""
    if site.task != "classification" or cfg.label_protection in ("off", "local-backward"):
        return None  # local-backward protects through its link (train_round)
    if cfg.label_protection == "tail-only":
        return zero_gradient
    seed = round_seed(cfg.seed, round_number, f"{site.site_id}/label-noise")
    return LabelGradientNoise(loss_fn, cfg.label_noise, torch.Generator().manual_seed(seed))


def training_loss(cfg: FederationConfig, site: SiteData, model: TaskModel):
    """The loss a site trains with: the task's, or for classification with
    `drift.logit_adjustment` > 0 the cross-entropy of logits shifted by the log prior of the
    classes its batches are drawn from (`festa.shared.train.drift`)."""
    tau = cfg.drift.logit_adjustment
    if tau == 0 or model.task.name != "classification":
        return model.task.loss
    labels = site.train.labels[site.train_indices]
    prior = sampled_log_prior(labels, cfg.model.num_classes, samples_class_balanced(cfg, site))
    return logit_adjusted_loss(prior, tau)


def _params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _adamw(cfg: FederationConfig, params: Any) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def _pipelined(link: BodyLink) -> PipelinedBodyLink:
    if not all(hasattr(link, m) for m in ("send_forward", "send_backward", "receive")):
        raise TypeError(
            f"pipeline_depth > 1 needs a pipelined body link, got {type(link).__name__}"
        )
    return link  # type: ignore[return-value]


def evaluate_site(
    cfg: FederationConfig, site: SiteData, model: TaskModel, link: BodyLink, round_number: int
) -> dict[str, Any]:
    """Task metrics of `model` on the site's validation samples, through the body."""
    if len(site.val_indices) == 0:
        return {"num-examples": 0}
    loader = make_loader(site.val, site.val_indices, 2 * cfg.optim.batch_size, False, 0)
    gen = torch.Generator().manual_seed(round_seed(cfg.seed, round_number, site.site_id) + 1)
    link = with_token_noise(
        link, cfg.token_noise, noise_seed(cfg, round_number, site.site_id, evaluation=True)
    )
    body = permuted_body(link, gen, cfg.permute)
    metrics = evaluate(model, loader, body, cfg.model, cfg.device)
    metrics["num-examples"] = int(len(site.val_indices))
    return metrics


# ---- the message handlers, shared by every transport ----------------------------------------


@lru_cache(maxsize=8)
def parse_config(config_json: str) -> FederationConfig:
    """The run's `FederationConfig` from the JSON the server sends in every message."""
    return FederationConfig.model_validate_json(config_json)


@lru_cache(maxsize=8)
def _simulation_site(config_json: str, partition_id: int) -> SiteData:
    cfg = parse_config(config_json)
    return with_scanner(cfg, simulated_site(cfg, partition_id), partition_id)


def simulation_site(cfg: FederationConfig, partition_id: int) -> SiteData:
    """Client `partition_id` of a simulated federation, with its scanner (degradation and
    restoration per `cfg`); built once per (config, partition) in a process."""
    return _simulation_site(cfg.model_dump_json(), partition_id)


def describe_site(site: SiteData) -> dict[str, str | int]:
    """What a node tells the server in the opening `query.describe`."""
    return {
        "site-id": site.site_id,
        "task": site.task,
        "num-train": int(len(site.train_indices)),
        "num-val": int(len(site.val_indices)),
    }


def open_body_link(
    cfg: FederationConfig, config: Mapping[str, Any], tls: LinkTls | None = None
) -> RemoteBodyLink:
    """The body-service stream the server's message points at (TLS as `tls` says; plaintext
    only on the loopback simulation)."""
    return RemoteBodyLink(
        str(config["body-endpoint"]),
        str(config["token"]),
        wire_dtype=cfg.wire,
        tls_root_cert=tls.root_cert if tls else None,
        tls_client_cert=tls.client_cert if tls else None,
    )


def _model_for(
    cfg: FederationConfig, site: SiteData, config: Mapping[str, Any], state: Mapping[str, Any]
) -> TaskModel:
    if site.task != config["task"]:
        raise ValueError(f"server sent task {config['task']!r} to a {site.task!r} site")
    model = TaskModel.build(site.task, cfg.model)
    model.load_state_dict(dict(state))
    return model.to(cfg.device)


def _body_snapshot(cfg: FederationConfig, weights: Mapping[str, torch.Tensor]) -> Body | None:
    if not weights:
        return None
    body = Body(cfg.model)
    body.load_state_dict(dict(weights))
    return body.to(cfg.device)


def train_instruction(
    site: SiteData,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    tls: LinkTls | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Handle a `train` message: the task's head/tail `state` trained for one round through the
    body service; returns the new state and the reply metrics (traffic, restoration counts)."""
    cfg = parse_config(str(config["festa-config"]))
    state, body_weights = split_body_snapshot(dict(state))
    model = _model_for(cfg, site, config, state)
    snapshot = _body_snapshot(cfg, body_weights)
    with open_body_link(cfg, config, tls) as link:
        metrics = train_round(cfg, site, model, link, int(config["round"]), snapshot)
        metrics["bytes-sent"] = link.bytes_sent
        metrics["bytes-received"] = link.bytes_received
    metrics.update({f"restoration-{k}": v for k, v in site.restoration.items()})
    new_state = model.state_dict()
    if cfg.dp_noise > 0:
        # clipped + noised before it leaves the site (or enters secure aggregation)
        received = {k: v.to(new_state[k].device) for k, v in state.items()}
        # the pre-clip norm is not reported: in plaintext metrics it would leak past the noise
        new_state, _ = privatize_update(new_state, received, cfg.dp_clip, cfg.dp_noise)
    return new_state, {k: float(v) for k, v in metrics.items()}


def evaluate_instruction(
    site: SiteData,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    tls: LinkTls | None = None,
) -> dict[str, float]:
    """Handle an `evaluate` message: validation metrics of `state` through the body service."""
    cfg = parse_config(str(config["festa-config"]))
    model = _model_for(cfg, site, config, state)
    with open_body_link(cfg, config, tls) as link:
        metrics = evaluate_site(cfg, site, model, link, int(config["round"]))
    return {k: float(v) for k, v in metrics.items()}
