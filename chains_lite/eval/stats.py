"""The statistics behind the chapters' comparisons: one bootstrap over items, one Wilcoxon test.

* :func:`bootstrap` resamples the items (images, samples) of several methods scored on the same
  items, with the same resamples for every method, so differences between methods are paired.
  :func:`interval` turns a value and its resampled draws into a percentile interval.
* :func:`wilcoxon_greater` is the one-sided Wilcoxon signed-rank test for "a > b" on paired values.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch


def resample_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` item indices drawn with replacement from ``range(n)``, seeded by ``seed``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of items), got {n!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap(items: dict[str, Any], statistic: Callable[[Any, np.ndarray | None], dict[str, float]],
              n: int, n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """Bootstrap ``statistic`` of several methods over the same ``n`` items.

    ``items``: ``{method: data}``; ``statistic(data, idx)``: ``{name: value}`` of the items ``idx``
    (an ``(n,)`` index array; ``None`` means all items in order). Every method is resampled with
    the same ``n_boot`` index draws (:func:`resample_indices`). Returns ``(point, draws)``:
    ``point[method][name]`` the value on all items, ``draws[method][name]`` an ``(n_boot,)`` array.
    """
    idx = resample_indices(n, n_boot, seed)
    point = {m: statistic(d, None) for m, d in items.items()}
    draws = {}
    for m, d in items.items():
        rows = [statistic(d, i) for i in idx]
        draws[m] = {k: np.array([r[k] for r in rows], dtype=float) for k in point[m]}
    return point, draws


def interval(draws: np.ndarray, level: float = 0.95, bias_from: float | None = None,
             log: bool = False) -> tuple[float, float]:
    """The ``level`` percentile interval ``(low, high)`` of bootstrap ``draws``.

    ``bias_from``: the statistic's value on all items; the interval is then shifted by the
    bootstrap's bias estimate (mean of the draws minus that value), for statistics that
    resampling biases (a resample repeats items, which shrinks the features' spread and raises
    the Fréchet distance and KID). ``log``: for a positive statistic, take the percentiles and
    the shift on the log scale (a multiplicative bias), so the bounds stay positive; needs
    positive ``draws`` and ``bias_from``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    draws = np.asarray(draws, dtype=float)
    if log:
        if (draws <= 0).any() or (bias_from is not None and not bias_from > 0):
            raise ValueError("a log-scale interval needs positive draws and a positive bias_from")
        lo, hi = interval(np.log(draws), level, None if bias_from is None else float(np.log(bias_from)))
        return float(np.exp(lo)), float(np.exp(hi))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    shift = 0.0 if bias_from is None else float(np.mean(draws)) - bias_from
    return float(lo) - shift, float(hi) - shift


def wilcoxon_greater(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor,
                     min_pairs: int = 1) -> float:
    """One-sided Wilcoxon signed-rank p-value for "a > b" on paired values (scipy; exact for few pairs).

    Pairs with equal values carry no sign and are left out (Wilcoxon's convention); non-finite
    differences too. Returns 1.0 when every pair is equal (no evidence that a > b) and NaN when
    fewer than ``min_pairs`` pairs differ.
    """
    from scipy.stats import wilcoxon
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D of the same length, got {tuple(a.shape)} and {tuple(b.shape)}")
    d = a - b
    d = d[torch.isfinite(d)]
    if len(d) == 0 or torch.all(d == 0):
        return 1.0
    nz = d[d != 0]
    if len(nz) < min_pairs:
        return float("nan")
    return float(wilcoxon(nz.numpy(), alternative="greater").pvalue)
