"""Two federated rounds over a real TLS + node-authenticated deployment on 127.0.0.1, driven by
`flwr run`; the run store, the console and `flwr ls` must agree."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import tomllib

import httpx
import pytest

from festa.client.deploy import SiteSettings, supernode_argv
from festa.server.deploy import toml_table
from festa.server.store import RunStore
from tests.deploy.conftest import REPO, SITES, Deployment, festa, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _flwr_json(dep: Deployment, *args: str) -> dict:
    out = dep.flwr(*args, "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout[out.stdout.index("{") :])


def test_two_rounds_with_tls_and_node_auth(deployment: Deployment) -> None:
    dep = deployment
    # An unregistered key tries to join while the run goes on.
    rogue = SiteSettings.model_validate(
        {
            "site": {
                "id": "rogue",
                "task": "classification",
                "data": "phantoms",
                "state-dir": dep.root / "rogue",
            },
            "superlink": {"address": f"127.0.0.1:{dep.superlink_port}", "ca": dep.certs / "ca.pem"},
            "auth": {"private-key": dep.certs / "nodes" / "rogue.key"},
            "supernode": {"port": free_port(), "max-retries": 0},
        }
    )
    rogue_proc = dep.start("rogue", supernode_argv(rogue))

    run = dep.flwr_run(timeout=360)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # Flower's view: the run finished.
    runs = _flwr_json(dep, "ls", "festa")["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "finished:completed", runs

    # festa's run store: the same run finished, both rounds have metrics from every site.
    with RunStore(dep.state / "festa.db") as store:
        (summary,) = store.runs()
        assert summary["state"] == "finished"
        run_id = summary["id"]
        rounds = store.rounds(run_id)
        assert [r["round"] for r in rounds] == [1, 2]
        per_round = {r: {c["site_id"] for c in store.client_rounds(run_id, r)} for r in (1, 2)}
        assert per_round == {1: set(SITES), 2: set(SITES)}
        for c in store.client_rounds(run_id):
            assert c["num_examples"] > 0 and c["bytes_in"] > 0 and c["bytes_out"] > 0, c
            assert c["dropped"] is None and not c["failed"] and c["metrics"], c
        assert {m["task"] for m in store.task_metrics(run_id)} == {"classification", "segmentation"}

    # The console (in `festa server start`) serves the same store.
    api = httpx.get(f"http://127.0.0.1:{dep.console_port}/api/runs", timeout=10).json()
    assert any(r["id"] == run_id and r["state"] == "finished" for r in api), api

    # Only the three registered sites ever joined; the rogue key was refused.
    nodes = _flwr_json(dep, "supernode", "ls", "festa")["nodes"]
    assert len(nodes) == 3, nodes
    assert rogue_proc.wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in dep.log("rogue")  # TLS worked; activation was refused
    assert "rogue" not in {c["site_id"] for c in store_clients(dep, run_id)}


def test_registering_a_key_twice_is_harmless(deployment: Deployment) -> None:
    dep = deployment
    key = dep.certs / "nodes" / "site-a.pub"
    again = subprocess.run(
        festa("server", "register-node", str(key), "--config", str(dep.server_toml)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "already registered" in again.stdout, (
        again.stdout + again.stderr
    )


def store_rounds_ok(dep: Deployment, run_id: int, sites: tuple[str, ...]) -> bool:
    """Every round of the run has metrics from each of `sites`."""
    with RunStore(dep.state / "festa.db") as store:
        return all(
            {
                c["site_id"]
                for c in store.client_rounds(run_id, r["round"])
                if c["dropped"] is None and c["metrics"]
            }
            >= set(sites)
            for r in store.rounds(run_id)
        )


def store_clients(dep: Deployment, run_id: int) -> list[dict]:
    with RunStore(dep.state / "festa.db") as store:
        return store.clients(run_id)


def test_plaintext_to_the_superlink_tls_port_fails(deployment: Deployment) -> None:
    url = f"127.0.0.1:{deployment.superlink_port}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{url}/", timeout=10)
    # ... while TLS with the deployment CA reaches the same port.
    ctx = ssl.create_default_context(cafile=str(deployment.certs / "ca.pem"))
    assert httpx.get(f"https://{url}/", verify=ctx, timeout=10).status_code < 500


@pytest.mark.timeout(720)  # a round timeout + the heartbeat window + a round
def test_a_killed_site_is_dropped_and_rejoins_the_next_round(deployment: Deployment) -> None:
    """SIGKILL site-c's SuperNode while it trains round 1: round 1 goes on without it and the
    run store records it as dropped; its supervisor restarts it, round 2 waits for it
    (`rejoin-wait-s`; Flower lets it back in only after the killed node missed two 30 s
    heartbeats) and site-c trains and evaluates in round 2 again."""
    dep = deployment
    node_log = dep.root / "site-c" / "logs" / "supernode.log"
    trains_before = node_log.read_text(errors="replace").count("Receiving: train message")
    config = tomllib.loads((dep.state / "run-config.toml").read_text())
    # async: the others never wait for the dead site's steps; the dead site costs one round timeout.
    config.update({"mode": "async", "round-timeout-s": 60.0, "rounds": 2, "rejoin-wait-s": 200.0})
    run_config = dep.root / "kill-run-config.toml"
    run_config.write_text(toml_table(config))
    with RunStore(dep.state / "festa.db") as store:
        runs_before = len(store.runs())

    dep.start(
        "kill-run",
        ["flwr", "run", str(REPO), "festa", "--run-config", str(run_config), "--stream"],
        dep.flwr_env,
    )
    wait_until(
        lambda: (
            node_log.read_text(errors="replace").count("Receiving: train message") > trains_before
        ),
        180,
        "site-c to receive its round-1 train message",
        poll=0.2,
    )
    victim = int((dep.root / "site-c" / "logs" / "supernode.pgid").read_text())
    os.killpg(victim, signal.SIGKILL)
    assert dep.procs["kill-run"].wait(timeout=420) == 0, dep.log("kill-run")[-3000:]

    with RunStore(dep.state / "festa.db") as store:
        runs = store.runs()
        assert len(runs) == runs_before + 1 and runs[-1]["state"] == "finished"
        run_id = runs[-1]["id"]
        round1 = {c["site_id"]: c for c in store.client_rounds(run_id, 1)}
        round2 = {c["site_id"]: c for c in store.client_rounds(run_id, 2)}
        events = store.events(run_id)
    assert round1["site-c"]["dropped"], round1
    assert round1["site-a"]["dropped"] is None and round1["site-b"]["dropped"] is None
    assert any(e["kind"] == "dropped" and "site-c" in e["message"] for e in events), events
    assert "restart #1" in dep.log("site-c")
    # back in round 2: trained (weights, examples) and evaluated like the others
    assert any(e["kind"] == "rejoined" and e["site_id"] == "site-c" for e in events), events
    for site in SITES:
        assert round2[site]["dropped"] is None and not round2[site]["failed"], round2
        assert round2[site]["num_examples"] > 0 and round2[site]["metrics"], round2
