"""The console page in a real headless Chromium: it shows the rounds, tasks and clients the
store holds, updates live when the server writes a new round, and its admin button reaches
the store. Needs Debian's chromium at /usr/bin/chromium (`.ci/run` installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.console import ConsoleServer
from server.store import RunStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: the console browser test needs Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Never let Playwright fetch a browser: use the system one.
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def served(store_path, demo_writers):
    """A store with the 2-task, 4-site, 3-of-5-round run, served on a free localhost port."""
    fill, write_round = demo_writers
    store = RunStore(store_path)
    run_id = fill(store, rounds=3, num_rounds=5)
    with ConsoleServer(store, host="127.0.0.1", port=0, admin_token="s3cret") as server:
        yield server, store, run_id, write_round
    store.close()


def _texts(page, selector: str, attr: str) -> list[str]:
    return page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attr}'))")


def _cell(page, row_selector: str, col: str) -> str:
    return page.inner_text(f"{row_selector} td[data-col='{col}']").strip()


def _refreshed(page, after: int) -> None:
    page.wait_for_function(f"Number(document.body.dataset.refreshes) > {after}", timeout=WAIT_MS)


def test_page_shows_the_store_and_updates_live(browser, served, tmp_path):
    server, store, run_id, write_round = served
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url)
    _refreshed(page, 0)

    # Rounds: the same rounds and phases, newest first.
    rounds = store.rounds(run_id)
    shown = _texts(page, "#rounds-table tr[data-round]", "data-round")
    assert shown == [str(r["round"]) for r in reversed(rounds)]
    for r in rounds:
        row = f"#rounds-table tr[data-round='{r['round']}']"
        assert _cell(page, row, "phase") == r["phase"]
        assert _cell(page, row, "clients") == str(r["clients"])
        assert _cell(page, row, "dropped") == str(r["dropped"])

    # Tasks: one metric chart per task, one curve per metric.
    tasks = [t["task"] for t in store.tasks(run_id)]
    assert _texts(page, "#metric-charts [data-task]", "data-task") == tasks
    for t in tasks:
        names = sorted(
            {n for m in store.task_metrics(run_id) if m["task"] == t for n in m["metrics"]}
        )
        drawn = _texts(page, f"#metric-charts [data-task='{t}'] polyline", "data-series")
        assert drawn == names

    # Clients: every site, its task, status and drop count.
    clients = store.clients(run_id)
    assert _texts(page, "#clients-table tr[data-site]", "data-site") == [
        c["site_id"] for c in clients
    ]
    for c in clients:
        row = f"#clients-table tr[data-site='{c['site_id']}']"
        assert _cell(page, row, "task") == c["task"]
        assert _cell(page, row, "online") == ("online" if c["online"] else "offline")
        assert _cell(page, row, "dropped_rounds").startswith(str(c["dropped_rounds"]))
    assert _texts(page, "#restoration-table tr[data-site]", "data-site") == [
        r["site_id"] for r in store.restoration_status(run_id)
    ]
    assert len(_texts(page, "#checkpoints-table tr[data-round]", "data-round")) == len(
        store.checkpoints(run_id)
    )
    assert page.inner_text("#ov-round .v") == "3 / 5"
    assert page.inner_text("#ov-state .v") == "running"
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)

    # Live: the server writes round 4; the page shows it without a reload.
    page.evaluate("window.__sameDocument = true")
    write_round(store, run_id, 4)
    page.wait_for_selector("#rounds-table tr[data-round='4']", timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument === true")
    assert page.inner_text("#ov-round .v") == "4 / 5"
    assert (
        _cell(page, "#rounds-table tr[data-round='4']", "phase")
        == store.rounds(run_id)[-1]["phase"]
    )
    page.screenshot(path=str(tmp_path / "console-live.png"), full_page=True)
    assert errors == []
    assert (tmp_path / "console.png").stat().st_size > 10_000
    page.close()


def test_admin_actions_from_the_page_reach_the_store(browser, served):
    server, store, run_id, _ = served
    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(server.url)
    page.wait_for_selector("#admin-box:not([hidden])", timeout=WAIT_MS)

    page.fill("#admin-token", "wrong")
    page.click("#stop-run")
    page.wait_for_function(
        "document.getElementById('admin-msg').textContent.includes('refused')", timeout=WAIT_MS
    )
    assert "403" in page.inner_text("#admin-msg")
    assert store.pending_actions(run_id) == []

    page.fill("#admin-token", "s3cret")
    page.click("#stop-run")
    page.wait_for_function(
        "document.getElementById('admin-msg').textContent.includes('stop requested')",
        timeout=WAIT_MS,
    )
    page.click("#clients-table tr[data-site='site-c'] button.exclude")
    page.wait_for_function(
        "document.getElementById('admin-msg').textContent.includes('exclude_site requested')",
        timeout=WAIT_MS,
    )
    assert [(a["kind"], a["site_id"]) for a in store.pending_actions(run_id)] == [
        ("stop", None),
        ("exclude_site", "site-c"),
    ]
    page.close()
