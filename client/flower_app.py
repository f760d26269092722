"""Flower glue for a client: unpack the message, call `festa.client.local_training`, pack the reply."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from festa.client import secure_aggregation as secagg
from festa.client.body_client import LinkTls
from festa.client.local_training import (
    describe_site,
    evaluate_instruction,
    parse_config,
    simulation_site,
    train_instruction,
)
from festa.client.restored_data import from_site_daemon
from festa.client.site_data import SiteData, deployed_site
from festa.shared.config import FederationConfig
from festa.shared.runtime import configure_process

log = logging.getLogger(__name__)
app = ClientApp()


class _ActorShutdownFilter(logging.Filter):
    """Drop flwr's "Manually terminating ClientAppActor": Ray actors log it at WARNING level on
    every normal end of a simulation (flwr 1.42), which reads as a fault in the run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Manually terminating")


logging.getLogger("flwr").addFilter(_ActorShutdownFilter())

# Many clients share few cores in simulation; one thread each avoids thrashing.
configure_process(threads=1)


def _site(cfg: FederationConfig, context: Context) -> SiteData:
    node = context.node_config
    if "partition-id" in node:  # simulation: one slice of the pooled data
        return simulation_site(cfg, int(node["partition-id"]))
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


@lru_cache(maxsize=4)
def _deployed(
    site_id: str, task: str, data_path: str, size: int, seed: int, restore_state: str
) -> SiteData:
    site = deployed_site(site_id, task, data_path, size, seed)
    # With a restoration daemon on this site (node config `restore-state`), train on its output.
    return from_site_daemon(site, restore_state, size) if restore_state else site


def _body_tls(context: Context) -> LinkTls | None:
    """TLS pinned to the deployment CA when node config has `body-ca`, presenting the site's
    client certificate (`body-cert` / `body-key`) when it has one."""
    node = context.node_config
    ca, cert, key = (str(node.get(k, "") or "") for k in ("body-ca", "body-cert", "body-key"))
    if not ca:
        return None
    identity = (Path(cert).read_bytes(), Path(key).read_bytes()) if cert and key else None
    return LinkTls(Path(ca).read_bytes(), identity)


def _unpack(msg: Message, context: Context) -> tuple[SiteData, dict, ConfigRecord]:
    config = msg.content["config"]
    site = _site(parse_config(str(config["festa-config"])), context)
    return site, msg.content["weights"].to_torch_state_dict(), config


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    site = _site(parse_config(str(msg.content["config"]["festa-config"])), context)
    return Message(RecordDict({"site": ConfigRecord(describe_site(site))}), reply_to=msg)


SECAGG_STATE = "festa-secagg"  # the Context.state record secure aggregation keeps a round in


def _secagg(context: Context, step):  # noqa: ANN001, ANN202
    """Run `step(store)` on this node's secure-aggregation store, kept in `context.state`."""
    held = context.state.get(SECAGG_STATE)
    store = dict(held) if held is not None else {}
    try:
        return step(store)
    finally:
        context.state[SECAGG_STATE] = ConfigRecord(store)


@app.train()
def train(msg: Message, context: Context) -> Message:
    site, state, config = _unpack(msg, context)
    new_state, metrics = train_instruction(site, state, config, _body_tls(context))
    if parse_config(str(config["festa-config"])).secure_aggregation:
        # the new head/tail stay here; only masked sums of them leave (festa.client.secure_aggregation)
        payload = _secagg(context, lambda s: secagg.begin_round(s, config, new_state, metrics))
        content = RecordDict({"payload": ConfigRecord(payload), "metrics": MetricRecord(metrics)})
    else:
        content = RecordDict({"weights": ArrayRecord(new_state), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def _secagg_stage(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    payload = _secagg(context, lambda s: secagg.handle(msg.metadata.message_type, s, config))
    return Message(RecordDict({"payload": ConfigRecord(payload)}), reply_to=msg)


@app.query("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    return _secagg_stage(msg, context)


@app.query("secagg_masked")
def secagg_masked(msg: Message, context: Context) -> Message:
    return _secagg_stage(msg, context)


@app.query("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return _secagg_stage(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site, state, config = _unpack(msg, context)
    metrics = evaluate_instruction(site, state, config, _body_tls(context))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
