"""The federation's server side, without Flower: rounds, tokens, per-task FedAvg, checkpoints.

`Federation(cfg, out_dir).run(transport)` drives a whole run: the one round loop of festa.
The transport only moves one `train`/`evaluate` message per client per round; the per-batch
traffic goes through the `BodyService` this object starts (gRPC, on `cfg.body_port`).

Two transports implement `Transport`:

- `FlowerTransport(grid)` (`festa.server.flower_app`): Flower messages to SuperNodes, in deployment
  (`flwr run`) and in Flower's simulation engine (`festa simulate`, the default engine);
- `InProcessTransport(cfg)` (`festa.simulations.inprocess`): every client a plain object in this
  process running the same handlers (`festa.client.local_training`) against the same body service
  over loopback; no Ray, no Flower messages (`festa simulate --engine inprocess`). For fast
  experiments and benchmarks::

      from festa.simulations.inprocess import InProcessTransport
      summary = Federation(cfg, "runs/x").run(InProcessTransport(cfg))

A benchmark that needs a different round writes a transport (or reads `Federation.history`),
never its own loop. The pieces of a round other callers need (each task's seeded initial
head/tail, FedAvg within task groups, validation means weighted by size) are the functions
`initial_task_states`, `fedavg_by_task` and `weighted_means` below.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.table import Table

from festa.server.body_service import BodyService, RoundReport, TlsFiles, issue_token
from festa.server.records import BodyRound, ClientRound, RoundRecord
from festa.server.secure_aggregation import (
    Member,
    check_group_sizes,
    label_mix_caveat,
    secure_fedavg,
)
from festa.server.server_optimizer import ServerOptimizer
from festa.server.store.recorder import RunRecorder
from festa.server.store.runstore import RunStore
from festa.shared.config import FederationConfig
from festa.shared.fedavg import fedavg
from festa.shared.inference.trained_model import check_box_coding
from festa.shared.model.body import Body
from festa.shared.model.pipeline import staleness_lr_scale
from festa.shared.privacy.label_protection import ships_body_snapshot, with_body_snapshot
from festa.shared.privacy.update_dp import update_dp_spent
from festa.shared.runinfo import append_jsonl, environment_info, seed_everything, write_json
from festa.shared.tasks import primary_metric
from festa.shared.train.task_model import TaskModel

log = logging.getLogger(__name__)


@dataclass
class ClientInfo:
    """A node as it described itself in the opening `query`."""

    node_id: int
    site_id: str
    task: str
    num_train: int
    num_val: int


@dataclass
class Instruction:
    """One message to one client: train or evaluate its task's head/tail for a round."""

    client: ClientInfo
    state: dict[str, torch.Tensor]
    config: dict[str, Any]


@dataclass
class Reply:
    """A client's answer; `state` is None for evaluation or when the client failed."""

    client: ClientInfo
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None
    error: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # secure-aggregation stage replies


class Transport(Protocol):
    """How the federation reaches clients (Flower in practice)."""

    def describe(self, cfg: FederationConfig, timeout_s: float) -> list[ClientInfo]: ...

    def online_nodes(self) -> set[int]: ...

    def describe_nodes(
        self, cfg: FederationConfig, node_ids: list[int], timeout_s: float
    ) -> list[ClientInfo]: ...

    def send(
        self, kind: str, round_number: int, instructions: list[Instruction], timeout_s: float
    ) -> list[Reply]: ...


