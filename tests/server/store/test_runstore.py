"""Run store: every writer lands in its reader, the file survives reopening, old schemas
migrate, and threads writing at once lose nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from festa.server.store import (
    SCHEMA_VERSION,
    InvalidValueError,
    RunStore,
    SchemaTooNewError,
    UnknownRoundError,
    UnknownRunError,
)
from festa.server.store import schema as s


def test_run_lifecycle_round_trips(store_path, clock):
    store = RunStore(store_path, clock=clock)
    run_id = store.create_run("r1", {"num_rounds": 4, "lr": 0.01})
    run = store.run(run_id)
    assert (run["name"], run["state"], run["config"], run["num_rounds"]) == (
        "r1",
        "running",
        {"num_rounds": 4, "lr": 0.01},
        4,
    )
    assert run["started_at"] == clock.now and run["ended_at"] is None
    assert store.latest_run_id() == run_id
    assert [r["id"] for r in store.runs()] == [run_id]

    store.start_round(run_id, 1, "warmup")
    assert (store.run(run_id)["current_round"], store.run(run_id)["current_phase"]) == (1, "warmup")
    clock.advance(12.5)
    store.finish_round(run_id, 1)
    store.start_round(run_id, 2, "task-agnostic")
    store.finish_round(run_id, 2, seconds=7.0)
    rounds = store.rounds(run_id)
    assert [(r["round"], r["phase"], r["seconds"]) for r in rounds] == [
        (1, "warmup", 12.5),
        (2, "task-agnostic", 7.0),
    ]
    store.start_round(run_id, 3, "task-specific")
    clock.advance(2.0)
    store.set_phase(run_id, "evaluate")
    clock.advance(3.0)
    store.finish_round(run_id, 3)
    assert (store.rounds(run_id)[-1]["phase"], store.rounds(run_id)[-1]["seconds"]) == (
        "evaluate",
        5.0,
    )
    assert store.run(run_id)["current_phase"] == "evaluate"
    clock.advance(1.0)
    store.finish_run(run_id, "stopped")
    run = store.run(run_id)
    assert run["state"] == "stopped" and run["ended_at"] == clock.now
    assert run["rounds_finished"] == 3
    assert [e["kind"] for e in store.events(run_id)] == ["run_started", "run_stopped"]
    store.resume_run(run_id)
    assert store.run(run_id)["state"] == "running"
    assert store.events(run_id)[-1]["kind"] == "resume"


def test_client_rounds_feed_clients_rounds_and_traffic(store_path, clock):
    store = RunStore(store_path, clock=clock)
    run_id = store.create_run("r", {})
    store.start_round(run_id, 1, "warmup")
    store.record_client_round(run_id, 1, 2**63 + 5, "site-a", "cls", 100, 1000, 700, {"loss": 0.5})
    store.record_client_round(run_id, 1, 7, "site-b", "seg", 50, 10, 600, dropped="timeout")
    clock.advance(5)
    store.start_round(run_id, 2, "task-agnostic")
    store.record_client_round(run_id, 2, 2**63 + 5, "site-a", "cls", 120, 2000, 900, {"loss": 0.4})
    store.record_client_round(run_id, 2, 7, "site-b", "seg", 60, 300, 800, failed=True)

    per_round = store.client_rounds(run_id)
    assert [(r["round"], r["site_id"]) for r in per_round] == [
        (1, "site-a"),
        (1, "site-b"),
        (2, "site-a"),
        (2, "site-b"),
    ]
    assert per_round[0]["node_id"] == str(2**63 + 5)  # beyond signed 64-bit: kept exactly
    assert per_round[0]["metrics"] == {"loss": 0.5}
    assert per_round[1]["dropped"] == "timeout" and per_round[3]["failed"] is True
    assert store.client_rounds(run_id, round=2) == per_round[2:]

    clients = {c["site_id"]: c for c in store.clients(run_id)}
    a, b = clients["site-a"], clients["site-b"]
    assert (a["rounds"], a["examples"], a["examples_total"]) == (2, 120, 220)
    assert (a["bytes_in"], a["bytes_out"], a["online"], a["task"]) == (3000, 1600, True, "cls")
    assert a["last_seen"] == clock.now and a["contribution"] == 1.0
    assert (b["rounds"], b["dropped_rounds"], b["failed_rounds"]) == (0, 1, 1)
    assert (b["online"], b["last_dropped"], b["contribution"]) == (False, "timeout", 0.0)

    rounds = {r["round"]: r for r in store.rounds(run_id)}
    assert (rounds[1]["clients"], rounds[1]["dropped"], rounds[1]["failed"]) == (1, 1, 0)
    assert (rounds[1]["bytes_in"], rounds[1]["bytes_out"], rounds[1]["num_examples"]) == (
        1010,
        1300,
        100,
    )
    assert (rounds[2]["clients"], rounds[2]["failed"], rounds[2]["bytes_in"]) == (1, 1, 2300)
    assert [t["task"] for t in store.tasks(run_id)] == ["cls", "seg"]

    store.mark_client(run_id, "site-b", online=True, node_id=8)
    b = {c["site_id"]: c for c in store.clients(run_id)}["site-b"]
    assert (b["online"], b["node_id"]) == (True, "8")


def test_metrics_throughput_restoration_events_checkpoints_round_trip(store_path, clock):
    store = RunStore(store_path, clock=clock)
    run_id = store.create_run("r", {})
    store.start_round(run_id, 1, "warmup")
    store.record_task_metrics(run_id, 1, "cls", {"loss": 0.9, "auroc": 0.6})
    store.record_task_metrics(run_id, 1, "cls", {"auroc": 0.65})  # a later report wins
    store.record_task_metrics(run_id, 2, "cls", {"loss": 0.7, "auroc": float("nan")})
    store.record_task_metrics(run_id, 1, "seg", {"dice": 0.3})
    assert store.task_metrics(run_id) == [
        {"round": 1, "task": "cls", "metrics": {"auroc": 0.65, "loss": 0.9}},
        {"round": 2, "task": "cls", "metrics": {"auroc": None, "loss": 0.7}},
        {"round": 1, "task": "seg", "metrics": {"dice": 0.3}},
    ]

    store.record_body_throughput(run_id, 1, 1000.0, 10)
    store.record_body_throughput(run_id, 1, 3000.0, 30)
    assert [(b["round"], b["tokens_per_s"], b["steps"]) for b in store.body_throughput(run_id)] == [
        (1, 1000.0, 10),
        (1, 3000.0, 30),
    ]
    r1 = store.rounds(run_id)[0]
    assert (r1["tokens_per_s"], r1["body_steps"]) == (2000.0, 40)
    assert store.run(run_id)["tokens_per_s"] == 3000.0

    store.record_restoration(run_id, 1, "site-b", 4, 2, 1)
    store.record_restoration(run_id, 1, "site-a", 1, 0, 0)
    store.record_restoration(run_id, 2, "site-a", 9, 1, 2)
    assert [(r["round"], r["site_id"]) for r in store.restoration(run_id)] == [
        (1, "site-a"),
        (1, "site-b"),
        (2, "site-a"),
    ]
    assert [
        (r["site_id"], r["round"], r["restored"], r["pending"], r["quarantined"])
        for r in store.restoration_status(run_id)
    ] == [("site-a", 2, 9, 1, 2), ("site-b", 1, 4, 2, 1)]

    ev = store.record_event(run_id, "token_refused", "bad token", node_id=42, site_id="site-x")
    store.record_checkpoint(run_id, 1, "runs/ck/1.pt")
    events = store.events(run_id)
    refused = next(e for e in events if e["id"] == ev)
    assert (refused["kind"], refused["message"], refused["node_id"], refused["site_id"]) == (
        "token_refused",
        "bad token",
        "42",
        "site-x",
    )
    assert events[-1]["kind"] == "checkpoint_written"
    assert store.events(run_id, after_id=ev) == events[-1:]
    assert store.events(run_id, limit=1) == events[-1:]
    assert store.checkpoints(run_id) == [{"round": 1, "path": "runs/ck/1.pt", "at": clock.now}]


def test_admin_actions_stay_pending_until_acknowledged(store_path):
    store = RunStore(store_path)
    run_id = store.create_run("r", {})
    other = store.create_run("other", {})
    excl = store.exclude_site(run_id, "site-c")
    stop = store.request_stop(run_id)
    pending = store.pending_actions(run_id)
    assert [(a["id"], a["kind"], a["site_id"]) for a in pending] == [
        (excl, "exclude_site", "site-c"),
        (stop, "stop", None),
    ]
    assert store.pending_actions(other) == []
    assert store.run(run_id)["pending_actions"] == 2
    store.ack_action(excl)
    assert [a["id"] for a in store.pending_actions(run_id)] == [stop]
    assert {"exclude_site_requested", "stop_requested"} <= {e["kind"] for e in store.events(run_id)}


def test_eta_is_mean_round_time_times_rounds_left(store_path, clock):
    store = RunStore(store_path, clock=clock)
    run_id = store.create_run("r", {"num_rounds": 5})
    assert store.run(run_id)["eta_seconds"] is None  # nothing to estimate from yet
    for rnd, secs in [(1, 10.0), (2, 30.0)]:
        store.start_round(run_id, rnd, "warmup")
        store.finish_round(run_id, rnd, seconds=secs)
    assert store.run(run_id)["eta_seconds"] == pytest.approx(3 * 20.0)
    store.start_round(run_id, 3, "warmup")
    clock.advance(5.0)
    assert store.run(run_id)["eta_seconds"] == pytest.approx(3 * 20.0 - 5.0)
    store.finish_run(run_id, "finished")
    assert store.run(run_id)["eta_seconds"] is None


def test_reopening_the_file_continues_the_run(store_path, clock, demo_writers):
    fill, write_round = demo_writers
    store = RunStore(store_path, clock=clock)
    run_id = fill(store, rounds=2, clock=clock)
    before = store.snapshot(run_id)
    store.close()

    reopened = RunStore(store_path, clock=clock)
    assert reopened.snapshot(run_id) == before
    write_round(reopened, run_id, 3, clock)
    assert [r["round"] for r in reopened.rounds(run_id)] == [1, 2, 3]
    assert reopened.latest_run_id() == run_id
    reopened.close()
    with sqlite3.connect(store_path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_migrates_a_version_1_store_keeping_its_data(store_path):
    engine = sa.create_engine(f"sqlite:///{store_path}")
    store_path.parent.mkdir(parents=True, exist_ok=True)
    with engine.begin() as conn:
        assert s.migrate(conn, target=1) == 1
        cols = {c["name"] for c in sa.inspect(conn).get_columns("clients")}
        assert "online" not in cols and not sa.inspect(conn).has_table("admin_actions")
        conn.execute(
            sa.text(
                "INSERT INTO runs (name, state, config, started_at, current_round) "
                "VALUES ('old', 'running', '{}', 1.0, 1)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO clients (run_id, site_id, node_id, task, first_seen, last_seen) "
                "VALUES (1, 'site-a', '5', 'cls', 1.0, 2.0)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO client_rounds (run_id, round, site_id, node_id, task, num_examples,"
                " bytes_in, bytes_out, metrics, dropped, recorded_at)"
                " VALUES (1, 1, 'site-a', '5', 'cls', 10, 100, 50, '{}', NULL, 2.0)"
            )
        )
    engine.dispose()

    store = RunStore(store_path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.run(1)["name"] == "old"
    (client,) = store.clients(1)
    assert (client["site_id"], client["online"], client["rounds"], client["bytes_in"]) == (
        "site-a",
        True,
        1,
        100,
    )
    assert store.client_rounds(1)[0]["failed"] is False
    action = store.request_stop(1)  # a table v1 did not have
    assert [a["id"] for a in store.pending_actions(1)] == [action]


def test_refuses_a_store_from_a_newer_schema(store_path):
    RunStore(store_path).close()
    with sqlite3.connect(store_path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNewError, match="upgrade festa"):
        RunStore(store_path)


def test_concurrent_writes_from_threads_are_all_kept(store_path):
    store = RunStore(store_path)
    body_store = RunStore(store_path)  # the body service may open its own store on the file
    run_id = store.create_run("threads", {})
    store.start_round(run_id, 1, "warmup")
    errors: list[BaseException] = []
    per_thread = 25

    def client_writer(site: int) -> None:
        try:
            for rnd in range(1, per_thread + 1):
                store.record_client_round(run_id, rnd, site, f"site-{site}", "cls", 1, 10, 20)
                store.record_event(run_id, "tick", f"{site}/{rnd}", node_id=site)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def body_writer() -> None:
        try:
            for rnd in range(1, per_thread + 1):
                body_store.record_body_throughput(run_id, rnd, 100.0, 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client_writer, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=body_writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.client_rounds(run_id)) == 4 * per_thread
    assert len([e for e in store.events(run_id) if e["kind"] == "tick"]) == 4 * per_thread
    assert len(store.body_throughput(run_id)) == per_thread
    assert {c["bytes_in"] for c in store.clients(run_id)} == {10 * per_thread}


def test_bad_input_gets_typed_errors_and_writes_nothing(store_path, clock):
    store = RunStore(store_path, clock=clock)
    run_id = store.create_run("r", {})
    before = store.snapshot(run_id)
    with pytest.raises(UnknownRunError, match="no run 99"):
        store.start_round(99, 1, "warmup")
    with pytest.raises(UnknownRunError):
        store.rounds(99)
    with pytest.raises(UnknownRoundError):
        store.finish_round(run_id, 3)
    with pytest.raises(InvalidValueError, match="num_examples"):
        store.record_client_round(run_id, 1, 1, "site-a", "cls", -1, 0, 0)
    with pytest.raises(InvalidValueError, match="metric auroc"):
        store.record_task_metrics(run_id, 1, "cls", {"loss": 0.1, "auroc": "high"})
    with pytest.raises(InvalidValueError, match="JSON"):
        store.create_run("x", {"bad": object()})
    with pytest.raises(InvalidValueError, match="state"):
        store.finish_run(run_id, "exploded")
    with pytest.raises(InvalidValueError, match="site_id"):
        store.exclude_site(run_id, "")
    assert store.snapshot(run_id) == before
    assert store.runs()[0]["state"] == "running" and len(store.runs()) == 1


def test_memory_store_and_database_url(tmp_path):
    mem = RunStore(":memory:")
    assert mem.latest_run_id() is None
    assert mem.create_run("m", {}) == 1
    url_store = RunStore(f"sqlite:///{tmp_path / 'via-url.db'}")
    url_store.create_run("u", {})
    assert (tmp_path / "via-url.db").is_file() and url_store.runs()[0]["name"] == "u"


_WRITER = """
import sys
from festa.server.store import RunStore
store = RunStore(sys.argv[1])
run_id = store.create_run("proc-" + sys.argv[2], {})
for rnd in range(1, 31):
    store.start_round(run_id, rnd, "warmup")
    store.record_client_round(run_id, rnd, 1, "site-" + sys.argv[2], "cls", 1, 10, 20)
    store.record_event(run_id, "tick", str(rnd))
    store.finish_round(run_id, rnd)
store.finish_run(run_id, "finished")
"""


def test_processes_opening_a_fresh_store_at_once_all_write(store_path):
    """The ServerApp process and a console process may open a new store at the same time
    and then write side by side; SQLite must serialise them, losing nothing."""
    store_path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[3]
    env = os.environ | {"PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(store_path), str(i)],
            cwd=root,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    failures = [p.stderr.read() for p in procs if p.wait(timeout=120) != 0]
    assert failures == []
    store = RunStore(store_path)
    runs = store.runs()
    assert sorted(r["name"] for r in runs) == ["proc-0", "proc-1", "proc-2"]
    for run in runs:
        assert run["state"] == "finished" and run["rounds_finished"] == 30
        assert len(store.client_rounds(run["id"])) == 30
