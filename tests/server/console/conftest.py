"""Browser fixtures for the console tests: Debian's chromium driven by Playwright, and a check
that the page shows what the run store holds (shared by every browser test).

A machine without the browser gets it here (Debian's package, installed once under a lock when
the tests run as root with apt-get); elsewhere the tests fail saying how to install it. They never
skip, and Playwright never downloads a browser of its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from festa.server.store import RunStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
]
WAIT_MS = 20_000
APT_TIMEOUT_S = 900
INSTALL_LOCK = Path(tempfile.gettempdir()) / "festa-chromium-install.lock"


def _apt_get(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["apt-get", *args], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S
    )
    if done.returncode != 0:
        pytest.fail(f"apt-get {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def ensure_chromium() -> Path:
    """Debian's chromium at /usr/bin/chromium, installed with apt-get (as root, once, under a
    lock shared by concurrent test processes) when absent; fails with a clear message if it
    cannot be had."""
    if CHROMIUM.is_file():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(
            f"{CHROMIUM} not found: the console browser tests need Debian's chromium; install it "
            "with `sudo apt-get install -y chromium` (as root with apt-get the tests do this)"
        )
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be installing it right now
        if not CHROMIUM.is_file():
            _apt_get("update", "-qq")
            _apt_get("install", "-y", "-qq", "--no-install-recommends", "chromium")
    if not CHROMIUM.is_file():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser():
    """Headless system chromium (never a Playwright-downloaded one), installed if absent."""
    executable = ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def texts(page, selector: str, attr: str) -> list[str]:
    """The `attr` attribute of every element matching `selector`, in page order."""
    return page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attr}'))")


def cell(page, row_selector: str, col: str) -> str:
    """Text of column `col` in the table row matching `row_selector`."""
    return page.inner_text(f"{row_selector} td[data-col='{col}']").strip()


def wait_refreshed(page, after: int = 0) -> int:
    """Wait until the page has polled the API more than `after` times; returns the count."""
    page.wait_for_function(f"Number(document.body.dataset.refreshes) > {after}", timeout=WAIT_MS)
    return int(page.evaluate("Number(document.body.dataset.refreshes)"))


def check_page_matches_store(page, store: RunStore, run_id: int) -> None:
    """Assert the rounds, tasks, metric curves, clients, restoration rows and checkpoints on
    the console page are exactly those the store holds for `run_id`."""
    rounds = store.rounds(run_id)
    shown = texts(page, "#rounds-table tr[data-round]", "data-round")
    assert shown == [str(r["round"]) for r in reversed(rounds)]
    for r in rounds:
        row = f"#rounds-table tr[data-round='{r['round']}']"
        assert cell(page, row, "phase") == r["phase"]
        assert cell(page, row, "clients") == str(r["clients"])
        assert cell(page, row, "dropped") == str(r["dropped"])

    tasks = [t["task"] for t in store.tasks(run_id)]
    assert texts(page, "#metric-charts [data-task]", "data-task") == tasks
    metrics = store.task_metrics(run_id)
    for t in tasks:
        names = sorted({n for m in metrics if m["task"] == t for n in m["metrics"]})
        assert texts(page, f"#metric-charts [data-task='{t}'] polyline", "data-series") == names

    clients = store.clients(run_id)
    assert texts(page, "#clients-table tr[data-site]", "data-site") == [
        c["site_id"] for c in clients
    ]
    for c in clients:
        row = f"#clients-table tr[data-site='{c['site_id']}']"
        assert cell(page, row, "task") == (c["task"] or "–")
        assert cell(page, row, "online") == ("online" if c["online"] else "offline")
        assert cell(page, row, "dropped_rounds").startswith(str(c["dropped_rounds"]))
    assert texts(page, "#restoration-table tr[data-site]", "data-site") == [
        r["site_id"] for r in store.restoration_status(run_id)
    ]
    assert texts(page, "#checkpoints-table tr[data-round]", "data-round") == [
        str(c["round"]) for c in reversed(store.checkpoints(run_id))
    ]
    run = store.run(run_id)
    assert page.inner_text("#ov-state .v") == run["state"]
    current = "–" if run["current_round"] is None else str(run["current_round"])
    expected_round = current + (f" / {run['num_rounds']}" if run["num_rounds"] else "")
    assert page.inner_text("#ov-round .v") == expected_round


@pytest.fixture
def page_checks() -> SimpleNamespace:
    """Helpers for browser tests: .check (page matches store), .wait_refreshed, .cell, .texts."""
    return SimpleNamespace(
        check=check_page_matches_store, wait_refreshed=wait_refreshed, cell=cell, texts=texts
    )
