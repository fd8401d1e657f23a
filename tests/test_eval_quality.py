"""Sample-quality statistics (chains_lite.eval.quality) against scipy and naive references."""

import numpy as np
import pytest
import torch

from chains_lite.eval import quality, stats
from references import eig_fd, scipy_fd



def test_frechet_distance_matches_scipy_sqrtm():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(200, 6, generator=gen, dtype=torch.float64) + 0.5
    assert quality.frechet_distance(a, b) == pytest.approx(scipy_fd(a, b), rel=1e-8)
    assert quality.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)


def test_kid_and_is_against_naive_references():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, generator=gen), torch.randn(5, 3, generator=gen) + 1
    k = lambda x, y: (float(x.double() @ y.double()) / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(a[i], b[j]) for i in range(6) for j in range(5)) / 30
    assert quality.kid(a, b) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    assert quality.inception_score(torch.eye(4)) == pytest.approx(4.0)
    assert quality.inception_score(torch.full((5, 4), 0.25)) == pytest.approx(1.0)
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    m = p.mean(0)
    ref = np.exp(np.mean([(pi * (pi / m).log()).sum() for pi in p]))
    assert quality.inception_score(p) == pytest.approx(float(ref))
    assert quality.confident_share(p) == 0.5


def test_bootstrap_table_pairs_and_intervals():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(40, 4, generator=gen)
    probs = torch.softmax(torch.randn(30, 3, generator=gen), -1)
    near, far = torch.randn(30, 4, generator=gen), torch.randn(30, 4, generator=gen) + 3
    t = quality.bootstrap_table({"near": (near, probs), "far": (far, probs)}, real, [("near", "far")], n_boot=50)
    assert t["runs"]["far"]["frechet"]["value"] > t["runs"]["near"]["frechet"]["value"]
    d = t["pairs"]["near - far"]["frechet"]
    assert d["high"] < 0 and d["better_share"] == 1.0
    assert t["pairs"]["near - far"]["is"]["value"] == 0
    for m in quality.METRICS:   # the bias shift centres the resamples on the full-sample value
        row = t["runs"]["near"][m]
        assert row["low"] <= row["value"] <= row["high"]
    with pytest.raises(ValueError, match="same number"):
        quality.bootstrap_table({"a": (near, probs), "b": (far[:5], probs[:5])}, real)


def test_frechet_interval_of_a_biased_small_sample_stays_positive():
    # 12 real-like samples in 8 dimensions: the distance is mostly finite-sample bias, and the
    # resamples (repeated rows) inflate it further; the bounds must still be >= 0
    gen = torch.Generator().manual_seed(2)
    real, same = torch.randn(200, 8, generator=gen), torch.randn(12, 8, generator=gen)
    probs = torch.softmax(torch.randn(12, 3, generator=gen), -1)
    t = quality.bootstrap_table({"same": (same, probs)}, real, n_boot=200)
    row = t["runs"]["same"]["frechet"]
    assert 0 < row["low"] <= row["value"] <= row["high"]
    _, draws = stats.bootstrap({"same": (same, probs)}, lambda r, i: {"fd": quality.frechet_distance(
        r[0] if i is None else r[0][torch.from_numpy(i)], real)}, 12, 200, 0)
    assert draws["same"]["fd"].mean() > row["value"]     # the resamples are biased upward
    assert row["low"] == pytest.approx(stats.interval(draws["same"]["fd"], bias_from=row["value"], log=True)[0])


@pytest.mark.parametrize("n", [3, 12, 40, 41, 90])
def test_frechet_distance_with_fewer_samples_than_dimensions(n):
    # n <= D = 40 takes the N x N path, n > D the D x D one; both against numpy's eigvals
    gen = torch.Generator().manual_seed(n)
    mix = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    a = torch.randn(n, 40, generator=gen, dtype=torch.float64) @ mix
    b = torch.randn(150, 40, generator=gen, dtype=torch.float64) @ mix + 0.3
    assert quality.frechet_distance(a, b) == pytest.approx(eig_fd(a, b), rel=1e-7)
    assert quality.frechet_distance(a[[0, 0, 1, 2, 2]], b) == pytest.approx(eig_fd(a[[0, 0, 1, 2, 2]], b),
                                                                             rel=1e-7)


def test_reference_gives_the_metrics_of_its_features():
    gen = torch.Generator().manual_seed(1)
    f, real = torch.randn(20, 30, generator=gen), torch.randn(50, 30, generator=gen) + 0.2
    probs = torch.softmax(torch.randn(20, 5, generator=gen), -1)
    ref = quality.Reference(real)
    m = quality.metrics(f, probs, ref)
    assert m["frechet"] == pytest.approx(eig_fd(f.double(), real.double()), rel=1e-7)
    k = lambda x, y: (x.double() @ y.double().T / 30 + 1) ** 3  # noqa: E731
    naive = (k(f, f).sum() - k(f, f).trace()) / 380 + (k(real, real).sum() - k(real, real).trace()) / 2450 \
        - 2 * k(f, real).mean()
    assert m["kid"] == pytest.approx(float(naive), rel=1e-9)
    runs = {"x": (f, probs), "y": (f + 0.1, probs)}
    t1 = quality.bootstrap_table(runs, real, [("x", "y")], n_boot=5)
    t2 = quality.bootstrap_table(runs, ref, [("x", "y")], n_boot=5)
    assert t1 == t2
    with pytest.raises(ValueError, match="M >= 2"):
        quality.Reference(real[:1])
    with pytest.raises(ValueError, match="frechet_distance needs"):
        quality.frechet_distance(f[:, :5], ref)


def test_nan_is_named_and_a_distance_of_a_set_with_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    a, probs = torch.randn(40, 8, generator=g), torch.softmax(torch.randn(40, 5, generator=g), -1)
    bad = a.clone()
    bad[3, 2] = float("nan")
    bad_p = probs.clone()
    bad_p[0] = float("nan")
    for call in (lambda: quality.Reference(bad), lambda: quality.kid(bad, a), lambda: quality.kid(a, bad),
                 lambda: quality.frechet_distance(bad, a), lambda: quality.inception_score(bad_p),
                 lambda: quality.confident_share(bad_p)):
        with pytest.raises(ValueError, match="contain NaN or inf"):
            call()
    # the unclamped value of a set with itself is rounding around 0, e.g. -7e-8
    assert quality.frechet_distance(a, a) == 0.0 or 0 < quality.frechet_distance(a, a) < 1e-6
    for seed in range(20):
        x = torch.randn(30, 64, generator=torch.Generator().manual_seed(seed)) * 10
        assert quality.frechet_distance(x, x) >= 0
