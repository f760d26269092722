"""Browser fixtures for the console tests: Debian's chromium driven by Playwright, and a check
that the page shows what the run store holds (shared by every browser test)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def browser():
    """Headless system chromium (never a Playwright-downloaded one); fails if it is absent."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: the console browser tests need Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
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
