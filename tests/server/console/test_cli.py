"""`festa console` terminal views: --json is exactly what the store holds; tables name the
sites and rounds; exports are self-contained; bad stores and hosts get clear refusals."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from festa.server.console.cli import app
from festa.server.store import RunStore

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def finished_store(demo_store, store_path):
    """The demo run, finished (so no field depends on the reading clock)."""
    store, run_id = demo_store
    store.finish_run(run_id, "finished")
    return store, run_id


def _cli(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(
    "command, reader",
    [
        ("status", lambda st, rid: st.run(rid)),
        ("rounds", lambda st, rid: st.rounds(rid)),
        ("clients", lambda st, rid: st.clients(rid)),
        ("events", lambda st, rid: st.events(rid, limit=50)),
    ],
)
def test_json_output_matches_the_store(finished_store, store_path, command, reader):
    store, run_id = finished_store
    other = store.create_run("later", {})  # --run picks the older run, default the latest
    store.finish_run(other, "failed")
    picked = json.loads(
        _cli(command, "--run", str(run_id), "--json", "--store", str(store_path)).stdout
    )
    assert picked == json.loads(json.dumps(reader(store, run_id)))
    latest = json.loads(_cli(command, "--json", "--store", str(store_path)).stdout)
    assert latest == json.loads(json.dumps(reader(store, other)))


def test_tables_show_the_run(finished_store, store_path):
    _, run_id = finished_store
    status = _cli("status", "--store", str(store_path)).stdout
    assert "finished" in status and "classification" in status
    clients = runner.invoke(app, ["clients", "--store", str(store_path)])
    for site in ("site-a", "site-b", "site-c", "site-d"):
        assert site in clients.stdout
    rounds = runner.invoke(app, ["rounds", "--store", str(store_path)])
    assert re.search(r"^\s+2\s+task-agnostic\s", rounds.stdout, re.M)
    runs = json.loads(_cli("runs", "--json", "--store", str(store_path)).stdout)
    assert [r["id"] for r in runs] == [run_id]


def test_export_writes_a_self_contained_report(finished_store, store_path, tmp_path):
    store, run_id = finished_store
    out = tmp_path / "reports" / "run.html"
    _cli("export", "--run", str(run_id), "--out", str(out), "--store", str(store_path))
    html = out.read_text()
    assert html.count("<svg") >= 2  # metric curves and traffic
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", html)
    for task in ("classification", "segmentation"):
        assert task in html
    rounds_table = html[
        html.index('id="rounds"') : html.index("</table>", html.index('id="rounds"'))
    ]
    assert rounds_table.count("<tr>") == 1 + len(store.rounds(run_id))
    assert html.count("runs/ckpt/round-") >= len(store.checkpoints(run_id))


def test_stop_and_exclude_write_pending_actions(demo_store, store_path):
    store, run_id = demo_store
    _cli("exclude", "site-b", "--store", str(store_path))
    _cli("stop", "--run", str(run_id), "--store", str(store_path))
    assert [(a["kind"], a["site_id"]) for a in store.pending_actions(run_id)] == [
        ("exclude_site", "site-b"),
        ("stop", None),
    ]
    bad = runner.invoke(app, ["exclude", " ", "--store", str(store_path)])
    assert bad.exit_code == 1 and "site_id" in bad.stderr
    assert len(store.pending_actions(run_id)) == 2


def test_missing_store_and_run_are_clear_errors(tmp_path, store_path):
    missing = runner.invoke(app, ["status", "--store", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and "no run store" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    RunStore(store_path).close()
    empty = runner.invoke(app, ["rounds", "--store", str(store_path)])
    assert empty.exit_code == 1 and "no runs yet" in empty.stderr
    store = RunStore(store_path)
    store.create_run("r", {})
    unknown = runner.invoke(app, ["clients", "--run", "42", "--store", str(store_path)])
    assert unknown.exit_code == 1 and "no run 42" in unknown.stderr


def test_serve_refuses_a_public_host_without_token(store_path):
    result = runner.invoke(
        app,
        ["serve", "--store", str(store_path), "--host", "0.0.0.0"],
        env={"FESTA_CONSOLE_ADMIN_TOKEN": None},
    )
    assert result.exit_code == 2 and "admin token" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_in_its_own_process_follows_a_writing_process(store_path, demo_writers):
    fill, write_round = demo_writers
    store = RunStore(store_path)
    run_id = fill(store, rounds=1)
    port = _free_port()
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    env.pop("FESTA_CONSOLE_ADMIN_TOKEN", None)
    cmd = [sys.executable, "-m", "festa.server.console.cli", "serve", "--store", str(store_path)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{base}/api/meta", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "console did not start within 60 s"
                time.sleep(0.2)
        assert [r["round"] for r in httpx.get(f"{base}/api/runs/{run_id}/rounds").json()] == [1]
        write_round(store, run_id, 2)  # this process writes, the console process reads
        rounds = httpx.get(f"{base}/api/runs/{run_id}/rounds").json()
        assert rounds == json.loads(json.dumps(store.rounds(run_id)))
        assert httpx.post(f"{base}/api/runs/{run_id}/stop").status_code == 403
        assert "<title>festa console</title>" in httpx.get(base).text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
