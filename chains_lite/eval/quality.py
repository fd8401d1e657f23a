"""Sample-quality statistics of a generator, from per-sample features and class probabilities.

The statistics behind FID, KID and IS, in any feature space: Inception's for the paper's numbers
(full mode), ``shapes-vit``'s for the lite models (where they are *not* FID / KID / IS and are
never called so). Intervals come from a bias-shifted percentile bootstrap over the generated samples
(:mod:`chains_lite.eval.stats`); methods run on the same seeds are compared paired, on the same
resampled indices.

* :func:`frechet_distance`: distance of Gaussians fitted to the two feature sets (FID in
  Inception space), through symmetric eigen-decompositions (stable for singular covariances;
  ``N x N`` instead of ``D x D`` with fewer samples than dimensions);
* :class:`Reference`: the real features' statistics, computed once for many comparisons;
* :func:`kid`: the unbiased estimate of the squared MMD with the polynomial kernel
  ``k(x, y) = (x . y / d + 1)^3`` (Binkowski et al. 2018);
* :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities;
* :func:`confident_share`: the share of samples whose top class probability is >= 0.9.
"""
from __future__ import annotations

import torch

from . import stats

METRICS = ("frechet", "kid", "is", "confident")
#: True where a higher value is better.
HIGHER_IS_BETTER = {"frechet": False, "kid": False, "is": True, "confident": True}


def _finite(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    return x


class Reference:
    """Real features ``(M, D)`` with the statistics every comparison against them reuses: their
    mean, covariance and KID self-kernel term, computed once (a bootstrap compares hundreds of
    resamples with the same reference)."""

    def __init__(self, features: torch.Tensor):
        x = torch.as_tensor(features).double()
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"reference features must be (M, D) with M >= 2, got {tuple(x.shape)}")
        _finite(x, "reference features")
        self.features, self.mean, self.cov = x, x.mean(0), torch.cov(x.T)
        self.kid_self = _off_diagonal_mean(_kid_kernel(x, x))

    def __len__(self) -> int:
        return len(self.features)


def _as_reference(b) -> Reference:
    return b if isinstance(b, Reference) else Reference(b)


def _check_pair(a: torch.Tensor, b: Reference, what: str) -> torch.Tensor:
    a = torch.as_tensor(a).double()
    if a.ndim != 2 or a.shape[1] != b.features.shape[1] or len(a) < 2:
        raise ValueError(f"{what} needs (N, D) and (M, D) features with N, M >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.features.shape)}")
    return _finite(a, f"{what}'s features")


def frechet_distance(a: torch.Tensor, b) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of features ``a`` ``(N, D)`` and
    ``b`` ``(M, D)`` (or a :class:`Reference`).

    ``tr (S_a S_b)^(1/2)`` is the sum of the square roots of the eigenvalues of ``S_a S_b``. With
    fewer samples than dimensions (``N <= D``), ``S_a = X^T X`` for the centred, scaled
    ``X = (a - mu_a) / sqrt(N - 1)`` ``(N, D)``, and ``S_a S_b`` has the nonzero eigenvalues of the
    symmetric ``X S_b X^T`` ``(N, N)``: one ``N x N`` eigen-decomposition instead of two
    ``D x D`` ones. Otherwise the symmetric ``S_a^(1/2) S_b S_a^(1/2)`` ``(D, D)``, same spectrum.
    A distance, so clamped at 0 (rounding makes that of a set with itself about -1e-7).
    """
    b = _as_reference(b)
    a = _check_pair(a, b, "frechet_distance")
    n, d = a.shape
    if n <= d:
        x = (a - a.mean(0)) / (n - 1) ** 0.5
        cross = torch.linalg.eigvalsh(x @ b.cov @ x.T).clamp_min(0).sqrt().sum()
        trace_a = (x * x).sum()
    else:
        sa = torch.cov(a.T)
        w, v = torch.linalg.eigh(sa)
        root = (v * w.clamp_min(0).sqrt()) @ v.T
        cross = torch.linalg.eigvalsh(root @ b.cov @ root).clamp_min(0).sqrt().sum()
        trace_a = sa.trace()
    return max(0.0, float(((a.mean(0) - b.mean) ** 2).sum() + trace_a + b.cov.trace() - 2 * cross))


def _kid_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def _off_diagonal_mean(K: torch.Tensor) -> float:
    s = len(K)
    return float((K.sum() - K.diagonal().sum()) / (s * (s - 1)))


def kid(a: torch.Tensor, b) -> float:
    """Unbiased squared MMD between features ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (or a
    :class:`Reference`; N, M >= 2), polynomial kernel ``(x . y / D + 1)^3``. Can be slightly
    negative when the sets match."""
    b = _as_reference(b)
    a = _check_pair(a, b, "kid")
    return _off_diagonal_mean(_kid_kernel(a, a)) + b.kid_self - 2 * float(_kid_kernel(a, b.features).mean())


def inception_score(probs: torch.Tensor) -> float:
    """``exp(mean_x KL(p(y|x) || p(y)))`` of class probabilities ``(N, C)``: from 1 (every
    sample has the same class distribution) to C (confident and uniformly spread over classes)."""
    p = _finite(torch.as_tensor(probs).double(), "probs")
    if p.ndim != 2 or (p < 0).any() or not torch.allclose(p.sum(-1), torch.ones(len(p), dtype=p.dtype), atol=1e-4):
        raise ValueError("probs must be (N, C) rows of probabilities")
    marginal = p.mean(0, keepdim=True)
    kl = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - marginal.clamp_min(1e-300).log()), 0).sum(-1)
    return float(kl.mean().exp())


def confident_share(probs: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of rows of ``probs`` ``(N, C)`` whose largest probability is >= ``threshold``."""
    p = _finite(torch.as_tensor(probs), "probs")   # compared in its own dtype: float32 0.9 >= 0.9
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"probs must be (N, C) with N >= 1, got {tuple(p.shape)}")
    return float((p.max(-1).values >= threshold).double().mean())


