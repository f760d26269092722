"""`RunRecorder`: a round record lands in the run store through typed writes; without a store
nothing happens; a failing store is logged, never raised."""

from __future__ import annotations

import logging

import pytest

from festa.server.records import BodyRound, ClientRound, RoundRecord
from festa.server.store import RunStore
from festa.server.store.recorder import RunRecorder


def record(round_number: int = 1) -> RoundRecord:
    a = ClientRound("1", "classification", 40, 64, 0.7, 1000, 900, 1.5, None, {}, {"auc": 0.6})
    b = ClientRound("2", "segmentation", 30, 0, None, 10, 0, None, "failed on purpose")
    return RoundRecord(
        round=round_number,
        phase="warmup",
        train_body=True,
        tasks={"classification": {"auc": 0.6, "loss": 0.7}},
        clients={"site-a": a, "site-b": b},
        dropped={"site-b": "failed on purpose"},
        body=BodyRound(steps=4, tokens=4096, train_seconds=2.0),
        bytes_total=a.bytes_total + b.bytes_total,
        seconds=3.0,
    )


def test_a_round_record_lands_in_the_store(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    recorder = RunRecorder(store)
    recorder.open("demo", {"rounds": 2}, 2)
    recorder.client_online("site-a", 1, "classification")
    recorder.round_started(1, "warmup")
    recorder.round_finished(record())
    recorder.run_finished("finished")

    run_id = recorder.run_id
    assert run_id is not None and store.run(run_id)["state"] == "finished"
    [round_row] = store.rounds(run_id)
    assert (round_row["round"], round_row["clients"], round_row["dropped"]) == (1, 1, 1)
    assert round_row["body_steps"] == 4 and round_row["tokens_per_s"] == pytest.approx(2048)
    [metrics] = store.task_metrics(run_id)
    assert metrics["metrics"] == {"auc": 0.6, "loss": 0.7}
    rows = {r["site_id"]: r for r in store.client_rounds(run_id)}
    assert rows["site-a"]["metrics"] == {"auc": 0.6} and rows["site-b"]["dropped"]
    store.close()


def test_without_a_store_every_write_is_a_no_op():
    recorder = RunRecorder(None)
    recorder.open("demo", {}, 1)
    recorder.round_finished(record())
    assert recorder.run_id is None and recorder.pending_actions() == []


def test_a_failing_store_is_logged_and_the_run_goes_on(tmp_path, caplog):
    store = RunStore(tmp_path / "runs.db")
    recorder = RunRecorder(store)
    recorder.open("demo", {}, 1)
    recorder.run_id = 999  # a run the store does not know: every write is refused
    with caplog.at_level(logging.ERROR):
        recorder.round_started(1, "warmup")
        recorder.round_finished(record())
    assert [r.getMessage() for r in caplog.records] == [
        "run store: round_started failed",
        "run store: round_finished failed",
    ]
    store.close()


def test_round_records_read_back_from_json_as_they_were_written():
    original = record(3)
    data = original.to_json()
    assert "val" not in data["clients"]["site-b"] and data["clients"]["site-a"]["val"]
    assert RoundRecord.from_json(data) == original
