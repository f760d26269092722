"""Time to accuracy (issue 13) on real recorded histories: a tiny festa run (in-process engine,
its rounds.jsonl and summary) and the pooled centralized trainer's per-round history."""

from __future__ import annotations

import pytest
import torch

from festa.simulations.baselines import run_baseline
from festa.simulations.bench_federation import (
    GAP_TOLERANCE,
    festa_history,
    simulate,
    time_to_accuracy,
    time_to_reach,
)

from .test_baselines import tiny_config


@pytest.fixture(scope="module")
def histories(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = tiny_config()
    run = tmp_path_factory.mktemp("bench") / "festa"
    summary = simulate(cfg, run, engine="inprocess")
    central = run_baseline(cfg, "central")
    return cfg, summary, festa_history(run), central


def test_both_histories_have_every_round_with_growing_wall_time(histories):
    cfg, summary, fed, central = histories
    for history in (fed, central["history"]):
        assert [h["round"] for h in history] == list(range(1, cfg.rounds + 1))
        seconds = [h["seconds"] for h in history]
        assert all(0 < a < b for a, b in zip(seconds, seconds[1:], strict=False)), seconds
    # festa's clock ends at the federation's wall time; central's final metrics are its last round's
    assert fed[-1]["seconds"] == pytest.approx(summary["wall_seconds"])
    assert fed[-1]["tasks"] == summary["final"]
    assert central["history"][-1]["tasks"] == central["final"]


def test_time_to_accuracy_of_the_recorded_runs(histories):
    _, _, fed, central = histories
    central = central["history"]
    t = time_to_accuracy(fed, central, "segmentation", "dice")
    assert t["fed_final"] == fed[-1]["tasks"]["segmentation"]["dice"]
    assert t["central_seconds"] == central[-1]["seconds"]
    reached = [
        h["seconds"] for h in fed if h["tasks"]["segmentation"]["dice"] >= t["central_final"]
    ]
    expected = reached[0] / central[-1]["seconds"] if reached else None
    assert t["fed_to_central"] == expected
    # within the gap tolerance comes no later than the exact final, and is reached whenever
    # festa ends within the tolerance of central's final
    near = t["fed_to_central_within"]
    if t["fed_final"] >= t["central_final"] - GAP_TOLERANCE:
        assert near is not None
    if expected is not None:
        assert near is not None and near <= expected
    # the reverse: central always reaches its own final, so it reaches festa's when festa's is lower
    if t["fed_final"] <= t["central_final"]:
        assert t["central_to_fed"] is not None
        assert t["central_to_fed"] <= 1.0
    # a target above every round is never reached; the first round's own value is reached at once
    assert time_to_reach(fed, "segmentation", "dice", 1.01) is None
    first = fed[0]["tasks"]["segmentation"]["dice"]
    assert time_to_reach(fed, "segmentation", "dice", first) == fed[0]["seconds"]


def test_time_to_accuracy_refuses_an_empty_history(histories):
    _, _, fed, _ = histories
    with pytest.raises(ValueError, match="empty"):
        time_to_accuracy(fed, [], "segmentation", "dice")
