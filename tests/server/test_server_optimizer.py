"""Server optimizers on heads/tails: Flower's FedAvgM / FedAdam math, step by step."""

import numpy as np
import torch

from festa.server.server_optimizer import ServerOptimizer
from festa.shared.config import DriftConfig


def _state(a, b):
    return {"head.w": torch.tensor(a, dtype=torch.float32), "tail.b": torch.tensor(b)}


def test_fedavg_returns_the_average():
    opt = ServerOptimizer(DriftConfig())
    avg = _state([1.0, 2.0], [3.0])
    assert opt.step("classification", _state([0.0, 0.0], [0.0]), avg) is avg


def test_fedavgm_matches_heavy_ball_momentum_on_pseudo_gradients():
    cfg = DriftConfig(server_optimizer="fedavgm", server_lr=0.5, server_momentum=0.9)
    opt = ServerOptimizer(cfg)
    w0 = np.array([1.0, 2.0, 3.0])
    averages = [np.array([0.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0])]
    w, m = w0.copy(), None
    state = _state(w0.tolist()[:2], [w0[2]])
    for avg in averages:
        g = w - avg
        m = g if m is None else 0.9 * m + g
        w = w - 0.5 * m
        state = opt.step("t", state, _state(avg.tolist()[:2], [avg[2]]))
        got = np.concatenate([state["head.w"].numpy(), state["tail.b"].numpy().reshape(1)])
        assert np.allclose(got, w, atol=1e-6)
    assert state["head.w"].dtype == torch.float32


def test_fedadam_takes_a_bias_corrected_adam_step_per_task():
    cfg = DriftConfig(
        server_optimizer="fedadam",
        server_lr=0.01,
        server_momentum=0.9,
        server_beta2=0.99,
        server_tau=1e-3,
    )
    opt = ServerOptimizer(cfg)
    prev, avg = _state([1.0, 1.0], [0.0]), _state([0.0, 2.0], [0.0])
    out = opt.step("a", prev, avg)
    delta = np.array([-1.0, 1.0, 0.0])
    m, v = 0.1 * delta, 0.01 * delta**2
    eta = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    expected = np.array([1.0, 1.0, 0.0]) + eta * m / (np.sqrt(v) + 1e-3)
    got = np.concatenate([out["head.w"].numpy(), out["tail.b"].numpy().reshape(1)])
    assert np.allclose(got, expected, atol=1e-6)
    # Another task has its own state.
    assert opt.step("b", prev, prev)["head.w"].tolist() == [1.0, 1.0]


def test_a_stepped_server_optimizer_survives_a_checkpoint(tmp_path):
    opt = ServerOptimizer(DriftConfig(server_optimizer="fedavgm", server_momentum=0.5))
    state = opt.step("t", _state([1.0, 2.0], [0.0]), _state([0.0, 0.0], [0.0]))
    torch.save({"server_optimizer": opt}, tmp_path / "ckpt.pt")
    back = torch.load(tmp_path / "ckpt.pt", weights_only=False)["server_optimizer"]
    avg = _state([0.0, 0.0], [0.0])
    assert torch.equal(back.step("t", state, avg)["head.w"], opt.step("t", state, avg)["head.w"])
