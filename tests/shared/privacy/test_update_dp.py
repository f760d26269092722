"""DP of head/tail updates (festa.shared.privacy.update_dp): clipping, noise scale, epsilon, a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from festa.shared.privacy.update_dp import gaussian_epsilon, privatize_update


def _delta(new: dict, old: dict) -> float:
    keys = [k for k in old if old[k].is_floating_point()]
    return float(torch.sqrt(sum(((new[k] - old[k]) ** 2).sum() for k in keys)))


def test_clipping_bounds_the_update_norm_and_leaves_small_updates_alone():
    torch.manual_seed(0)
    old = {"w": torch.randn(20, 5), "b": torch.randn(5), "steps": torch.tensor(3)}
    big = {"w": old["w"] + 4 * torch.randn(20, 5), "b": old["b"] + 1.0, "steps": torch.tensor(4)}
    out, norm = privatize_update(big, old, clip=1.5, noise_multiplier=0.0)
    assert norm > 1.5
    assert _delta(out, old) == pytest.approx(1.5, rel=1e-5)
    assert out["steps"] == 4  # integer entries are not float updates: passed through
    direction = (big["w"] - old["w"]).flatten()
    assert torch.nn.functional.cosine_similarity(
        (out["w"] - old["w"]).flatten(), direction, dim=0
    ) == pytest.approx(1.0, abs=1e-5)
    small = {k: (v + 1e-3 if v.is_floating_point() else v) for k, v in old.items()}
    out, _ = privatize_update(small, old, clip=1.5, noise_multiplier=0.0)
    assert torch.allclose(out["w"], small["w"]) and torch.allclose(out["b"], small["b"])


def test_noise_std_is_multiplier_times_clip():
    old = {"w": torch.zeros(200_000)}
    out, _ = privatize_update({"w": torch.zeros(200_000)}, old, clip=0.5, noise_multiplier=3.0)
    assert float(out["w"].std()) == pytest.approx(1.5, rel=0.02)
    assert abs(float(out["w"].mean())) < 0.02


def test_bad_settings_are_refused():
    old = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match="clipping norm"):
        privatize_update(old, old, clip=0.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="keys"):
        privatize_update({"v": torch.zeros(3)}, old, clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="delta"):
        gaussian_epsilon(1.0, 1, delta=0.0)


def test_epsilon_falls_with_noise_and_grows_with_rounds():
    assert gaussian_epsilon(0.0, 5) == math.inf and gaussian_epsilon(1.0, 0) == 0.0
    by_noise = [gaussian_epsilon(z, 10) for z in (0.5, 1.0, 2.0, 4.0)]
    assert by_noise == sorted(by_noise, reverse=True) and by_noise[-1] < by_noise[0] / 4
    by_rounds = [gaussian_epsilon(1.0, t) for t in (1, 4, 16, 64)]
    assert by_rounds == sorted(by_rounds)
    # one Gaussian release at z = 1, delta 1e-5: the RDP bound (classical analytic value ~ 4.4)
    assert 3.0 < gaussian_epsilon(1.0, 1) < 6.0


def test_a_short_run_with_dp_completes_and_records_epsilon(tmp_path):
    from festa.server.federation import Federation
    from festa.shared.config import FederationConfig
    from festa.simulations.inprocess import InProcessTransport

    cfg = FederationConfig.model_validate(
        {
            "clients": 3,
            "rounds": 2,
            "local_steps": 1,
            "tasks": ["classification"],
            "partition": "iid",
            "degrade": "none",
            "restore": "none",
            "secure_aggregation": True,
            "dp_noise": 1.0,
            "dp_clip": 0.5,
            "model": {
                "image_size": 32,
                "patch_size": 8,
                "embed_dim": 32,
                "depth": 1,
                "num_heads": 2,
            },
            "data": {"train_size": 48, "val_size": 12},
            "optim": {"batch_size": 8},
        }
    )
    summary = Federation(cfg, tmp_path / "dp").run(InProcessTransport(cfg))
    assert summary["state"] == "finished"
    written = json.loads((tmp_path / "dp" / "summary.json").read_text())["dp"]
    assert written["rounds"] == 2 and written["delta"] == 1e-5
    assert written["epsilon"] == pytest.approx(gaussian_epsilon(1.0, 2, 1e-5))
