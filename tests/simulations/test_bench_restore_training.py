import math

import pytest

from festa.simulations.bench_restore_training import main, mean_std, recovered_fraction


def test_recovered_fraction_measures_the_share_of_the_cost_won_back():
    assert recovered_fraction(0.9, 0.7, 0.86) == pytest.approx(0.8)
    assert recovered_fraction(0.9, 0.7, 0.7) == pytest.approx(0.0)
    assert recovered_fraction(0.9, 0.7, 0.95) == pytest.approx(1.25)  # better than clean
    assert recovered_fraction(0.9, 0.7, 0.6) == pytest.approx(-0.5)  # restoration hurt


def test_recovered_fraction_is_undefined_when_the_degradation_cost_nothing():
    assert math.isnan(recovered_fraction(0.8, 0.8, 0.9))
    assert math.isnan(recovered_fraction(0.8, 0.85, 0.9))
    assert math.isnan(recovered_fraction(float("nan"), 0.85, 0.9))


def test_mean_std_skips_undefined_seeds():
    assert mean_std([0.5, 0.7, float("nan")]) == "0.600 ± 0.141"
    assert mean_std([0.25]) == "0.250"
    assert mean_std([float("nan")]) == "-"


@pytest.mark.parametrize("seeds", ["a,b", ","])
def test_bad_seeds_are_rejected_before_any_run(seeds, tmp_path):
    with pytest.raises(SystemExit):
        main(["--seeds", seeds, "--work", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["--methods", "gctm@x"],
        ["--methods", "nope@3"],
        ["--methods", "cddb@0"],
        ["--scanners", "dose-1"],
        ["--degraded-sites", "some"],
    ],
)
def test_bad_methods_and_scanners_are_rejected_before_any_run(args, tmp_path):
    with pytest.raises(SystemExit):
        main([*args, "--work", str(tmp_path)])
    assert not any(tmp_path.iterdir())
