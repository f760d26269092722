"""Flower glue for the server: message in, message out. The round logic is `festa.server.federation`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from festa.server.body_service import TlsFiles
from festa.server.federation import ClientInfo, Federation, Instruction, Reply
from festa.server.store import RunStore
from festa.shared.config import ConfigError, FederationConfig, model_preset, validate

log = logging.getLogger(__name__)


class FlowerTransport:
    """One Flower message per client per round (`query.describe`, `train`, `evaluate`)."""

    def __init__(self, grid: Grid, poll_s: float = 0.5):
        self.grid = grid
        self.poll_s = poll_s

    def describe(self, cfg: FederationConfig, timeout_s: float) -> list[ClientInfo]:
        """Wait for `cfg.clients` nodes, then ask each for its site, task and data sizes."""
        deadline = time.monotonic() + timeout_s
        while len(node_ids := self.online_nodes()) < cfg.clients:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(node_ids)} of {cfg.clients} nodes connected in {timeout_s:.0f} s"
                )
            time.sleep(self.poll_s)
        clients = self.describe_nodes(cfg, sorted(node_ids), timeout_s)
        unknown = {c.task for c in clients} - set(cfg.tasks)
        if unknown:
            raise ValueError(f"nodes report tasks {sorted(unknown)} that this run does not train")
        return sorted(clients, key=lambda c: c.site_id)

    def online_nodes(self) -> set[int]:
        """Node ids the SuperLink counts as online (a killed node stays listed until it
        misses two heartbeats)."""
        return set(self.grid.get_node_ids())

    def describe_nodes(
        self, cfg: FederationConfig, node_ids: list[int], timeout_s: float
    ) -> list[ClientInfo]:
        """Ask these nodes for their site, task and data sizes; silent nodes are left out."""
        content = RecordDict({"config": ConfigRecord({"festa-config": cfg.model_dump_json()})})
        messages = [
            Message(content, dst_node_id=n, message_type="query.describe") for n in node_ids
        ]
        clients = []
        for reply in self.grid.send_and_receive(messages, timeout=timeout_s):
            if reply.has_error():
                log.warning(
                    "node %s could not describe itself: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            info = reply.content["site"]
            clients.append(
                ClientInfo(
                    node_id=reply.metadata.src_node_id,
                    site_id=str(info["site-id"]),
                    task=str(info["task"]),
                    num_train=int(info["num-train"]),
                    num_val=int(info["num-val"]),
                )
            )
        return clients

    def send(
        self, kind: str, round_number: int, instructions: list[Instruction], timeout_s: float
    ) -> list[Reply]:
        by_node = {ins.client.node_id: ins.client for ins in instructions}
        messages = [
            Message(
                RecordDict(
                    {
                        "weights": ArrayRecord(ins.state),
                        "config": ConfigRecord(ins.config),
                    }
                ),
                dst_node_id=ins.client.node_id,
                message_type=kind,
                group_id=str(round_number),
            )
            for ins in instructions
        ]
        replies = {}
        received = list(self.grid.send_and_receive(messages, timeout=timeout_s))
        # Pushing sets each message's id. Error replies the SuperLink makes itself (e.g. the
        # node went offline) come from the SuperLink's node id, so match on reply_to instead.
        by_message = {m.metadata.message_id: by_node[m.metadata.dst_node_id] for m in messages}
        for msg in received:
            client = by_message.get(msg.metadata.reply_to_message_id) or by_node.get(
                msg.metadata.src_node_id
            )
            if client is None:
                log.warning("ignoring a reply to no message of this round: %s", msg.metadata)
                continue
            if msg.has_error():
                replies[client.node_id] = Reply(client, error=f"client error: {msg.error.reason}")
                continue
            metrics = dict(msg.content["metrics"]) if "metrics" in msg.content else {}
            state = (
                msg.content["weights"].to_torch_state_dict() if "weights" in msg.content else None
            )
            payload = dict(msg.content["payload"]) if "payload" in msg.content else {}
            replies[client.node_id] = Reply(client, metrics=metrics, state=state, payload=payload)
        for node_id, client in by_node.items():
            replies.setdefault(node_id, Reply(client, error=f"no reply within {timeout_s:.0f} s"))
        return [replies[ins.client.node_id] for ins in instructions]


def config_from_run_config(run_config: dict[str, Any]) -> tuple[FederationConfig, dict[str, Any]]:
    """Flat Flower run-config keys (`rounds`, `model.depth`, ...) -> FederationConfig + extras."""
    extras_keys = {"out", "resume", "preset", "store", "body-cert", "body-key", "body-ca"}
    nested: dict[str, Any] = {}
    extras = {k: run_config[k] for k in extras_keys if k in run_config}
    for key, value in run_config.items():
        # "" = not set: pyproject lists every key flwr accepts, most with an empty default
        if key in extras_keys or value == "":
            continue
        node = nested
        *parents, leaf = key.replace("-", "_").split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"run config: {key}: {p!r} is a value, not a table of keys")
        node[leaf] = value
    if "preset" in extras:
        nested["model"] = {
            **model_preset(str(extras["preset"])).model_dump(),
            **nested.get("model", {}),
        }
    if "tasks" in nested and isinstance(nested["tasks"], str):
        nested["tasks"] = [t.strip() for t in nested["tasks"].split(",") if t.strip()]
    return validate(FederationConfig, nested, "run config"), extras


def body_tls(extras: dict[str, Any]) -> TlsFiles | None:
    """The body service's TLS identity from run-config keys `body-cert` / `body-key` (both or
    neither; neither = plaintext, for loopback simulation only); `body-ca` also makes the port
    mutual TLS, requiring client certificates from that CA."""
    cert, key = str(extras.get("body-cert") or ""), str(extras.get("body-key") or "")
    ca = str(extras.get("body-ca") or "")
    if not cert and not key:
        if ca:
            raise ValueError("run config: body-ca (mutual TLS) needs body-cert and body-key")
        return None
    if not cert or not key:
        raise ValueError("run config: set both body-cert and body-key, or neither")
    for name, path in (("body-cert", cert), ("body-key", key), ("body-ca", ca)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"run config {name}: no file at {path}")
    return TlsFiles(Path(cert), Path(key), client_ca=Path(ca) if ca else None)


def _open_store(path: Any) -> RunStore | None:
    """The run store named by run-config key `store` (a SQLite path or URL), or None."""
    return RunStore(str(path)) if path else None


def make_server_app(
    cfg: FederationConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    store: RunStore | None = None,
) -> ServerApp:
    """A ServerApp bound to `cfg` (festa simulate), or reading Flower's run config (`flwr run`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg, extras = (
            (cfg, {}) if cfg is not None else config_from_run_config(dict(context.run_config))
        )
        out = out_dir or extras.get("out") or f"runs/flwr-{time.strftime('%Y%m%d-%H%M%S')}"
        out = str(out).replace("{run-id}", str(context.run_id))  # one folder per Flower run
        run_store = store if store is not None else _open_store(extras.get("store"))
        federation = Federation(
            run_cfg,
            out,
            resume=resume or bool(extras.get("resume")),
            store=run_store,
            tls=body_tls(extras),
        )
        try:
            federation.run(FlowerTransport(grid))
        finally:
            if run_store is not None and store is None:
                run_store.close()

    return app


app = make_server_app()
