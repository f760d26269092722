"""Secure aggregation: the server's sum of masked updates is FedAvg's, with and without
dropouts, on the real client stages; groups below the minimum and unsafe requests are refused;
a whole federation (in-process engine and Flower's simulation engine) reaches the model plain
FedAvg reaches while the server never holds a site's head/tail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from festa.client import secure_aggregation as client
from festa.server.federation import ClientInfo, Federation, Reply
from festa.server.secure_aggregation import (
    Member,
    check_group_sizes,
    label_mix_caveat,
    secure_fedavg,
)
from festa.shared.config import FederationConfig
from festa.shared.fedavg import fedavg
from festa.shared.secure_aggregation import (
    MASKED,
    SHARE,
    UNMASK,
    SecureAggregationError,
    encode,
    flatten,
    from_bytes,
)
from festa.simulations.inprocess import InProcessTransport

REPO = Path(__file__).resolve().parents[2]


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "tail.fc.weight": torch.randn(3, 8, generator=g),
        "tail.fc.bias": torch.randn(3, generator=g) * 10,
        "steps": torch.tensor(seed * 4),  # an integer buffer: averaged and rounded
    }


class Sites:
    """n sites running the real client stages, reached through an in-memory `send`; a site in
    `fail_at` errors on that stage (it dropped out)."""

    def __init__(self, n: int, fail_at: dict[str, str] | None = None):
        self.clients = [
            ClientInfo(100 + 7 * i, f"site-{i}", "classification", 10 + i, 1) for i in range(n)
        ]
        self.stores: dict[str, dict] = {str(c.node_id): {} for c in self.clients}
        self.states = [_state(i) for i in range(n)]
        self.weights = [c.num_train for c in self.clients]
        self.fail_at = fail_at or {}
        self.sent: dict[str, object] = {}  # node -> the masked vector it sent
        self.members = []
        for c, state, w in zip(self.clients, self.states, self.weights, strict=True):
            config = {"round": 1, "task": "classification", "secagg-node": str(c.node_id)}
            keys = client.begin_round(
                self.stores[str(c.node_id)], config, state, {"num-examples": w}
            )
            self.members.append(
                Member(str(c.node_id), w, keys["secagg-pk-c"], keys["secagg-pk-s"], c)
            )

    def send(self, kind, pairs):
        replies = []
        for info, config in pairs:
            if self.fail_at.get(info.site_id) == kind:
                replies.append(Reply(info, error="client error: gone"))
                continue
            payload = client.handle(kind, self.stores[str(info.node_id)], config)
            if kind == MASKED:
                self.sent[str(info.node_id)] = from_bytes(payload["secagg-masked"])
            replies.append(Reply(info, payload=payload))
        return replies


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6), k


def test_sum_equals_fedavg():
    sites = Sites(4)
    avg, dropped = secure_fedavg(sites.send, 1, "classification", sites.members, sites.states[0])
    assert dropped == {}
    expected = fedavg(sites.states, sites.weights)
    expected["steps"] = torch.tensor(
        round(sum(4 * i * w for i, w in enumerate(sites.weights)) / sum(sites.weights))
    )
    _close(avg, expected)
    # what each site sent is masked: nothing like its own weighted update in fixed point
    for (node, masked), state, w in zip(
        sites.sent.items(), sites.states, sites.weights, strict=True
    ):
        own = encode(flatten(state) * w)
        assert (masked == own).mean() < 0.01, node
    # after the round a site keeps nothing of it (keys, seeds, shares)
    assert all(s == {"stage": "done"} for s in sites.stores.values())


@pytest.mark.parametrize("stage", [SHARE, MASKED, UNMASK])
def test_a_dropout_at_any_stage_still_gives_the_survivors_fedavg(stage):
    sites = Sites(5, fail_at={"site-2": stage})
    avg, dropped = secure_fedavg(sites.send, 1, "classification", sites.members, sites.states[0])
    assert list(dropped) == [str(sites.clients[2].node_id)]
    # a site that dropped only at the last stage had already sent its masked update
    keep = [i for i in range(5) if i != 2 or stage == UNMASK]
    expected = fedavg([sites.states[i] for i in keep], [sites.weights[i] for i in keep])
    for k in ("tail.fc.weight", "tail.fc.bias"):
        assert torch.allclose(avg[k], expected[k], atol=1e-6)


def test_too_few_survivors_leave_the_group_unaggregated():
    sites = Sites(3, fail_at={"site-0": MASKED})
    avg, dropped = secure_fedavg(sites.send, 1, "classification", sites.members, sites.states[0])
    assert avg is None and list(dropped) == [str(sites.clients[0].node_id)]


def test_small_groups_and_unsafe_requests_are_refused():
    with pytest.raises(SecureAggregationError, match="at least 3 sites per task.*segmentation: 2"):
        check_group_sizes(
            {
                "a": "classification",
                "b": "classification",
                "c": "classification",
                "d": "segmentation",
                "e": "segmentation",
            }
        )
    check_group_sizes({"a": "classification", "b": "classification", "c": "classification"})
    sites = Sites(2)
    with pytest.raises(SecureAggregationError, match="refusing a group of 2"):
        sites.send(
            SHARE,
            [
                (
                    sites.clients[0],
                    {
                        "round": 1,
                        "task": "classification",
                        "secagg-nodes": [m.node for m in sites.members],
                        "secagg-pk-c": [m.pk_c for m in sites.members],
                        "secagg-pk-s": [m.pk_s for m in sites.members],
                        "secagg-threshold": 2,
                    },
                )
            ],
        )
    # a server that asks one site for both the self-mask and the key of another is refused
    sites = Sites(3)
    nodes = [m.node for m in sites.members]
    avg, _ = secure_fedavg(sites.send, 1, "classification", sites.members, sites.states[0])
    assert avg is not None
    sites = Sites(3)
    first = {"round": 1, "task": "classification", "secagg-nodes": nodes}
    with pytest.raises(SecureAggregationError, match="stage"):
        client.handle(
            UNMASK,
            sites.stores[nodes[0]],
            {**first, "secagg-survivors": nodes, "secagg-dropped": []},
        )


CONFIG = {
    "clients": 3,
    "rounds": 2,
    "local_steps": 2,
    "tasks": ["classification"],
    "partition": "iid",
    "seed": 3,
    "degrade": "none",
    "restore": "none",
    "model": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "data": {"train_size": 48, "val_size": 12},
    "optim": {"batch_size": 8},
}


def test_a_secure_federation_reaches_plain_fedavgs_model(tmp_path):
    plain = FederationConfig.model_validate(CONFIG)
    secure = plain.model_copy(update={"secure_aggregation": True})
    runs = {}
    for name, cfg in (("plain", plain), ("secure", secure)):
        fed = Federation(cfg, tmp_path / name)
        fed.run(InProcessTransport(cfg))
        runs[name] = fed
    assert runs["plain"].reply_states and not runs["secure"].reply_states
    assert not runs["secure"].client_states
    for key, value in runs["plain"].task_states["classification"].items():
        other = runs["secure"].task_states["classification"][key]
        assert torch.allclose(value, other, atol=1e-5), key


def test_secure_classification_groups_without_the_logit_adjustment_are_warned_once(tmp_path):
    roster = {"a": "classification", "b": "classification", "c": "classification"}
    assert label_mix_caveat(roster, 1.0) is None  # the default: groups of 3 measured no leak
    assert "3 classification sites" in label_mix_caveat(roster, 0.0)
    six = {f"s{i}": "classification" for i in range(6)}
    assert label_mix_caveat({**six, "d": "segmentation"}, 0.0) is None
    for tau, warned in ((0.0, 1), (1.0, 0)):
        cfg = FederationConfig.model_validate(
            {**CONFIG, "secure_aggregation": True, "drift": {"logit_adjustment": tau}}
        )
        console = Console(record=True, width=400)
        Federation(cfg, tmp_path / f"tau{tau}", console=console).run(InProcessTransport(cfg))
        assert console.export_text().count("reveals the group's label mix") == warned


def test_a_federation_with_a_group_of_two_is_refused(tmp_path):
    cfg = FederationConfig.model_validate({**CONFIG, "clients": 2, "secure_aggregation": True})
    with pytest.raises(SecureAggregationError, match="at least 3 sites per task"):
        Federation(cfg, tmp_path / "small").run(InProcessTransport(cfg))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_flower_simulation_engine_runs_secure_aggregation(tmp_path):
    from festa.simulations.bench_federation import simulate  # `festa simulate` in a subprocess

    cfg = FederationConfig.model_validate({**CONFIG, "rounds": 1, "secure_aggregation": True})
    simulate(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["reply_states"] == {} and ckpt["round"] == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["state"] == "finished" and not summary["dropped"], summary
    # the same model plain FedAvg reaches (on the in-process engine; engines agree to 1e-4)
    plain = FederationConfig.model_validate({**CONFIG, "rounds": 1})
    fed = Federation(plain, tmp_path / "plain")
    fed.run(InProcessTransport(plain))
    for key, value in fed.task_states["classification"].items():
        assert torch.allclose(value, ckpt["task_states"]["classification"][key], atol=1e-4), key
