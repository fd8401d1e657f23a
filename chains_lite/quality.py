"""Sample-quality statistics of a generator, from per-sample features and class probabilities.

The statistics behind FID, KID and IS, in any feature space: Inception's for the paper's numbers
(full mode), ``shapes-vit``'s for the lite models (where they are *not* FID / KID / IS and are
never called so). Intervals come from a bias-shifted percentile bootstrap over the generated samples; methods
run on the same seeds are compared paired, on the same resampled indices.

* :func:`frechet_distance`: distance of Gaussians fitted to the two feature sets (FID in
  Inception space), through symmetric eigen-decompositions (fast and stable for singular
  covariances, as with fewer samples than dimensions);
* :func:`kid`: the unbiased estimate of the squared MMD with the polynomial kernel
  ``k(x, y) = (x . y / d + 1)^3`` (Binkowski et al. 2018);
* :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities;
* :func:`confident_share`: the share of samples whose top class probability is >= 0.9.
"""
from __future__ import annotations

import numpy as np
import torch


METRICS = ("frechet", "kid", "is", "confident")
#: True where a higher value is better.
HIGHER_IS_BETTER = {"frechet": False, "kid": False, "is": True, "confident": True}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of features ``a`` ``(N, D)`` and
    ``b`` ``(M, D)``. ``tr (S_a S_b)^(1/2)`` is the sum of square roots of the eigenvalues of the
    symmetric ``S_a^(1/2) S_b S_a^(1/2)``, which has the same spectrum."""
    a, b = a.double(), b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs (N, D) and (M, D) features with N, M >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(sa)
    root = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root @ sb @ root).clamp_min(0).sqrt().sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + sa.trace() + sb.trace() - 2 * cross)


def kid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased squared MMD between features ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (N, M >= 2),
    polynomial kernel ``(x . y / D + 1)^3``. Can be slightly negative when the sets match."""
    a, b = a.double(), b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"kid needs (N, D) and (M, D) features with N, M >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    d, n, m = a.shape[1], len(a), len(b)
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb = k(a, a), k(b, b)
    off = lambda K, s: (K.sum() - K.diagonal().sum()) / (s * (s - 1))  # noqa: E731
    return float(off(kaa, n) + off(kbb, m) - 2 * k(a, b).mean())


def inception_score(probs: torch.Tensor) -> float:
    """``exp(mean_x KL(p(y|x) || p(y)))`` of class probabilities ``(N, C)``: from 1 (every
    sample has the same class distribution) to C (confident and uniformly spread over classes)."""
    p = probs.double()
    if p.ndim != 2 or (p < 0).any() or not torch.allclose(p.sum(-1), torch.ones(len(p), dtype=p.dtype), atol=1e-4):
        raise ValueError("probs must be (N, C) rows of probabilities")
    marginal = p.mean(0, keepdim=True)
    kl = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - marginal.clamp_min(1e-300).log()), 0).sum(-1)
    return float(kl.mean().exp())


def confident_share(probs: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of rows of ``probs`` ``(N, C)`` whose largest probability is >= ``threshold``."""
    return float((probs.max(-1).values >= threshold).double().mean())


def metrics(features: torch.Tensor, probs: torch.Tensor, real: torch.Tensor) -> dict:
    """All of :data:`METRICS` for one set of samples (features ``(N, D)``, probabilities
    ``(N, C)``) against real features ``(M, D)``."""
    return {"frechet": frechet_distance(features.double(), real.double()), "kid": kid(features, real),
            "is": inception_score(probs), "confident": confident_share(probs)}


def bootstrap_table(runs: dict, real: torch.Tensor, pairs=(), n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Metrics with bootstrap intervals for several runs on the same seeds, and paired differences.

    Intervals are the ``level`` percentiles of ``n_boot`` resamples of the rows, shifted by the
    bootstrap bias estimate (mean of the resamples minus the full-sample value).

    ``runs``: ``{name: (features (N, D), probs (N, C))}``, row ``i`` of every run from the same
    seed; ``real``: ``(M, D)`` real features; ``pairs``: ``(a, b)`` names whose difference
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
    n = sizes.pop()
    idx = torch.from_numpy(np.random.default_rng(seed).integers(0, n, (n_boot, n)))
    point = {k: metrics(f, p, real) for k, (f, p) in runs.items()}
    boot = {k: [metrics(f[i], p[i], real) for i in idx] for k, (f, p) in runs.items()}
    q = ((1 - level) / 2, (1 + level) / 2)

    def interval(value, draws):
        # a resample repeats samples, which shrinks the features' spread and biases the Fréchet
        # distance and KID upward: shift the percentiles by the bootstrap's bias estimate
        bias = float(np.mean(draws)) - value
        lo, hi = np.quantile(draws, q)
        return {"value": value, "low": float(lo) - bias, "high": float(hi) - bias}

    out = {"runs": {k: {m: interval(point[k][m], [b[m] for b in boot[k]]) for m in METRICS} for k in runs},
           "pairs": {}}
    for a, b in pairs:
        row = {}
        for m in METRICS:
            diffs = np.array([x[m] - y[m] for x, y in zip(boot[a], boot[b])])
            better = (diffs > 0) if HIGHER_IS_BETTER[m] else (diffs < 0)
            row[m] = {**interval(point[a][m] - point[b][m], diffs), "better_share": float(better.mean())}
        out["pairs"][f"{a} - {b}"] = row
    return out
