"""A deployment's privacy defaults over real TLS + node authentication: three classification
sites, `festa server start` without privacy keys in [run.config], so the run gets label
protection and secure aggregation; the server ends with each round's averaged head/tail and
never a site's own."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from festa.server.deploy import DEPLOYMENT_PRIVACY
from festa.server.federation import initial_task_states
from festa.server.store import RunStore
from festa.shared.config import FederationConfig
from tests.deploy.conftest import TINY_RUN, Deployment, running_deployment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # load on a shared 2-core box

SECURE_SITES = {f"site-{x}": "classification" for x in "pqr"}
RUN = {
    **{k: v for k, v in TINY_RUN.items() if k != "secure-aggregation"},
    "tasks": "classification",
}


@pytest.fixture(scope="module")
def secure_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running_deployment(tmp_path_factory.mktemp("secure"), SECURE_SITES, RUN) as dep:
        yield dep


def test_deployment_defaults_run_secure_aggregation_and_label_protection(secure_deployment):
    dep = secure_deployment
    config = (dep.state / "run-config.toml").read_text()
    assert (
        '"secure-aggregation" = true' in config
        and '"label-protection" = "local-backward"' in config
    )
    assert DEPLOYMENT_PRIVACY["secure-aggregation"] is True
    run = dep.flwr_run(timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with RunStore(dep.state / "festa.db") as store:
        (summary,) = store.runs()
        assert summary["state"] == "finished"
        rounds = store.rounds(summary["id"])
        assert [r["round"] for r in rounds] == [1, 2]
        for c in store.client_rounds(summary["id"]):
            assert c["dropped"] is None and not c["failed"] and c["metrics"], c
    (run_dir,) = [p for p in (dep.state / "runs").iterdir() if (p / "summary.json").exists()]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["secure_aggregation"] is True and cfg["label_protection"] == "local-backward"
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["reply_states"] == {} and ckpt["client_states"] == {}
    assert set(ckpt["task_states"]) == {"classification"}
    # local-backward: the sites got the body with `train` over TLS and trained their heads
    # through it (under tail-only only weight decay would move the head)
    start = initial_task_states(FederationConfig.model_validate(cfg))["classification"]
    head = {k: v for k, v in ckpt["task_states"]["classification"].items() if k.startswith("head")}
    assert head and max(float((v - start[k]).abs().max()) for k, v in head.items()) > 1e-3
