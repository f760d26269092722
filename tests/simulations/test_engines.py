"""The two engines of `festa simulate`: Flower's simulation engine and the in-process transport
run one round loop, so they reach the same model; the default output carries no warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from festa.server.federation import Federation
from festa.shared.config import FederationConfig
from festa.simulations.inprocess import InProcessTransport

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
clients = 2
rounds = 2
local_steps = 3
tasks = ["classification", "segmentation"]
partition = "iid"
seed = 5
degrade = "none"
restore = "none"
mode = "sync"
[model]
image_size = 32
patch_size = 8
embed_dim = 32
depth = 2
num_heads = 2
[data]
train_size = 64
val_size = 16
[schedule]
warmup_rounds = 2
finetune_rounds = 0
"""


def simulate(tmp: Path, name: str, *extra: str) -> tuple[Path, str]:
    """`festa simulate` on CONFIG in a subprocess; returns the run folder and its output."""
    config = tmp / "cfg.toml"
    config.write_text(CONFIG)
    out = tmp / name
    cmd = [sys.executable, "-m", "festa.shared.cli", "simulate", "--config", str(config)]
    cmd += ["--out", str(out), "--store", str(tmp / f"{name}.db"), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HF_HUB_OFFLINE", None)  # the entry point sets it
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return out, output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    return {
        "flower": simulate(tmp, "flower"),
        "inprocess": simulate(tmp, "inprocess", "--engine", "inprocess"),
    }


def test_flower_and_inprocess_engines_reach_the_same_body_and_heads_and_tails(runs):
    flower = torch.load(runs["flower"][0] / "checkpoints" / "latest.pt", weights_only=False)
    local = torch.load(runs["inprocess"][0] / "checkpoints" / "latest.pt", weights_only=False)
    assert flower["round"] == local["round"] == 2
    body_a, body_b = flower["body"]["body"], local["body"]["body"]
    assert body_a.keys() == body_b.keys()
    for key in body_a:
        assert torch.allclose(body_a[key], body_b[key], rtol=1e-4, atol=1e-4), key
    for task, state in flower["task_states"].items():
        other = local["task_states"][task]
        assert state.keys() == other.keys()
        for key in state:
            assert torch.allclose(state[key], other[key], rtol=1e-4, atol=1e-4), (task, key)
    # ... and both trained: the body is no longer its initialisation.
    torch.manual_seed(5)
    from festa.shared.model.body import Body

    initial = Body(FederationConfig.model_validate(flower["config"]).model).state_dict()
    moved = sum(not torch.allclose(initial[k], body_b[k]) for k in initial)
    assert moved > len(initial) // 2
    rounds = [
        [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
        for run, _ in runs.values()
    ]
    assert (
        [r["body"]["steps"] for r in rounds[0]] == [r["body"]["steps"] for r in rounds[1]] == [3, 3]
    )
    # The same tensors cross the wire; only the session tokens (node ids) differ in length.
    for flower_round, local_round in zip(rounds[0], rounds[1], strict=True):
        assert abs(flower_round["bytes_total"] / local_round["bytes_total"] - 1) < 0.01


@pytest.mark.parametrize("engine", ["flower", "inprocess"])
def test_default_output_of_a_short_run_has_no_warnings(runs, engine):
    output = runs[engine][1]
    assert "done in" in output
    for word in ("warning", "deprecated"):
        assert word not in output.lower(), output


def test_inprocess_client_that_fails_is_dropped_and_the_round_goes_on(tmp_path):
    cfg = FederationConfig.model_validate(
        {
            **_config_dict(),
            "clients": 3,
            "rounds": 1,
            "fault": {"site": "client-2", "round": 1, "after_steps": 1},
        }
    )
    summary = Federation(cfg, tmp_path / "run").run(InProcessTransport(cfg))
    assert summary["state"] == "finished"
    assert list(summary["dropped"][1]) == ["client-2"]
    assert "failed on purpose" in summary["dropped"][1]["client-2"]
    record = json.loads((tmp_path / "run" / "rounds.jsonl").read_text())
    assert record["clients"]["client-2"]["dropped"] and "val" not in record["clients"]["client-2"]
    assert set(record["tasks"]) == {"classification", "segmentation"}


def _config_dict() -> dict:
    import tomllib

    return tomllib.loads(CONFIG)
