"""The console page in a real headless Chromium: it shows the rounds, tasks and clients the
store holds, updates live when the server writes a new round, and its admin buttons reach
the store. Needs Debian's chromium at /usr/bin/chromium (`.ci/run` installs it)."""

from __future__ import annotations

import pytest

from festa.server.console import ConsoleServer
from festa.server.store import RunStore

WAIT_MS = 20_000


@pytest.fixture
def served(store_path, demo_writers):
    """A store with the 2-task, 4-site, 3-of-5-round run, served on a free localhost port."""
    fill, write_round = demo_writers
    store = RunStore(store_path)
    run_id = fill(store, rounds=3, num_rounds=5)
    with ConsoleServer(store, host="127.0.0.1", port=0, admin_token="s3cret") as server:
        yield server, store, run_id, write_round
    store.close()


def test_page_shows_the_store_and_updates_live(browser, served, page_checks, tmp_path):
    server, store, run_id, write_round = served
    check, wait_refreshed, cell = page_checks.check, page_checks.wait_refreshed, page_checks.cell
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    elsewhere: list[str] = []  # the page must work offline: nothing but the console is asked

    def only_console(route):
        if route.request.url.startswith(server.url + "/"):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    page.route("**/*", only_console)
    page.goto(server.url)
    wait_refreshed(page)
    check(page, store, run_id)
    assert page.inner_text("#ov-round .v") == "3 / 5"
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)

    # Live: the server writes round 4 (and an event with markup in it); no reload happens.
    page.evaluate("window.__sameDocument = true")
    write_round(store, run_id, 4)
    store.record_event(run_id, "token_refused", "<img src=x onerror=alert(1)> refused", node_id=9)
    page.wait_for_selector("#rounds-table tr[data-round='4']", timeout=WAIT_MS)
    wait_refreshed(page, int(page.evaluate("Number(document.body.dataset.refreshes)")))
    assert page.evaluate("window.__sameDocument === true")
    check(page, store, run_id)
    assert page.inner_text("#ov-round .v") == "4 / 5"
    assert cell(page, "#rounds-table tr[data-round='4']", "phase") == "finetune"
    # Text from the store is shown as text, never parsed as HTML.
    assert "<img src=x onerror=alert(1)> refused" in page.inner_text("#events-table")
    assert page.query_selector("#events-table img") is None

    store.finish_run(run_id, "finished")
    page.wait_for_function(
        "document.querySelector('#ov-state .v').textContent === 'finished'", timeout=WAIT_MS
    )
    wait_refreshed(page, int(page.evaluate("Number(document.body.dataset.refreshes)")))
    check(page, store, run_id)
    page.screenshot(path=str(tmp_path / "console-finished.png"), full_page=True)
    assert errors == [] and elsewhere == []
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


def test_read_only_console_follows_the_latest_run_or_the_chosen_one(
    browser, store_path, demo_writers, page_checks
):
    fill, _ = demo_writers
    store = RunStore(store_path)
    first = fill(store, rounds=1)
    with ConsoleServer(store) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("#clients-table tr[data-site]", timeout=WAIT_MS)
        assert page.is_hidden("#admin-box")
        assert page.query_selector("#clients-table button.exclude") is None
        status = page.evaluate(
            f"fetch('/api/runs/{first}/stop', {{method: 'POST'}}).then(r => r.status)"
        )
        assert status == 403 and store.pending_actions(first) == []

        second = fill(store, rounds=2)  # a new run starts: the page follows it
        page.wait_for_selector("#rounds-table tr[data-round='2']", timeout=WAIT_MS)
        page.wait_for_function(
            f"document.querySelector('#ov-name .v').textContent.startsWith('#{second} ')",
            timeout=WAIT_MS,
        )
        page_checks.check(page, store, second)
        page.select_option("#run-select", str(first))  # ...unless one is chosen
        page.wait_for_function(
            f"document.querySelector('#ov-name .v').textContent.startsWith('#{first} ')",
            timeout=WAIT_MS,
        )
        page_checks.check(page, store, first)
        page.close()
