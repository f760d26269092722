"""Real Flower simulations (Ray virtual SuperNodes) against the real gRPC body service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from festa.shared.fedavg import fedavg

REPO = Path(__file__).resolve().parents[2]

TINY = """
clients = 4
rounds = {rounds}
local_steps = 6
tasks = ["classification", "segmentation"]
partition = "dirichlet:1.0"
seed = 3
degrade = "none"
restore = "none"
[model]
image_size = 32
patch_size = 8
embed_dim = 32
depth = 2
num_heads = 2
[data]
train_size = 240
val_size = 48
[schedule]
warmup_rounds = {rounds}
finetune_rounds = 0
{extra}
"""


def write_config(tmp_path: Path, name: str, rounds: int, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(rounds=rounds, extra=extra))
    return path


def simulate_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "festa.shared.cli",
        "simulate",
        "--config",
        str(config),
        "--out",
        str(out),
        "--store",
        str(out.parent / f"{out.name}.db"),
        *extra,
    ]


def run(cmd: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def rounds_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_federation_learns_averages_within_tasks_and_survives_a_vanishing_client(tmp_path):
    fault = '[fault]\nsite = "client-3"\nround = 2\nafter_steps = 2\n'
    out = tmp_path / "run"
    run(simulate_cmd(write_config(tmp_path, "cfg", rounds=2, extra=fault), out))

    rounds = rounds_of(out)
    assert [r["round"] for r in rounds] == [1, 2]
    # Validation improves from round 1 to round 2 for both tasks.
    for task in ("classification", "segmentation"):
        assert rounds[1]["tasks"][task]["loss"] < rounds[0]["tasks"][task]["loss"], task
    assert rounds[1]["tasks"]["segmentation"]["dice"] > rounds[0]["tasks"]["segmentation"]["dice"]

    # The vanished client is dropped in round 2 with a reason; the round completed without it.
    assert not rounds[0]["dropped"]
    assert (
        set(rounds[1]["dropped"]) == {"client-3"}
        and "failed on purpose" in rounds[1]["dropped"]["client-3"]
    )
    assert rounds[1]["body"]["steps"] == 6

    # Heads/tails were averaged within each task group only.
    ckpt = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    tasks_of = {site: c["task"] for site, c in rounds[1]["clients"].items()}
    examples = {site: c["num_examples"] for site, c in rounds[1]["clients"].items()}
    replies = ckpt["reply_states"]
    assert "client-3" not in replies
    for task, state in ckpt["task_states"].items():
        members = sorted(s for s in replies if tasks_of[s] == task)
        assert members, task
        expected = fedavg([replies[s] for s in members], [examples[s] for s in members])
        for key, value in state.items():
            assert torch.allclose(value, expected[key], atol=1e-6), (task, key)
    cls_head = {
        k: v for k, v in ckpt["task_states"]["classification"].items() if k.startswith("head.")
    }
    seg_head = {
        k: v for k, v in ckpt["task_states"]["segmentation"].items() if k.startswith("head.")
    }
    assert any(not torch.allclose(cls_head[k], seg_head[k]) for k in cls_head)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["dropped"] == {
        "2": {"client-3": rounds[1]["dropped"]["client-3"]}
    }
    assert (out / "report.png").stat().st_size > 10_000
    assert json.loads((out / "config.json").read_text())["clients"] == 4
    assert len(json.loads((out / "partition.json").read_text())) == 4

    # The run store (what the console shows) agrees with the run's own record.
    from festa.server.store import RunStore

    store = RunStore(tmp_path / "run.db")
    run_id = store.latest_run_id()
    assert store.run(run_id)["state"] == "finished"
    assert [r["round"] for r in store.rounds(run_id)] == [1, 2]


def test_killed_server_resumes_to_the_same_state(tmp_path):
    config = write_config(tmp_path, "cfg", rounds=2)
    straight = tmp_path / "straight"
    run(simulate_cmd(config, straight))

    crashed = tmp_path / "crashed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        simulate_cmd(config, crashed),
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (crashed / "checkpoints" / "round_001.pt").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no round-1 checkpoint in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and everything it started
        proc.wait()
    assert not (crashed / "summary.json").exists()

    run(simulate_cmd(config, crashed, "--resume"))

    a = torch.load(straight / "checkpoints" / "latest.pt", weights_only=False)
    b = torch.load(crashed / "checkpoints" / "latest.pt", weights_only=False)
    assert a["round"] == b["round"] == 2
    flat_a, flat_b = _flatten(a["body"]), _flatten(b["body"])
    flat_a.update(_flatten(a["task_states"])), flat_b.update(_flatten(b["task_states"]))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        assert torch.allclose(flat_a[key], flat_b[key], rtol=1e-4, atol=1e-5), key
    resumed = rounds_of(crashed)
    assert [r["round"] for r in resumed] == [1, 2]
    assert not resumed[1]["dropped"], resumed[1]["dropped"]


def _flatten(tree, prefix=""):
    out = {}
    if isinstance(tree, torch.Tensor):
        return {prefix: tree.float()}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}.{i}"))
    return out
