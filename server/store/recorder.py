"""`RunRecorder`: the server's writes of one run into the run store, as typed methods.

A run has at most one store (the console's dashboard); without one every method does nothing.
A failing write is logged and never raised: the run matters more than its dashboard.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec

from festa.server.records import RoundRecord
from festa.server.store.runstore import RunStore

log = logging.getLogger(__name__)
P = ParamSpec("P")


def _best_effort(write: Callable[P, None]) -> Callable[P, None]:
    """Skip `write` without a store; log, never raise, when the store fails."""

    @functools.wraps(write)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        recorder = args[0]
        assert isinstance(recorder, RunRecorder)
        if recorder.store is None or recorder.run_id is None:
            return
        try:
            write(*args, **kwargs)
        except Exception:
            log.exception("run store: %s failed", write.__name__)

    return guarded


class RunRecorder:
    """One run in `store` (or nowhere when `store` is None); `run_id` is the store's id."""

    def __init__(self, store: RunStore | None, run_id: int | None = None):
        self.store = store
        self.run_id = run_id

    @property
    def _target(self) -> tuple[RunStore, int]:
        assert self.store is not None and self.run_id is not None  # `_best_effort` checked
        return self.store, self.run_id

    def open(self, name: str, config: dict[str, Any], rounds: int) -> None:
        """Create this run in the store, or mark a resumed one running again."""
        if self.store is None:
            return
        if self.run_id is not None:
            self.store.resume_run(self.run_id)
        else:
            self.run_id = self.store.create_run(name, config, rounds)

    def pending_actions(self) -> list[dict[str, Any]]:
        """Console actions (stop, exclude a site) not yet acknowledged; each is acknowledged
        as it is returned."""
        if self.store is None or self.run_id is None:
            return []
        actions = self.store.pending_actions(self.run_id)
        for action in actions:
            self.store.ack_action(action["id"])
        return actions

    @_best_effort
    def client_online(self, site_id: str, node_id: int, task: str) -> None:
        db, run = self._target
        db.mark_client(run, site_id, True, node_id=node_id, task=task)

    @_best_effort
    def client_offline(self, site_id: str) -> None:
        db, run = self._target
        db.mark_client(run, site_id, False)

    @_best_effort
    def event(self, kind: str, message: str, site_id: str | None = None) -> None:
        db, run = self._target
        db.record_event(run, kind, message, site_id=site_id)

    @_best_effort
    def round_started(self, round_number: int, phase: str) -> None:
        db, run = self._target
        db.start_round(run, round_number, phase)

    @_best_effort
    def round_finished(self, record: RoundRecord) -> None:
        """Everything the console shows of a finished round: task and client metrics,
        restoration counts, body throughput, the round's time."""
        (db, run), r = self._target, record.round
        for task, metrics in record.tasks.items():
            db.record_task_metrics(run, r, task, metrics)
        for site, c in record.clients.items():
            db.record_client_round(
                run,
                r,
                c.node_id,
                site,
                c.task,
                c.num_examples,
                c.bytes_sent,
                c.bytes_received,
                c.val or {},
                c.dropped,
            )
            counts = c.restoration
            if counts.get("degraded"):
                db.record_restoration(
                    run,
                    r,
                    site,
                    counts.get("restored", 0),
                    counts.get("pending", 0),
                    counts.get("quarantined", 0),
                )
        seconds = record.body.train_seconds or 1e-9
        db.record_body_throughput(run, r, record.body.tokens / seconds, record.body.steps)
        db.finish_round(run, r, record.seconds)

    @_best_effort
    def checkpoint(self, round_number: int, path: str) -> None:
        db, run = self._target
        db.record_checkpoint(run, round_number, path)

    @_best_effort
    def run_finished(self, state: str) -> None:
        db, run = self._target
        db.finish_run(run, state)
