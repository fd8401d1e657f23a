"""The one bootstrap and the one Wilcoxon test (chains_lite.eval.stats) against hand cases and scipy."""
import numpy as np
import pytest

from chains_lite.eval.stats import bootstrap, interval, wilcoxon_greater


def test_wilcoxon_greater_small_sample():
    assert wilcoxon_greater([2, 3, 4, 5, 6], [1, 1, 1, 1, 1]) == pytest.approx(1 / 32)
    assert wilcoxon_greater([1, 1, 1, 1, 1], [2, 3, 4, 5, 6]) == pytest.approx(1.0)
    assert wilcoxon_greater([1, 2], [1, 2]) == 1.0


def test_bootstrap_resamples_every_method_with_the_same_indices():
    a, b = np.arange(10.0), np.arange(10.0) ** 2
    mean = lambda x, idx: {"mean": float(x.mean() if idx is None else x[idx].mean())}  # noqa: E731
    point, draws = bootstrap({"a": a, "b": b}, mean, n=10, n_boot=50, seed=3)
    assert point == {"a": {"mean": 4.5}, "b": {"mean": 28.5}}
    idx = np.random.default_rng(3).integers(0, 10, size=(50, 10))     # numpy's draws, by hand
    np.testing.assert_allclose(draws["a"]["mean"], a[idx].mean(1))
    np.testing.assert_allclose(draws["b"]["mean"], b[idx].mean(1))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap({"a": a}, mean, n=10, n_boot=0)


def test_interval_is_the_percentile_range_shifted_by_the_bias():
    draws = np.arange(101.0)                                            # 0 .. 100
    assert interval(draws, 0.9) == pytest.approx((5.0, 95.0))
    assert interval(draws, 0.9, bias_from=40.0) == pytest.approx((-5.0, 85.0))   # mean 50: bias +10
    with pytest.raises(ValueError, match="level"):
        interval(draws, 1.0)


def test_log_interval_shifts_by_the_bias_of_the_logs_and_stays_positive():
    draws = np.exp(np.linspace(0.0, 4.0, 101))          # logs 0 .. 4, mean 2
    lo, hi = interval(draws, 0.9, bias_from=np.exp(1.5), log=True)   # log-scale bias +0.5
    assert (lo, hi) == pytest.approx((np.exp(0.2 - 0.5), np.exp(3.8 - 0.5)))
    additive = interval(draws, 0.9, bias_from=np.exp(1.5))
    assert additive[0] < 0 < lo                          # the additive shift crosses zero here
    with pytest.raises(ValueError, match="positive"):
        interval(np.array([0.0, 1.0]), log=True)


def test_wilcoxon_leaves_out_ties_and_needs_enough_pairs():
    assert wilcoxon_greater([2, 3, 4, 5, 6, 7], [1, 1, 1, 1, 1, 7]) == pytest.approx(1 / 32)   # the tie is left out
    assert np.isnan(wilcoxon_greater([2, 3, 4], [1, 1, 1], min_pairs=10))
    with pytest.raises(ValueError, match="same length"):
        wilcoxon_greater([1, 2], [1, 2, 3])
