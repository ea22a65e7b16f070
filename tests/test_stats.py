"""The seed interval: the t quantiles, the half-width against a direct computation, the verdict rule."""

import math
import statistics

import pytest

from easytune_lab.stats import interval, t_quantile, verdict


def test_t_quantiles_match_the_inverse_cdf():
    scipy_stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 5, 10, 30):
        assert t_quantile(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), abs=1e-3)
    assert t_quantile(1000) == 1.96
    with pytest.raises(ValueError):
        t_quantile(0)


def test_interval_of_three_seeds():
    values = [1.0, 2.0, 4.0]
    got = interval(values)
    half = 4.303 * statistics.stdev(values) / math.sqrt(3)
    assert got["mean"] == pytest.approx(7 / 3) and got["ci95"] == pytest.approx(half)
    assert got["lo"] == pytest.approx(7 / 3 - half) and got["n"] == 3
    assert interval([5.0])["ci95"] is None


def test_verdict_is_a_win_only_outside_the_interval():
    assert verdict(interval([0.5, 0.6, 0.7])) == "better"
    assert verdict(interval([-0.5, -0.6, -0.7])) == "worse"
    assert verdict(interval([-0.5, -0.6, -0.7]), higher_is_better=False) == "better"
    assert verdict(interval([-0.1, 0.3, 0.2])) == "no difference measured"
    assert verdict(interval([0.3])) == "one seed: no interval"