def initial_task_states(cfg: FederationConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Each task's head/tail at round 0: one seeded initialisation per task (seed + 1 + its
    index in `cfg.tasks`), which every client of the task starts from."""
    states = {}
    for index, name in enumerate(cfg.tasks):
        torch.manual_seed(cfg.seed + 1 + index)
        states[name] = TaskModel.build(name, cfg.model).state_dict()
    return states


def fedavg_by_task(
    states: Sequence[dict[str, torch.Tensor]], tasks: Sequence[str], weights: Sequence[float]
) -> dict[str, dict[str, torch.Tensor]]:
    """FedAvg within each task group (`states[i]` of task `tasks[i]`, weight `weights[i]`);
    different tasks never average together."""
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(task, []).append(i)
    return {
        task: fedavg([states[i] for i in members], [weights[i] for i in members])
        for task, members in groups.items()
    }


def weighted_means(
    metrics: Sequence[dict[str, float]], weights: Sequence[float]
) -> dict[str, float]:
    """The weighted mean of every metric all of `metrics` report (e.g. over a task's sites,
    by validation size)."""
    keys = set.intersection(*(set(m) for m in metrics)) if metrics else set()
    total = sum(weights)
    return {
        k: sum(m[k] * w for m, w in zip(metrics, weights, strict=True)) / total
        for k in sorted(keys)
    }


class Federation:
    """Server-side state of one run and the round loop that evolves it."""

    def __init__(
        self,
        cfg: FederationConfig,
        out_dir: str | Path,
        *,
        resume: bool = False,
        store: RunStore | None = None,
        console: Console | None = None,
        tls: TlsFiles | None = None,
    ):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        self.console = console or Console()
        self.recorder = RunRecorder(store)
        self.tls = tls
        seed_everything(cfg.seed)
        ckpt = self._read_checkpoint() if resume else None
        self.run_id = ckpt["run_id"] if ckpt else secrets.token_hex(6)
        self.secret = secrets.token_bytes(32)
        body = Body(cfg.model)
        self.body = BodyService(
            body,
            cfg.model,
            secret=self.secret,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            device=cfg.device,
            autocast_bf16=cfg.device.startswith("cuda"),
            run_id=self.run_id,
        )
        # Every task starts from one seeded initialisation; every client of a task from its average.
        self.task_states = initial_task_states(cfg)
        self.server_optimizer = ServerOptimizer(cfg.drift)
        self._label_mix_caveat: str | None = None  # printed once per change of roster
        self.client_states: dict[str, dict[str, torch.Tensor]] = {}
        self.history: list[RoundRecord] = []
        self.reply_states: dict[str, dict[str, torch.Tensor]] = {}  # last round's, for audit
        self.excluded: set[str] = set()
        self.start_round = 1
        self.started = time.time()
        if ckpt:
            self._restore(ckpt)
        elif (self.out / "rounds.jsonl").exists():
            raise FileExistsError(f"{self.out} already holds a run; use --resume or another --out")
        write_json(self.out / "config.json", cfg.model_dump())

    # ---- the run ---------------------------------------------------------------------------

    def run(self, transport: Transport) -> dict[str, Any]:
        cfg = self.cfg
        port = self.body.start(cfg.body_host, cfg.body_port, tls=self.tls)
        endpoint = cfg.body_endpoint or f"{cfg.body_host}:{port}"
        state = "failed"
        try:
            self.recorder.open(self.out.name, cfg.model_dump(), cfg.rounds)
            clients = transport.describe(cfg, timeout_s=cfg.round_timeout_s)
            self._show_roster(clients)
            for c in clients:
                self.recorder.client_online(c.site_id, c.node_id, c.task)
            for r in range(self.start_round, cfg.rounds + 1):
                if self._apply_admin_actions():
                    state = "stopped"
                    break
                clients = self._rejoin(transport, clients, r)
                active = [c for c in clients if c.site_id not in self.excluded]
                self._round(transport, active, r, endpoint)
            else:
                state = "finished"
            summary = self._summary(clients)
            summary["state"] = state
            if cfg.dp_noise > 0:
                # (epsilon, delta) of the head/tail updates, festa.shared.privacy.update_dp
                summary["dp"] = update_dp_spent(cfg, len(self.history))
                self.console.print(
                    f"DP of head/tail updates: epsilon {summary['dp']['epsilon']:.2f} at delta "
                    f"{cfg.dp_delta:g} after {len(self.history)} rounds (noise {cfg.dp_noise}, "
                    f"clip {cfg.dp_clip})"
                )
            write_json(self.out / "summary.json", summary)
            return summary
        finally:
            self.body.stop()
            self.recorder.run_finished(state)

    # ---- sites that come back -----------------------------------------------------------------

    def _rejoin(self, transport: Transport, clients: list[ClientInfo], r: int) -> list[ClientInfo]:
        """The roster for round `r`: sites that dropped out of the last round get up to
        `rejoin_wait_s` to answer again (a restarted daemon keeps its node id under node
        authentication, or comes back under a new one without it)."""
        wait_s = self.cfg.rejoin_wait_s
        last = self.history[-1] if self.history else None
        if wait_s <= 0 or last is None or last.round != r - 1:
            return clients
        missing = {
            site for site, c in last.clients.items() if c.dropped and site not in self.excluded
        }
        if not missing:
            return clients
        roster = {c.site_id: c for c in clients}
        self.console.print(
            f"round {r}: waiting up to {wait_s:.0f} s for {', '.join(sorted(missing))} to rejoin"
        )
        deadline = time.monotonic() + wait_s
        while missing and (left := deadline - time.monotonic()) > 0:
            present = {c.node_id for c in clients if c.site_id not in missing}
            # A killed node stays "online" until it misses two heartbeats, so ask rather than
            # look: the question waits at the SuperLink for the restarted node, which answers
            # once it is let back in (an offline node gets an error reply at once; ask again).
            candidates = sorted(transport.online_nodes() - present)
            answers = (
                transport.describe_nodes(self.cfg, candidates, timeout_s=left) if candidates else []
            )
            for info in answers:
                known = roster.get(info.site_id)
                if info.site_id in missing and known is not None and info.task == known.task:
                    roster[info.site_id] = info
                    missing.discard(info.site_id)
                    self.console.print(f"[green]round {r}: {info.site_id} rejoined[/]")
                    self.recorder.event("rejoined", info.site_id, site_id=info.site_id)
                    self.recorder.client_online(info.site_id, info.node_id, info.task)
            if missing:
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
        if missing:
            self.console.print(
                f"[yellow]round {r}: starting without {', '.join(sorted(missing))}[/]"
            )
        return [roster[c.site_id] for c in clients]

    # ---- console actions ----------------------------------------------------------------------

    def _apply_admin_actions(self) -> bool:
        """Apply console actions (stop, exclude a site); True when the run must stop."""
        stop = False
        for action in self.recorder.pending_actions():
            if action["kind"] == "stop":
                stop = True
            elif action["kind"] == "exclude_site":
                self.excluded.add(action["site_id"])
                self.console.print(f"[yellow]site {action['site_id']} excluded by the console[/]")
        return stop

    def _round(
        self, transport: Transport, clients: list[ClientInfo], r: int, endpoint: str
    ) -> None:
        cfg = self.cfg
        secure = cfg.secure_aggregation
        if secure:
            roster = {c.site_id: c.task for c in clients}
            check_group_sizes(roster)
            caveat = label_mix_caveat(roster, cfg.drift.logit_adjustment)
            if caveat and caveat != self._label_mix_caveat:
                self.console.print(f"[yellow]warning: {caveat}[/]")
            self._label_mix_caveat = caveat
        phase = cfg.schedule.phase(r, cfg.rounds)
        train_body = cfg.schedule.trains_body(phase)
        started = time.perf_counter()
        self.recorder.round_started(r, phase)
        self.body.open_round(
            r,
            {str(c.node_id): c.task for c in clients},
            train_body=train_body,
            mode=cfg.mode,
            step_deadline_s=cfg.step_deadline_s,
            pipeline_depth=cfg.pipeline_depth,
            lr_scale=staleness_lr_scale(cfg.pipeline_depth, cfg.pipeline_body_lr),
        )
        self.reply_states = {}
        snapshot = self._body_snapshot(clients)
        train_msgs = [
            Instruction(
                c, self._train_state(c, snapshot), self._message_config(c, r, phase, endpoint)
            )
            for c in clients
        ]
        try:
            replies = transport.send("train", r, train_msgs, cfg.round_timeout_s)
        finally:
            report = self.body.close_round()

        dropped: dict[str, str] = {}
        for reply in replies:
            site = reply.client.site_id
            node = str(reply.client.node_id)
            if reply.error or (reply.state is None and not secure):
                dropped[site] = reply.error or "no weights in reply"
            elif node in report.dropped:
                dropped[site] = report.dropped[node]
            elif secure and "secagg-pk-s" not in reply.payload:
                dropped[site] = "no secure-aggregation keys in reply"
            elif not secure:
                self.client_states[site] = reply.state
                self.reply_states[site] = reply.state
        if len(dropped) == len(replies):
            raise RuntimeError(f"round {r}: every client failed: {dropped}")
        for site, why in dropped.items():
            self.console.print(f"[yellow]round {r}: dropped {site}: {why}[/]")
            self.recorder.event("dropped", f"{site}: {why}", site_id=site)
            self.recorder.client_offline(site)

        # FedAvg within each task group; tasks never average together.
        ok = [rep for rep in replies if rep.client.site_id not in dropped]
        if secure:  # the server sees each task's sum only (festa.server.secure_aggregation)
            for site, why in self._secure_fedavg(transport, r, ok).items():
                dropped[site] = why
                self.console.print(f"[yellow]round {r}: dropped {site}: {why}[/]")
                self.recorder.event("dropped", f"{site}: {why}", site_id=site)
                self.recorder.client_offline(site)
        elif cfg.schedule.unifies(r, cfg.rounds):
            averages = fedavg_by_task(
                [self.client_states[rep.client.site_id] for rep in ok],
                [rep.client.task for rep in ok],
                [max(rep.metrics.get("num-examples", 1), 1) for rep in ok],
            )
            # FedAvgM / FedAdam / FedYogi step from the previous global (drift.server_optimizer).
            self.task_states.update(
                {
                    t: self.server_optimizer.step(t, self.task_states[t], a)
                    for t, a in averages.items()
                }
            )
            self.client_states.clear()

        # Evaluate each task's model on its clients' validation data through the body.
        self.body.open_round(
            r,
            {str(c.node_id): c.task for c in clients},
            train_body=False,
            mode="async",
            step_deadline_s=cfg.step_deadline_s,
        )
        eval_msgs = [
            Instruction(c, self._state_for(c), self._message_config(c, r, "evaluate", endpoint))
            for c in clients
            if c.site_id not in dropped
        ]
        try:
            evals = transport.send("evaluate", r, eval_msgs, cfg.round_timeout_s)
        finally:
            eval_report = self.body.close_round()

        record = self._round_record(
            r, phase, train_body, replies, evals, dropped, report, eval_report, started
        )
        self.history.append(record)
        append_jsonl(self.out / "rounds.jsonl", record.to_json())
        self._save_checkpoint(r)
        self.recorder.round_finished(record)
        self._show_round(record)

    def _secure_fedavg(self, transport: Transport, r: int, ok: list[Reply]) -> dict[str, str]:
        """Each task's FedAvg by secure aggregation into `task_states`; {site: why} for the
        sites that dropped out during its stages. A group left below the minimum keeps its
        head/tail this round."""

        def send(kind: str, pairs: list[tuple[ClientInfo, dict[str, Any]]]) -> list[Reply]:
            ins = [Instruction(c, {}, config) for c, config in pairs]
            return transport.send(kind, r, ins, self.cfg.round_timeout_s)

        late: dict[str, str] = {}
        for task in self.cfg.tasks:
            group = [
                Member(
                    str(rep.client.node_id),
                    max(int(rep.metrics.get("num-examples", 1)), 1),
                    rep.payload["secagg-pk-c"],
                    rep.payload["secagg-pk-s"],
                    rep.client,
                )
                for rep in ok
                if rep.client.task == task
            ]
            if not group:
                continue
            state, gone = secure_fedavg(send, r, task, group, self.task_states[task])
            sites = {m.node: m.client.site_id for m in group}
            late.update({sites[n]: why for n, why in gone.items()})
            if state is None:
                self.console.print(
                    f"[yellow]round {r}: {task} not aggregated: fewer than the minimum of its "
                    "sites answered every secure-aggregation stage[/]"
                )
            else:  # FedAvgM / FedAdam / FedYogi compose with the secure average
                self.task_states[task] = self.server_optimizer.step(
                    task, self.task_states[task], state
                )
        return late

    # ---- messages --------------------------------------------------------------------------

    def _state_for(self, client: ClientInfo) -> dict[str, torch.Tensor]:
        return self.client_states.get(client.site_id, self.task_states[client.task])

    def _body_snapshot(self, clients: list[ClientInfo]) -> dict[str, torch.Tensor]:
        """The body's weights when a client of this round backpropagates through its own copy
        (`label_protection = "local-backward"`), else nothing."""
        if any(ships_body_snapshot(self.cfg.label_protection, c.task) for c in clients):
            return self.body.weights()
        return {}

    def _train_state(
        self, client: ClientInfo, body_snapshot: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        state = self._state_for(client)
        if ships_body_snapshot(self.cfg.label_protection, client.task):
            return with_body_snapshot(state, body_snapshot)
        return state

    def _message_config(
        self, client: ClientInfo, r: int, phase: str, endpoint: str
    ) -> dict[str, Any]:
        token = issue_token(
            self.secret,
            self.run_id,
            r,
            str(client.node_id),
            client.task,
            ttl_s=self.cfg.round_timeout_s,
        )
        return {
            **({"secagg-node": str(client.node_id)} if self.cfg.secure_aggregation else {}),
            "round": r,
            "phase": phase,
            "task": client.task,
            "site-id": client.site_id,
            "body-endpoint": endpoint,
            "token": token,
            "festa-config": self.cfg.model_dump_json(),
        }

    # ---- records ---------------------------------------------------------------------------

    def _round_record(
        self,
        r: int,
        phase: str,
        train_body: bool,
        replies: list[Reply],
        evals: list[Reply],
        dropped: dict[str, str],
        report: RoundReport,
        eval_report: RoundReport,
        started: float,
    ) -> RoundRecord:
        clients: dict[str, ClientRound] = {}
        for reply in replies:
            node = str(reply.client.node_id)
            clients[reply.client.site_id] = ClientRound(
                node_id=node,
                task=reply.client.task,
                num_examples=int(reply.metrics.get("num-examples", 0)),
                examples_seen=int(reply.metrics.get("examples-seen", 0)),
                train_loss=reply.metrics.get("train-loss"),
                bytes_sent=int(report.bytes_in.get(node, 0)),
                bytes_received=int(report.bytes_out.get(node, 0)),
                seconds=reply.metrics.get("seconds"),
                dropped=dropped.get(reply.client.site_id),
                restoration={
                    k.removeprefix("restoration-"): int(v)
                    for k, v in reply.metrics.items()
                    if k.startswith("restoration-")
                },
            )
        per_task: dict[str, dict[str, float]] = {}
        for task in self.cfg.tasks:
            group = [
                e
                for e in evals
                if e.client.task == task and not e.error and e.metrics.get("num-examples")
            ]
            if not group:
                continue
            val = [{k: v for k, v in e.metrics.items() if k != "num-examples"} for e in group]
            per_task[task] = weighted_means(val, [e.metrics["num-examples"] for e in group])
            for e in group:
                clients[e.client.site_id].val = {k: e.metrics[k] for k in per_task[task]}
        return RoundRecord(
            round=r,
            phase=phase,
            train_body=train_body,
            tasks=per_task,
            clients=clients,
            dropped=dropped,
            body=BodyRound(
                steps=report.steps,
                tokens=report.tokens_processed + eval_report.tokens_processed,
                train_seconds=report.seconds,
            ),
            bytes_total=sum(c.bytes_total for c in clients.values()),
            seconds=time.perf_counter() - started,
        )

    def _summary(self, clients: list[ClientInfo]) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "final": self.history[-1].tasks if self.history else {},
            "rounds": self.cfg.rounds,
            "clients": [vars(c) for c in clients],
            "bytes_per_client_per_round": [
                {site: c.bytes_total for site, c in h.clients.items()} for h in self.history
            ],
            "dropped": {h.round: h.dropped for h in self.history if h.dropped},
            "wall_seconds": time.time() - self.started,
            "seed": self.cfg.seed,
            "config": self.cfg.model_dump(),
            "environment": environment_info(),
        }

    # ---- checkpoints -----------------------------------------------------------------------

    def _save_checkpoint(self, r: int) -> None:
        path = self.out / "checkpoints" / f"round_{r:03d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "round": r,
                "run_id": self.run_id,
                "config": self.cfg.model_dump(),
                "body": self.body.state_dict(),
                "task_states": self.task_states,
                "server_optimizer": self.server_optimizer,
                "client_states": self.client_states,
                "reply_states": self.reply_states,
                "history": [h.to_json() for h in self.history],
                "store_run": self.recorder.run_id,
                "excluded": sorted(self.excluded),
                "rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(path)
        shutil.copyfile(path, self.out / "checkpoints" / "latest.tmp")
        (self.out / "checkpoints" / "latest.tmp").replace(self.out / "checkpoints" / "latest.pt")
        self.recorder.checkpoint(r, str(path))

    def _read_checkpoint(self) -> dict[str, Any]:
        path = self.out / "checkpoints" / "latest.pt"
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ckpt = torch.load(path, weights_only=False)
        check_box_coding(ckpt["config"]["model"], ckpt["task_states"], f"--resume: {path}")
        saved = FederationConfig.model_validate(ckpt["config"])
        if saved != self.cfg:
            raise ValueError(f"--resume: the config differs from the checkpointed run in {path}")
        return ckpt

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.body.load_state_dict(ckpt["body"])
        self.task_states = ckpt["task_states"]
        self.server_optimizer = ckpt.get("server_optimizer", self.server_optimizer)
        self.client_states = ckpt["client_states"]
        self.history = [RoundRecord.from_json(h) for h in ckpt["history"]]
        self.recorder.run_id = ckpt.get("store_run")
        self.excluded = set(ckpt.get("excluded", []))
        torch.set_rng_state(ckpt["rng"])
        self.start_round = ckpt["round"] + 1
        # rounds.jsonl may hold rounds after the checkpoint if the crash came between writes.
        (self.out / "rounds.jsonl").write_text("")
        for h in self.history:
            append_jsonl(self.out / "rounds.jsonl", h.to_json())
        self.console.print(f"resuming run {self.run_id} at round {self.start_round}")

    # ---- console output --------------------------------------------------------------------

    def _show_roster(self, clients: list[ClientInfo]) -> None:
        table = Table(title=f"festa run {self.run_id}: {len(clients)} clients")
        for col in ("site", "node", "task", "train", "val"):
            table.add_column(col)
        for c in clients:
            table.add_row(c.site_id, str(c.node_id), c.task, str(c.num_train), str(c.num_val))
        self.console.print(table)

    def _show_round(self, record: RoundRecord) -> None:
        parts = [f"[bold]round {record.round}/{self.cfg.rounds}[/] {record.phase:<13}"]
        for task, m in record.tasks.items():
            key = primary_metric(task)
            if key in m:
                parts.append(f"{task[:4]} {key}={m[key]:.3f}")
        parts.append(f"{record.bytes_total / 1e6:.1f} MB  {record.seconds:.1f} s")
        if record.dropped:
            parts.append(f"[yellow]dropped: {', '.join(record.dropped)}[/]")
        self.console.print("  ".join(parts))
