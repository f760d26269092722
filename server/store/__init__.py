"""The run store: runs, rounds, tasks, clients, metrics, traffic, restoration counts, events,
checkpoints and admin actions of federated runs, in SQLite by default (any SQLAlchemy URL works).

Writers (ServerApp, body service)::

    store = RunStore("runs/festa.db")
    run_id = store.create_run("demo", {"num_rounds": 3})
    store.start_round(run_id, 1, "task-agnostic")
    store.record_client_round(run_id, 1, node_id, "site-a", "classification", 120, 4096, 2048,
                              {"loss": 0.7})
    store.record_task_metrics(run_id, 1, "classification", {"loss": 0.7, "auroc": 0.61})
    store.finish_round(run_id, 1)
    for action in store.pending_actions(run_id): ...; store.ack_action(action["id"])
    store.finish_run(run_id, "finished")

Readers (console, CLI) return plain dicts/lists: runs(), run(id), rounds(id), tasks(id),
clients(id), client_rounds(id), task_metrics(id), restoration(id), restoration_status(id),
body_throughput(id), events(id), checkpoints(id), snapshot(id), latest_run_id().
"""

from festa.server.store.runstore import (
    ACTION_KINDS,
    DEFAULT_STORE_PATH,
    END_STATES,
    PHASES,
    RUN_STATES,
    InvalidValueError,
    RunEndedError,
    RunStore,
    StoreError,
    UnknownRoundError,
    UnknownRunError,
)
from festa.server.store.schema import SCHEMA_VERSION, SchemaTooNewError

__all__ = [
    "ACTION_KINDS",
    "DEFAULT_STORE_PATH",
    "END_STATES",
    "PHASES",
    "RUN_STATES",
    "SCHEMA_VERSION",
    "InvalidValueError",
    "RunEndedError",
    "RunStore",
    "SchemaTooNewError",
    "StoreError",
    "UnknownRoundError",
    "UnknownRunError",
]
