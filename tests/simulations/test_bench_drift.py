"""bench_drift: the remedy list covers issue 13 item 2's remedies and the table is right."""

from types import SimpleNamespace

import pytest

from festa.simulations.bench_drift import DEFAULT_REMEDIES, REMEDIES, bench_config, summary_rows


def test_default_grid_is_fedavg_and_every_remedy():
    cfgs = {name: bench_config("iid", REMEDIES[name], 0, _args()).drift for name in REMEDIES}
    default = [cfgs[name] for name in DEFAULT_REMEDIES]
    assert default[0].logit_adjustment == 0 and default[0].server_optimizer == "fedavg"
    assert default[1].logit_adjustment == 1
    assert default[2].proximal_mu > 0
    assert {c.server_optimizer for c in default} == {"fedavg", "fedavgm", "fedadam"}
    # every remedy but the logit adjustment runs without it: each is compared to plain FedAvg
    assert [c.logit_adjustment for c in default[2:]] == [0, 0, 0]


def test_summary_rows_mean_std_last3_and_partition_order():
    runs = [
        {"partition": "iid", "remedy": "fedavg", "seed": 0, "auc": [0.5, 0.6, 0.7, 0.8]},
        {"partition": "dirichlet:0.1", "remedy": "fedavg", "seed": 0, "auc": [0.5, 0.6]},
        {"partition": "iid", "remedy": "fedavg", "seed": 1, "auc": [0.5, 0.6, 0.7, 0.6]},
    ]
    rows = summary_rows(runs)
    assert [r[0] for r in rows] == ["dirichlet:0.1", "iid"]
    assert rows[1][2] == "0.700 ± 0.100"
    assert rows[1][3] == "0.667 ± 0.033"  # last-3 means 0.700 and 0.633
    assert rows[1][4] == "0.800 0.600"


@pytest.mark.parametrize("name", ["fedavgm lr=1 m=0.9", "fedadam eta=1e-2"])
def test_server_optimizer_remedies_are_valid_configs(name):
    drift = bench_config("dirichlet:0.1", REMEDIES[name], 1, _args()).drift
    assert drift.server_lr > 0 and drift.server_momentum == 0.9


def _args():
    return SimpleNamespace(clients=2, rounds=1, local_steps=1, train_size=16, val_size=8)


def test_class_balanced_remedies_sample_in_equal_shares():
    alone = bench_config("iid", REMEDIES["class-balanced sampling"], 0, _args()).drift
    with_la = bench_config("iid", REMEDIES["class-balanced + logit-adjust tau=1"], 0, _args()).drift
    assert alone.sampling == with_la.sampling == "class-balanced"
    assert (alone.logit_adjustment, with_la.logit_adjustment) == (0, 1)
