"""The console in a real browser over the store a real `festa simulate` wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from festa.server.console import ConsoleServer
from festa.server.store import RunStore

REPO = Path(__file__).resolve().parents[3]

CONFIG = """
clients = 2
rounds = 2
local_steps = 2
tasks = ["segmentation"]
partition = "iid"
degrade = "none"
restore = "none"
[model]
image_size = 32
patch_size = 8
embed_dim = 32
depth = 1
num_heads = 2
[data]
train_size = 64
val_size = 16
[schedule]
warmup_rounds = 2
finetune_rounds = 0
"""


def test_console_shows_what_a_simulation_recorded(browser, page_checks, tmp_path):
    (tmp_path / "cfg.toml").write_text(CONFIG)
    store_path = tmp_path / "festa.db"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "festa.shared.cli",
            "simulate",
            "--config",
            str(tmp_path / "cfg.toml"),
            "--out",
            str(tmp_path / "run"),
            "--store",
            str(store_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    store = RunStore(store_path)
    run_id = store.latest_run_id()
    assert store.run(run_id)["state"] == "finished"
    assert {c["site_id"] for c in store.clients(run_id)} == {"client-0", "client-1"}
    with ConsoleServer(store, host="127.0.0.1", port=0) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        page_checks.wait_refreshed(page)
        page_checks.check(page, store, run_id)
        assert page.inner_text("#ov-round .v") == "2 / 2"
        page.screenshot(path=str(tmp_path / "console-simulation.png"), full_page=True)
    store.close()
