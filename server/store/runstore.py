"""RunStore: what a federated run did, written as it goes and read by the console and CLI.

Writers are called by the ServerApp and the body service (several threads of one process)
and by the console (admin actions, often another process). Every call is its own short
transaction under a lock shared by all stores of that database in the process; on SQLite a
writer also takes the file's write lock up front (BEGIN IMMEDIATE, WAL journal), so other
processes queue rather than fail. Readers return plain dicts and lists (JSON-ready).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from festa.server.store import schema as s

RUN_STATES = ("running", "finished", "failed", "stopped")
END_STATES = ("finished", "failed", "stopped")
PHASES = ("warmup", "task-agnostic", "task-specific", "finetune", "evaluate")
ACTION_KINDS = ("stop", "exclude_site")
DEFAULT_STORE_PATH = Path("runs/festa.db")
_LOCKS: dict[object, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_WRITE = "festa_write_tx"


class StoreError(Exception):
    """Base of every run-store error."""


class UnknownRunError(StoreError, KeyError):
    """No run with that id in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown run"


class UnknownRoundError(StoreError, KeyError):
    """The round was never started in that run."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown round"


class RunEndedError(StoreError):
    """The run has ended (finished, failed or stopped): there is nothing left to act on."""


class InvalidValueError(StoreError, ValueError):
    """A value handed to a writer cannot be stored (wrong type, negative count, bad state)."""


def _engine_for(url_or_path: str | Path) -> sa.Engine:
    text = str(url_or_path)
    if "://" in text:
        url = sa.make_url(text)
    elif text == ":memory:":
        url = sa.make_url("sqlite://")
    else:
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = sa.make_url(f"sqlite:///{path}")
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    memory = url.database in (None, "", ":memory:")
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if memory else None,
    )

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Transactions are begun by us (below), not by the sqlite3 module.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        if not memory:
            # WAL lets the console process read while the server process writes.
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL never corrupts; a power cut may lose the last commits only.
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _sqlite_begin(conn: sa.Connection) -> None:
        # A writer takes SQLite's write lock up front (waiting up to busy_timeout), so two
        # processes never both read-then-write and fail on the upgrade, and a store opened
        # by two processes at once is migrated by one of them only.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITE, True) else "BEGIN")

    return engine


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _number(name: str, value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None  # NaN/inf are stored as "no value"


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _json_dict(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidValueError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"{name} is not JSON-serialisable: {exc}") from exc


def _node(node_id: Any) -> str | None:
    return None if node_id is None else str(node_id)


def _row(row: sa.Row) -> dict[str, Any]:
    return dict(row._mapping)


class RunStore:
    """The run store at `url_or_path`: a SQLite file path (created with its folder), ':memory:',
    or any SQLAlchemy database URL. Opening it applies pending schema migrations.

    `clock` returns UTC epoch seconds; tests pass their own.
    """

    def __init__(
        self, url_or_path: str | Path = DEFAULT_STORE_PATH, clock: Callable[[], float] = time.time
    ) -> None:
        self.location = str(url_or_path)
        self._clock = clock
        self._engine = _engine_for(url_or_path)
        # Stores opened on the same database in one process (ServerApp, body service,
        # console) share one lock, so their writes queue instead of racing for SQLite's.
        key = (
            str(self._engine.url)
            if self._engine.url.database not in (None, "", ":memory:")
            else id(self)
        )
        with _LOCKS_GUARD:
            self._lock = _LOCKS.setdefault(key, threading.RLock())
        with self._tx() as conn:
            self.schema_version = s.migrate(conn)

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the database connections; the store can be reopened from the same path."""
        self._engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sa.Connection]:
        """One transaction under the process-wide lock of this database."""
        with self._lock, self._engine.connect() as conn:
            conn.info[_WRITE] = write
            with conn.begin():
                yield conn

    def _run_row(self, conn: sa.Connection, run_id: int) -> dict[str, Any]:
        if isinstance(run_id, int) and not 0 < run_id < 2**63:
            # beyond SQLite's integers the query itself would fail with an OverflowError
            raise UnknownRunError(f"no run {run_id!r} in store {self.location}")
        row = conn.execute(sa.select(s.runs).where(s.runs.c.id == run_id)).first()
        if row is None:
            raise UnknownRunError(f"no run {run_id!r} in store {self.location}")
        return _row(row)

    @staticmethod
    def _upsert(
        conn: sa.Connection, table: sa.Table, keys: dict[str, Any], values: dict[str, Any]
    ) -> None:
        where = [table.c[k] == v for k, v in keys.items()]
        if conn.execute(sa.update(table).where(*where).values(**values)).rowcount == 0:
            conn.execute(sa.insert(table).values(**keys, **values))

    def _ensure_task(self, conn: sa.Connection, run_id: int, task: str | None, rnd: int) -> None:
        if task is None:
            return
        key = sa.and_(s.tasks.c.run_id == run_id, s.tasks.c.task == task)
        if conn.execute(sa.select(s.tasks.c.task).where(key)).first() is None:
            conn.execute(sa.insert(s.tasks).values(run_id=run_id, task=task, first_round=rnd))

    def _event(
        self,
        conn: sa.Connection,
        run_id: int,
        kind: str,
        message: str,
        node_id: Any = None,
        site_id: str | None = None,
    ) -> int:
        result = conn.execute(
            sa.insert(s.events).values(
                run_id=run_id,
                at=self._clock(),
                kind=_text("kind", kind),
                message=str(message),
                node_id=_node(node_id),
                site_id=site_id,
            )
        )
        return int(result.inserted_primary_key[0])

    # -- writers --------------------------------------------------------------------------

    def create_run(
        self, name: str, config: Mapping[str, Any], num_rounds: int | None = None
    ) -> int:
        """Start a run in state 'running'; returns its id. `num_rounds` (planned total, used
        for the ETA) defaults to config['num_rounds'] when present."""
        config = _json_dict("config", config)
        if num_rounds is None and isinstance(config.get("num_rounds"), int):
            num_rounds = config["num_rounds"]
        if num_rounds is not None:
            _count("num_rounds", num_rounds)
        with self._tx() as conn:
            result = conn.execute(
                sa.insert(s.runs).values(
                    name=_text("name", name),
                    state="running",
                    config=config,
                    num_rounds=num_rounds,
                    started_at=self._clock(),
                )
            )
            run_id = int(result.inserted_primary_key[0])
            self._event(conn, run_id, "run_started", f"run {name!r} started")
        return run_id

    def resume_run(self, run_id: int) -> None:
        """Mark a stopped or failed run as running again (after a server restart)."""
        with self._tx() as conn:
            run = self._run_row(conn, run_id)
            conn.execute(
                sa.update(s.runs)
                .where(s.runs.c.id == run_id)
                .values(state="running", ended_at=None)
            )
            self._event(
                conn,
                run_id,
                "resume",
                f"resumed from state {run['state']} at round {run['current_round']}",
            )

    def start_round(self, run_id: int, round: int, phase: str) -> None:
        """A round begins in `phase` (e.g. one of PHASES); it becomes the run's current round.
        Starting a round again (after a resume) restarts its clock; use set_phase to move
        a running round to another phase."""
        _count("round", round)
        _text("phase", phase)
        with self._tx() as conn:
            self._run_row(conn, run_id)
            self._upsert(
                conn,
                s.rounds,
                {"run_id": run_id, "round": round},
                {"phase": phase, "started_at": self._clock(), "ended_at": None, "seconds": None},
            )
            conn.execute(
                sa.update(s.runs)
                .where(s.runs.c.id == run_id)
                .values(current_round=round, current_phase=phase)
            )

    def set_phase(self, run_id: int, phase: str) -> None:
        """The current round moves on to `phase` (e.g. 'evaluate'); its clock keeps running."""
        _text("phase", phase)
        with self._tx() as conn:
            run = self._run_row(conn, run_id)
            conn.execute(sa.update(s.runs).where(s.runs.c.id == run_id).values(current_phase=phase))
            if run["current_round"] is not None:
                conn.execute(
                    sa.update(s.rounds)
                    .where(s.rounds.c.run_id == run_id, s.rounds.c.round == run["current_round"])
                    .values(phase=phase)
                )

    def finish_round(self, run_id: int, round: int, seconds: float | None = None) -> None:
        """The round ended; `seconds` defaults to the time since start_round."""
        now = self._clock()
        with self._tx() as conn:
            self._run_row(conn, run_id)
            key = sa.and_(s.rounds.c.run_id == run_id, s.rounds.c.round == round)
            started = conn.execute(sa.select(s.rounds.c.started_at).where(key)).scalar()
            if started is None:
                raise UnknownRoundError(f"round {round} of run {run_id} was never started")
            secs = now - started if seconds is None else _number("seconds", seconds)
            conn.execute(sa.update(s.rounds).where(key).values(ended_at=now, seconds=secs))

    def record_task_metrics(
        self, run_id: int, round: int, task: str, metrics: Mapping[str, float]
    ) -> None:
        """Aggregated metrics of one task after `round` (e.g. {'loss': .4, 'auroc': .8})."""
        _count("round", round)
        _text("task", task)
        values = {_text("metric name", k): _number(f"metric {k}", v) for k, v in metrics.items()}
        with self._tx() as conn:
            self._run_row(conn, run_id)
            self._ensure_task(conn, run_id, task, round)
            for name, value in values.items():
                self._upsert(
                    conn,
                    s.task_metrics,
                    {"run_id": run_id, "round": round, "task": task, "name": name},
                    {"value": value},
                )

    def record_client_round(
        self,
        run_id: int,
        round: int,
        node_id: int | str | None,
        site_id: str,
        task: str | None,
        num_examples: int,
        bytes_in: int,
        bytes_out: int,
        metrics: Mapping[str, Any] | None = None,
        dropped: str | None = None,
        failed: bool = False,
    ) -> None:
        """One client's part in one round. `dropped` is the reason it took no part (timeout,
        excluded, ...), None if it did; `failed=True` counts it as failed (it replied with an
        error) rather than dropped. bytes_in/out are as seen by the server (in = received).
        The client is marked online and seen now unless dropped/failed."""
        _count("round", round)
        _text("site_id", site_id)
        row = {
            "node_id": _node(node_id),
            "task": task,
            "num_examples": _count("num_examples", num_examples),
            "bytes_in": _count("bytes_in", bytes_in),
            "bytes_out": _count("bytes_out", bytes_out),
            "metrics": _json_dict("metrics", metrics or {}),
            "dropped": dropped if dropped is None else str(dropped),
            "failed": bool(failed),
            "recorded_at": self._clock(),
        }
        took_part = dropped is None and not failed
        with self._tx() as conn:
            self._run_row(conn, run_id)
            self._ensure_task(conn, run_id, task, round)
            self._upsert(
                conn, s.client_rounds, {"run_id": run_id, "round": round, "site_id": site_id}, row
            )
            self._touch_client(conn, run_id, site_id, node_id, task, online=took_part)

    def _touch_client(
        self,
        conn: sa.Connection,
        run_id: int,
        site_id: str,
        node_id: Any,
        task: str | None,
        online: bool,
    ) -> None:
        now = self._clock()
        key = sa.and_(s.clients.c.run_id == run_id, s.clients.c.site_id == site_id)
        existing = conn.execute(sa.select(s.clients).where(key)).first()
        values: dict[str, Any] = {"online": online}
        if online:
            values["last_seen"] = now
        if node_id is not None:
            values["node_id"] = _node(node_id)
        if task is not None:
            values["task"] = task
        if existing is None:
            first = {"run_id": run_id, "site_id": site_id, "first_seen": now, "last_seen": now}
            conn.execute(sa.insert(s.clients).values(**(first | values)))
        else:
            conn.execute(sa.update(s.clients).where(key).values(**values))

    def mark_client(
        self,
        run_id: int,
        site_id: str,
        online: bool,
        node_id: int | str | None = None,
        task: str | None = None,
    ) -> None:
        """A site connected (online=True, seen now) or went away (online=False)."""
        _text("site_id", site_id)
        with self._tx() as conn:
            self._run_row(conn, run_id)
            self._ensure_task(conn, run_id, task, 0)
            self._touch_client(conn, run_id, site_id, node_id, task, online=bool(online))

    def record_body_throughput(
        self, run_id: int, round: int, tokens_per_s: float, steps: int
    ) -> None:
        """The body service's throughput over part of `round` (appended; several per round ok)."""
        row = {
            "round": _count("round", round),
            "tokens_per_s": _number("tokens_per_s", tokens_per_s) or 0.0,
            "steps": _count("steps", steps),
            "recorded_at": self._clock(),
        }
        with self._tx() as conn:
            self._run_row(conn, run_id)
            conn.execute(sa.insert(s.body_throughput).values(run_id=run_id, **row))

    def record_restoration(
        self, run_id: int, round: int, site_id: str, restored: int, pending: int, quarantined: int
    ) -> None:
        """Restoration counts a site reported with `round` (latest report per round wins)."""
        _count("round", round)
        _text("site_id", site_id)
        values = {
            "restored": _count("restored", restored),
            "pending": _count("pending", pending),
            "quarantined": _count("quarantined", quarantined),
            "recorded_at": self._clock(),
        }
        with self._tx() as conn:
            self._run_row(conn, run_id)
            self._upsert(
                conn, s.restoration, {"run_id": run_id, "round": round, "site_id": site_id}, values
            )

    def record_event(
        self,
        run_id: int,
        kind: str,
        message: str,
        node_id: int | str | None = None,
        site_id: str | None = None,
    ) -> int:
        """Append to the event log (kind e.g. node_joined, node_dropped, token_refused,
        checkpoint_written, resume); returns the event id."""
        with self._tx() as conn:
            self._run_row(conn, run_id)
            return self._event(conn, run_id, kind, message, node_id, site_id)

    def record_checkpoint(self, run_id: int, round: int, path: str | Path) -> None:
        """A checkpoint of `round` was written at `path` (also logged as an event)."""
        _count("round", round)
        with self._tx() as conn:
            self._run_row(conn, run_id)
            conn.execute(
                sa.insert(s.checkpoints).values(
                    run_id=run_id, round=round, path=str(path), at=self._clock()
                )
            )
            self._event(conn, run_id, "checkpoint_written", f"round {round}: {path}")

    def finish_run(self, run_id: int, state: str = "finished") -> None:
        """End the run in `state` (finished, failed or stopped); its clients go offline."""
        if state not in END_STATES:
            raise InvalidValueError(f"state must be one of {END_STATES}, got {state!r}")
        with self._tx() as conn:
            self._run_row(conn, run_id)
            conn.execute(
                sa.update(s.runs)
                .where(s.runs.c.id == run_id)
                .values(state=state, ended_at=self._clock())
            )
            conn.execute(
                sa.update(s.clients).where(s.clients.c.run_id == run_id).values(online=False)
            )
            self._event(conn, run_id, "run_" + state, f"run {state}")

    # -- admin actions (written by the console, polled by the ServerApp) -----------------

    def _action(self, run_id: int, kind: str, site_id: str | None, message: str) -> int:
        with self._tx() as conn:
            state = self._run_row(conn, run_id)["state"]
            if state in END_STATES:
                raise RunEndedError(f"run {run_id} is {state}: a {kind} action has no effect")
            result = conn.execute(
                sa.insert(s.admin_actions).values(
                    run_id=run_id, kind=kind, site_id=site_id, requested_at=self._clock()
                )
            )
            self._event(conn, run_id, kind + "_requested", message, site_id=site_id)
            return int(result.inserted_primary_key[0])

    def request_stop(self, run_id: int) -> int:
        """Ask the ServerApp to stop the run after the current round; returns the action id."""
        return self._action(run_id, "stop", None, "stop requested")

    def exclude_site(self, run_id: int, site_id: str) -> int:
        """Ask the ServerApp to leave `site_id` out of the next round; returns the action id."""
        _text("site_id", site_id)
        return self._action(run_id, "exclude_site", site_id, f"exclude {site_id} from next round")

    def pending_actions(self, run_id: int) -> list[dict[str, Any]]:
        """Requested actions the ServerApp has not acknowledged yet, oldest first:
        [{'id', 'kind': 'stop'|'exclude_site', 'site_id', 'requested_at'}]."""
        with self._tx(write=False) as conn:
            self._run_row(conn, run_id)
            rows = conn.execute(
                sa.select(
                    s.admin_actions.c.id,
                    s.admin_actions.c.kind,
                    s.admin_actions.c.site_id,
                    s.admin_actions.c.requested_at,
                )
                .where(s.admin_actions.c.run_id == run_id, s.admin_actions.c.done_at.is_(None))
                .order_by(s.admin_actions.c.id)
            )
            return [_row(r) for r in rows]

    def ack_action(self, action_id: int) -> None:
        """The ServerApp carried out (or consumed) the action; it is no longer pending."""
        with self._tx() as conn:
            done = conn.execute(
                sa.update(s.admin_actions)
                .where(s.admin_actions.c.id == action_id)
                .values(done_at=self._clock())
            )
            if done.rowcount == 0:
                raise StoreError(f"no admin action {action_id!r}")

    # -- readers --------------------------------------------------------------------------

    def latest_run_id(self) -> int | None:
        """Id of the most recently created run, None for an empty store."""
        with self._tx(write=False) as conn:
            value = conn.execute(sa.select(sa.func.max(s.runs.c.id))).scalar()
        return None if value is None else int(value)

    def runs(self) -> list[dict[str, Any]]:
        """Every run's summary (as `run`), oldest first."""
        with self._tx(write=False) as conn:
            ids = conn.execute(sa.select(s.runs.c.id).order_by(s.runs.c.id)).scalars().all()
            return [self._summary(conn, run_id) for run_id in ids]

    def run(self, run_id: int) -> dict[str, Any]:
        """One run: its row (id, name, state, config, num_rounds, started_at, ended_at,
        current_round, current_phase) plus rounds_finished, elapsed_seconds, eta_seconds,
        tasks, clients_total, clients_online, tokens_per_s (latest), pending_actions."""
        with self._tx(write=False) as conn:
            return self._summary(conn, run_id)

    def _summary(self, conn: sa.Connection, run_id: int) -> dict[str, Any]:
        run = self._run_row(conn, run_id)
        done = conn.execute(
            sa.select(sa.func.count(), sa.func.avg(s.rounds.c.seconds)).where(
                s.rounds.c.run_id == run_id, s.rounds.c.ended_at.is_not(None)
            )
        ).one()
        now = self._clock()
        run["rounds_finished"] = int(done[0])
        end = run["ended_at"] if run["ended_at"] is not None else now
        run["elapsed_seconds"] = end - run["started_at"]
        run["eta_seconds"] = self._eta(conn, run, int(done[0]), done[1], now)
        run["tasks"] = [t["task"] for t in self._tasks(conn, run_id)]
        online = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(sa.cast(s.clients.c.online, sa.Integer))).where(
                s.clients.c.run_id == run_id
            )
        ).one()
        run["clients_total"] = int(online[0])
        run["clients_online"] = int(online[1] or 0)
        run["tokens_per_s"] = conn.execute(
            sa.select(s.body_throughput.c.tokens_per_s)
            .where(s.body_throughput.c.run_id == run_id)
            .order_by(s.body_throughput.c.id.desc())
            .limit(1)
        ).scalar()
        run["pending_actions"] = int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    s.admin_actions.c.run_id == run_id, s.admin_actions.c.done_at.is_(None)
                )
            ).scalar()
        )
        return run

    @staticmethod
    def _eta(
        conn: sa.Connection,
        run: dict[str, Any],
        finished: int,
        mean_seconds: float | None,
        now: float,
    ) -> float | None:
        """Seconds left: mean round time x rounds left, less the running round's elapsed time."""
        if run["state"] != "running" or not run["num_rounds"] or mean_seconds is None:
            return None
        remaining = max(run["num_rounds"] - finished, 0) * mean_seconds
        running = conn.execute(
            sa.select(s.rounds.c.started_at).where(
                s.rounds.c.run_id == run["id"], s.rounds.c.ended_at.is_(None)
            )
        ).scalar()
        if running is not None:
            remaining -= min(now - running, mean_seconds)
        return max(remaining, 0.0)

    def rounds(self, run_id: int) -> list[dict[str, Any]]:
        """Per round: round, phase, started_at, ended_at, seconds, clients (took part), dropped,
        failed, num_examples, bytes_in, bytes_out, tokens_per_s (mean), body_steps."""
        cr, bt = s.client_rounds, s.body_throughput
        part = sa.and_(cr.c.dropped.is_(None), cr.c.failed == sa.false())
        traffic = (
            sa.select(
                cr.c.round,
                sa.func.sum(sa.case((part, 1), else_=0)).label("clients"),
                sa.func.sum(sa.case((cr.c.dropped.is_not(None), 1), else_=0)).label("dropped"),
                sa.func.sum(sa.case((cr.c.failed == sa.true(), 1), else_=0)).label("failed"),
                sa.func.sum(sa.case((part, cr.c.num_examples), else_=0)).label("num_examples"),
                sa.func.sum(cr.c.bytes_in).label("bytes_in"),
                sa.func.sum(cr.c.bytes_out).label("bytes_out"),
            )
            .where(cr.c.run_id == run_id)
            .group_by(cr.c.round)
            .subquery()
        )
        body = (
            sa.select(
                bt.c.round,
                sa.func.avg(bt.c.tokens_per_s).label("tokens_per_s"),
                sa.func.sum(bt.c.steps).label("body_steps"),
            )
            .where(bt.c.run_id == run_id)
            .group_by(bt.c.round)
            .subquery()
        )
        r = s.rounds
        query = (
            sa.select(
                r.c.round,
                r.c.phase,
                r.c.started_at,
                r.c.ended_at,
                r.c.seconds,
                *[sa.func.coalesce(traffic.c[k], 0).label(k) for k in _ROUND_COUNTS],
                body.c.tokens_per_s,
                sa.func.coalesce(body.c.body_steps, 0).label("body_steps"),
            )
            .select_from(
                r.outerjoin(traffic, traffic.c.round == r.c.round).outerjoin(
                    body, body.c.round == r.c.round
                )
            )
            .where(r.c.run_id == run_id)
            .order_by(r.c.round)
        )
        with self._tx(write=False) as conn:
            self._run_row(conn, run_id)
            return [_row(row) for row in conn.execute(query)]

    def tasks(self, run_id: int) -> list[dict[str, Any]]:
        """Tasks of the run: [{'task', 'first_round'}] in order of appearance."""
        with self._tx(write=False) as conn:
            self._run_row(conn, run_id)
            return self._tasks(conn, run_id)

    @staticmethod
    def _tasks(conn: sa.Connection, run_id: int) -> list[dict[str, Any]]:
        rows = conn.execute(
            sa.select(s.tasks.c.task, s.tasks.c.first_round)
            .where(s.tasks.c.run_id == run_id)
            .order_by(s.tasks.c.first_round, s.tasks.c.task)
        )
        return [_row(r) for r in rows]

    def clients(self, run_id: int) -> list[dict[str, Any]]:
        """Per site: site_id, node_id, task, first_seen, last_seen, online, rounds (took part),
        dropped_rounds, failed_rounds, examples (latest reported), examples_total, bytes_in,
        bytes_out, contribution (share of all examples trained on in the run), last_dropped."""
        cr, cl = s.client_rounds, s.clients
        took_part = sa.and_(cr.c.dropped.is_(None), cr.c.failed == sa.false())
        dropped = sa.and_(cr.c.dropped.is_not(None), cr.c.failed == sa.false())
        agg = (
            sa.select(
                cr.c.site_id,
                sa.func.sum(sa.case((took_part, 1), else_=0)).label("rounds"),
                sa.func.sum(sa.case((dropped, 1), else_=0)).label("dropped_rounds"),
                sa.func.sum(sa.case((cr.c.failed == sa.true(), 1), else_=0)).label("failed_rounds"),
                sa.func.sum(sa.case((took_part, cr.c.num_examples), else_=0)).label(
                    "examples_total"
                ),
                sa.func.sum(cr.c.bytes_in).label("bytes_in"),
                sa.func.sum(cr.c.bytes_out).label("bytes_out"),
            )
            .where(cr.c.run_id == run_id)
            .group_by(cr.c.site_id)
            .subquery()
        )

        def latest(column: sa.ColumnElement, which: sa.ColumnElement) -> sa.ScalarSelect:
            mine = sa.and_(cr.c.run_id == run_id, cr.c.site_id == cl.c.site_id, which)
            return (
                sa.select(column).where(mine).order_by(cr.c.round.desc()).limit(1).scalar_subquery()
            )

        query = (
            sa.select(
                *[c for c in cl.c if c.name != "run_id"],
                *[sa.func.coalesce(agg.c[k], 0).label(k) for k in _CLIENT_COUNTS],
                sa.func.coalesce(latest(cr.c.num_examples, took_part), 0).label("examples"),
                latest(cr.c.dropped, dropped).label("last_dropped"),
            )
            .select_from(cl.outerjoin(agg, agg.c.site_id == cl.c.site_id))
            .where(cl.c.run_id == run_id)
            .order_by(cl.c.site_id)
        )
        out = self._rows(run_id, query)
        total = sum(c["examples_total"] for c in out)
        for c in out:
            c["contribution"] = c["examples_total"] / total if total else 0.0
        return out

    def client_rounds(self, run_id: int, round: int | None = None) -> list[dict[str, Any]]:
        """Per client per round: round, site_id, node_id, task, num_examples, bytes_in,
        bytes_out, metrics, dropped, failed, recorded_at (ordered by round, site)."""
        cr = s.client_rounds
        cols = [c for c in cr.c if c.name != "run_id"]
        query = sa.select(*cols).where(cr.c.run_id == run_id).order_by(cr.c.round, cr.c.site_id)
        if round is not None:
            query = query.where(cr.c.round == round)
        return self._rows(run_id, query)

    def task_metrics(self, run_id: int) -> list[dict[str, Any]]:
        """[{'round', 'task', 'metrics': {name: value}}] ordered by task then round."""
        tm = s.task_metrics
        out: dict[tuple[str, int], dict[str, Any]] = {}
        query = (
            sa.select(tm).where(tm.c.run_id == run_id).order_by(tm.c.task, tm.c.round, tm.c.name)
        )
        for r in self._rows(run_id, query):
            entry = out.setdefault(
                (r["task"], r["round"]), {"round": r["round"], "task": r["task"]}
            )
            entry.setdefault("metrics", {})[r["name"]] = r["value"]
        return list(out.values())

    def body_throughput(self, run_id: int) -> list[dict[str, Any]]:
        """Every throughput report: [{'round', 'tokens_per_s', 'steps', 'recorded_at'}]."""
        bt = s.body_throughput
        cols = (bt.c.round, bt.c.tokens_per_s, bt.c.steps, bt.c.recorded_at)
        return self._rows(run_id, sa.select(*cols).where(bt.c.run_id == run_id).order_by(bt.c.id))

    def restoration(self, run_id: int) -> list[dict[str, Any]]:
        """Every restoration report: [{'round', 'site_id', 'restored', 'pending',
        'quarantined', 'recorded_at'}] ordered by round, site."""
        rs = s.restoration
        query = (
            sa.select(*[c for c in rs.c if c.name != "run_id"])
            .where(rs.c.run_id == run_id)
            .order_by(rs.c.round, rs.c.site_id)
        )
        return self._rows(run_id, query)

    def restoration_status(self, run_id: int) -> list[dict[str, Any]]:
        """Latest restoration report of each site, ordered by site."""
        latest: dict[str, dict[str, Any]] = {}
        for r in self.restoration(run_id):
            latest[r["site_id"]] = r
        return [latest[k] for k in sorted(latest)]

    def events(self, run_id: int, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Event log entries with id > after_id, oldest first; at most the newest `limit`:
        [{'id', 'at', 'kind', 'message', 'node_id', 'site_id'}]."""
        ev = s.events
        newest = (
            sa.select(ev.c.id, ev.c.at, ev.c.kind, ev.c.message, ev.c.node_id, ev.c.site_id)
            .where(ev.c.run_id == run_id, ev.c.id > after_id)
            .order_by(ev.c.id.desc())
            .limit(limit)
        )
        return list(reversed(self._rows(run_id, newest)))

    def checkpoints(self, run_id: int) -> list[dict[str, Any]]:
        """[{'round', 'path', 'at'}] in the order they were written."""
        ck = s.checkpoints
        query = sa.select(ck.c.round, ck.c.path, ck.c.at).where(ck.c.run_id == run_id)
        return self._rows(run_id, query.order_by(ck.c.id))

    def snapshot(self, run_id: int) -> dict[str, Any]:
        """What the console page shows for one run, in one dict (kept small: it is polled
        every 2 s; per-client rounds and throughput reports have readers of their own)."""
        return {
            "run": self.run(run_id),
            "rounds": self.rounds(run_id),
            "tasks": self.tasks(run_id),
            "task_metrics": self.task_metrics(run_id),
            "clients": self.clients(run_id),
            "restoration": self.restoration_status(run_id),
            "events": self.events(run_id, limit=200),
            "checkpoints": self.checkpoints(run_id),
        }

    def _rows(self, run_id: int, query: sa.Select) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            self._run_row(conn, run_id)
            return [_row(r) for r in conn.execute(query)]


_ROUND_COUNTS = ("clients", "dropped", "failed", "num_examples", "bytes_in", "bytes_out")
_CLIENT_COUNTS = (
    "rounds",
    "dropped_rounds",
    "failed_rounds",
    "examples_total",
    "bytes_in",
    "bytes_out",
)