def metrics(features: torch.Tensor, probs: torch.Tensor, real) -> dict:
    """All of :data:`METRICS` for one set of samples (features ``(N, D)``, probabilities
    ``(N, C)``) against real features ``(M, D)`` or a :class:`Reference`."""
    real = _as_reference(real)
    return {"frechet": frechet_distance(features, real), "kid": kid(features, real),
            "is": inception_score(probs), "confident": confident_share(probs)}


def bootstrap_table(runs: dict, real: torch.Tensor, pairs=(), n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Metrics with bootstrap intervals for several runs on the same seeds, and paired differences.

    Intervals are the ``level`` percentiles of ``n_boot`` resamples of the rows, shifted by the
    bootstrap bias estimate (mean of the resamples minus the full-sample value). The Fréchet
    distance of a run, a positive statistic whose resamples are biased upward (its finite-sample
    bias grows as repeated rows leave fewer distinct ones), is shifted on the log scale
    (:func:`chains_lite.eval.stats.interval` with ``log=True``), so its bounds stay positive; an
    additive shift can push them below zero. Differences are shifted additively.

    ``runs``: ``{name: (features (N, D), probs (N, C))}``, row ``i`` of every run from the same
    seed; ``real``: ``(M, D)`` real features or a :class:`Reference`; ``pairs``: ``(a, b)`` names whose difference
    ``a - b`` is bootstrapped on the same resampled rows. Returns ``{"runs": {name: {metric:
    {"value", "low", "high"}}}, "pairs": {"a - b": {metric: {"value", "low", "high",
    "better_share"}}}}``; ``better_share`` is the share of resamples where ``a`` is better."""
    sizes = {len(f) for f, _ in runs.values()}
    if len(sizes) != 1:
        raise ValueError(f"runs must have the same number of samples (same seeds), got {sizes}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot}, {level}")
    for a, b in pairs:
        if a not in runs or b not in runs:
            raise ValueError(f"pair ({a!r}, {b!r}) names a run not in {list(runs)}")
    n, real = sizes.pop(), _as_reference(real)

    def statistic(run, idx):
        f, p = run
        if idx is not None:
            idx = torch.from_numpy(idx)
            f, p = f[idx], p[idx]
        return metrics(f, p, real)

    point, draws = stats.bootstrap(runs, statistic, n, n_boot, seed)

    def interval(value, values, positive=False):
        if positive and value > 0 and (values > 0).all():
            low, high = stats.interval(values, level, bias_from=value, log=True)
        else:   # differences; or a distance of exactly 0 somewhere, where the log scale has no room
            low, high = stats.interval(values, level, bias_from=value)
            low = max(low, 0.0) if positive else low
        return {"value": value, "low": low, "high": high}

    out = {"runs": {k: {m: interval(point[k][m], draws[k][m], positive=m == "frechet") for m in METRICS} for k in runs},
           "pairs": {}}
    for a, b in pairs:
        row = {}
        for m in METRICS:
            diffs = draws[a][m] - draws[b][m]
            better = (diffs > 0) if HIGHER_IS_BETTER[m] else (diffs < 0)
            row[m] = {**interval(point[a][m] - point[b][m], diffs), "better_share": float(better.mean())}
        out["pairs"][f"{a} - {b}"] = row
    return out
