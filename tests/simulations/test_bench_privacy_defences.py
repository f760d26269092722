"""bench_privacy_defences' label-mix statistics: the group view and the attack's advantage."""

import numpy as np

from festa.shared.privacy import uniform_mix_error
from festa.simulations.bench_privacy_defences import advantage_interval, group_estimates


def test_group_estimates_read_each_groups_size_weighted_mix_for_every_member():
    rng = np.random.default_rng(0)
    mixes = rng.dirichlet([0.5] * 3, size=7)
    sizes = rng.integers(20, 200, size=7).astype(float)
    updates = mixes @ np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -1.0]])  # a linear leak
    cal = rng.dirichlet([0.5] * 3, size=12)
    cal_u = cal @ np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -1.0]])
    est = group_estimates(cal_u, cal, updates, sizes, 3)
    assert est.shape == (6, 3)  # the 7th site is not in a whole group
    for start in (0, 3):
        w = sizes[start : start + 3] / sizes[start : start + 3].sum()
        group_mix = (mixes[start : start + 3] * w[:, None]).sum(0)
        assert np.allclose(est[start : start + 3], group_mix, atol=1e-4)


def test_advantage_is_the_uniform_error_for_a_perfect_attack_and_zero_for_a_uniform_one():
    truth = np.random.default_rng(1).dirichlet([0.5] * 3, size=30)
    gain, lo, hi = advantage_interval(truth.copy(), truth, 3)
    assert np.isclose(gain, uniform_mix_error(truth)) and 0 < lo <= gain <= hi
    assert advantage_interval(np.full_like(truth, 1 / 3), truth, 3) == (0.0, 0.0, 0.0)
