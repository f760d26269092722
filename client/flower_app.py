"""Flower glue for a client: unpack the message, call `client.local_training`, pack the reply."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from festa.client.body_client import RemoteBodyLink
from festa.client.local_training import evaluate_site, train_round
from festa.client.restored_data import from_site_daemon, with_scanner
from festa.client.site_data import SiteData, deployed_site, simulated_site
from festa.shared.config import FederationConfig
from festa.shared.runtime import configure_process
from festa.shared.train.task_model import TaskModel

log = logging.getLogger(__name__)
app = ClientApp()

# Many clients share few cores in simulation; one thread each avoids thrashing.
configure_process(threads=1)


@lru_cache(maxsize=8)
def _parse(config_json: str) -> FederationConfig:
    return FederationConfig.model_validate_json(config_json)


def _site(cfg: FederationConfig, context: Context) -> SiteData:
    node = context.node_config
    if "partition-id" in node:  # simulation: one slice of the pooled data
        return _simulated(cfg.model_dump_json(), int(node["partition-id"]))
    missing = [k for k in ("site-id", "task", "data-path") if k not in node]
    if missing:
        raise ValueError(f"node config lacks {missing}: start the SuperNode with --node-config")
    return _deployed(
        str(node["site-id"]),
        str(node["task"]),
        str(node["data-path"]),
        cfg.model.image_size,
        cfg.seed,
        str(node.get("restore-state", "")),
    )


@lru_cache(maxsize=8)
def _simulated(config_json: str, partition_id: int) -> SiteData:
    cfg = _parse(config_json)
    return with_scanner(cfg, simulated_site(cfg, partition_id), partition_id)


@lru_cache(maxsize=4)
def _deployed(
    site_id: str, task: str, data_path: str, size: int, seed: int, restore_state: str
) -> SiteData:
    site = deployed_site(site_id, task, data_path, size, seed)
    # With a restoration daemon on this site (node config `restore-state`), train on its output.
    return from_site_daemon(site, restore_state, size) if restore_state else site


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    cfg = _parse(str(msg.content["config"]["festa-config"]))
    site = _site(cfg, context)
    info = ConfigRecord(
        {
            "site-id": site.site_id,
            "task": site.task,
            "num-train": int(len(site.train_indices)),
            "num-val": int(len(site.val_indices)),
        }
    )
    return Message(RecordDict({"site": info}), reply_to=msg)


def _prepare(msg: Message, context: Context) -> tuple[FederationConfig, SiteData, TaskModel, dict]:
    config = msg.content["config"]
    cfg = _parse(str(config["festa-config"]))
    site = _site(cfg, context)
    if site.task != config["task"]:
        raise ValueError(f"server sent task {config['task']!r} to a {site.task!r} site")
    model = TaskModel.build(site.task, cfg.model)
    model.load_state_dict(msg.content["weights"].to_torch_state_dict())
    return cfg, site, model.to(cfg.device), config


def _link(cfg: FederationConfig, config: dict, context: Context) -> RemoteBodyLink:
    """The body-service stream; TLS pinned to the deployment CA when node config has `body-ca`,
    presenting the site's client certificate (`body-cert` / `body-key`) when it has one."""
    node = context.node_config
    ca, cert, key = (str(node.get(k, "") or "") for k in ("body-ca", "body-cert", "body-key"))
    root = Path(ca).read_bytes() if ca else None
    identity = (Path(cert).read_bytes(), Path(key).read_bytes()) if cert and key else None
    return RemoteBodyLink(
        str(config["body-endpoint"]),
        str(config["token"]),
        wire_dtype=cfg.wire,
        tls_root_cert=root,
        tls_client_cert=identity,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, site, model, config = _prepare(msg, context)
    with _link(cfg, config, context) as link:
        metrics = train_round(cfg, site, model, link, int(config["round"]))
        metrics["bytes-sent"] = link.bytes_sent
        metrics["bytes-received"] = link.bytes_received
    metrics.update({f"restoration-{k}": v for k, v in site.restoration.items()})
    content = RecordDict(
        {
            "weights": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({k: float(v) for k, v in metrics.items()}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, site, model, config = _prepare(msg, context)
    with _link(cfg, config, context) as link:
        metrics = evaluate_site(cfg, site, model, link, int(config["round"]))
    return Message(
        RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})}),
        reply_to=msg,
    )
