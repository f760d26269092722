"""Console JSON API over a real store: it serves what the store holds, the page needs nothing
from outside, and actions are refused without the admin token."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from festa.server.console.app import (
    LOOPBACK_HOSTS,
    ConsoleBindError,
    check_bind,
    create_app,
    is_loopback,
)


@pytest.fixture
def client(demo_store):
    store, _ = demo_store
    return TestClient(create_app(store))


def test_api_serves_what_the_store_holds(client, demo_store):
    store, run_id = demo_store
    assert client.get("/api/runs").json() == store.runs()
    assert client.get("/api/meta").json()["latest_run_id"] == run_id
    for path, expected in [
        ("rounds", store.rounds(run_id)),
        ("tasks", store.tasks(run_id)),
        ("task_metrics", store.task_metrics(run_id)),
        ("clients", store.clients(run_id)),
        ("client_rounds", store.client_rounds(run_id)),
        ("restoration", store.restoration_status(run_id)),
        ("restoration?latest=false", store.restoration(run_id)),
        ("body_throughput", store.body_throughput(run_id)),
        ("events", store.events(run_id)),
        ("checkpoints", store.checkpoints(run_id)),
    ]:
        response = client.get(f"/api/runs/{run_id}/{path}")
        assert response.status_code == 200, path
        assert response.json() == expected, path
    snap = client.get(f"/api/runs/{run_id}/snapshot").json()
    assert snap["rounds"] == store.rounds(run_id) and snap["run"]["id"] == run_id
    assert [r["round"] for r in snap["rounds"]] == [1, 2, 3]
    after = store.events(run_id)[-2]["id"]
    assert (
        client.get(f"/api/runs/{run_id}/events?after_id={after}").json()
        == store.events(run_id)[-1:]
    )


def test_unknown_run_is_404_and_docs_are_served(client):
    response = client.get("/api/runs/999/rounds")
    assert response.status_code == 404 and "no run 999" in response.json()["detail"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/runs", "/api/runs/{run_id}/snapshot", "/api/runs/{run_id}/stop"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    html = response.text
    assert "<script>" in html and "<style>" in html
    # Nothing is loaded from elsewhere: no external src/href, no imports, no CDN.
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", html)
    assert not re.search(r"@import|<script[^>]+src=|<link[^>]+stylesheet", html)
    urls = set(re.findall(r"https?://[^\s\"'`)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}


def test_actions_refused_without_a_configured_token(demo_store):
    store, run_id = demo_store
    client = TestClient(create_app(store))
    response = client.post(f"/api/runs/{run_id}/stop", headers={"X-Festa-Admin-Token": "x"})
    assert response.status_code == 403 and "disabled" in response.json()["detail"]
    assert client.get("/api/meta").json()["admin_enabled"] is False
    assert store.pending_actions(run_id) == []


def test_actions_need_the_right_token(demo_store):
    store, run_id = demo_store
    client = TestClient(create_app(store, admin_token="s3cret"))
    stop = f"/api/runs/{run_id}/stop"
    exclude = f"/api/runs/{run_id}/exclude"
    assert client.post(stop).status_code == 401
    assert client.post(stop, headers={"X-Festa-Admin-Token": "wrong"}).status_code == 403
    assert client.post(exclude, json={"site_id": "site-c"}).status_code == 401
    assert client.get(f"/api/runs/{run_id}/actions").status_code == 401
    assert store.pending_actions(run_id) == []

    ok = client.post(stop, headers={"X-Festa-Admin-Token": "s3cret"})
    assert ok.status_code == 200 and ok.json()["kind"] == "stop"
    bearer = {"Authorization": "Bearer s3cret"}
    ex = client.post(exclude, json={"site_id": "site-c"}, headers=bearer)
    assert ex.status_code == 200
    assert client.post(exclude, json={"site_id": ""}, headers=bearer).status_code == 422
    assert client.post("/api/runs/999/stop", headers=bearer).status_code == 404
    pending = store.pending_actions(run_id)
    assert [(a["id"], a["kind"], a["site_id"]) for a in pending] == [
        (ok.json()["action_id"], "stop", None),
        (ex.json()["action_id"], "exclude_site", "site-c"),
    ]
    assert client.get(f"/api/runs/{run_id}/actions", headers=bearer).json() == pending
    # Reading stays open without the token.
    assert client.get(f"/api/runs/{run_id}").json()["pending_actions"] == 2


def test_binding_beyond_localhost_needs_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert check_bind("127.0.0.1", None) is None
    with pytest.raises(ConsoleBindError, match="admin token"):
        check_bind("0.0.0.0", None)
    assert "WARNING" in check_bind("0.0.0.0", "tok")


def test_loopback_console_rejects_foreign_host_headers(demo_store):
    store, run_id = demo_store
    client = TestClient(
        create_app(store, allowed_hosts=LOOPBACK_HOSTS), base_url="http://127.0.0.1"
    )
    assert client.get(f"/api/runs/{run_id}").status_code == 200
    assert client.get("/", headers={"Host": "localhost:8080"}).status_code == 200
    rebound = client.get(f"/api/runs/{run_id}/clients", headers={"Host": "evil.example"})
    assert rebound.status_code == 400
