"""Chapter 2's tables: global maps of vision transformers scored against ground-truth masks.

:func:`localisation` scores every layer's maps (:func:`chains_lite.methods.maps.patch_map`) on a
dataset (AUROC, IoU at the mean threshold), :func:`over_layers` averages them with an interval, and
:func:`paired_comparison` (per layer) and :func:`paired_over_layers` test one method against another
image by image. :func:`per_head` compares
two methods head by head beside each head's |λ2|, and :func:`rank_correlation` measures how the
two go together.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from ..core.progress import progress_bar

from ..capture import capture
from ..core.chain import DEFAULT_ALPHA, lambda2
from ..eval.metrics import auroc, iou_at_mean, resize_maps
from ..eval.stats import interval, resample_indices, wilcoxon_greater
from ..methods.maps import GLOBAL_METHODS, mix, patch_map


def localisation(model, images: torch.Tensor, masks: torch.Tensor, layers=None,
                 methods=GLOBAL_METHODS, heads: str = "uniform", batch_size: int = 50,
                 alpha: float = DEFAULT_ALPHA, progress: bool = True) -> dict:
    """Score every layer's global maps against ground-truth foreground masks.

    images: ``(N, 3, H, W)`` model input; masks: ``(N, H', W')``, nonzero = foreground (ShapeWorld's
    object masks; any resolution). Maps are patch grids upsampled bilinearly to ``(H', W')``.
    Returns ``{"layers": [...], method: {"auroc": (L, N), "iou": (L, N)}}`` (L captured layers).
    """
    images, masks = torch.as_tensor(images), torch.as_tensor(masks)
    if images.ndim != 4 or masks.ndim != 3 or len(masks) != len(images):
        raise ValueError(f"images must be (N, C, H, W) and masks (N, H', W') of the same N; got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    device = next(model.parameters()).device
    out = {m: {"auroc": [], "iou": []} for m in methods}
    for i in progress_bar(range(0, len(images), batch_size), desc="localisation", disable=not progress):
        x, fg = images[i:i + batch_size].to(device), masks[i:i + batch_size] > 0
        with torch.no_grad(), capture(model, layers=layers, device="cpu") as rec:
            model(x)
        for m in methods:
            a, iou = [], []
            for A in rec.attentions:
                grid = patch_map(mix(A, heads), m, rec.layout, alpha)
                up = resize_maps(grid, fg.shape[-2:])
                a.append(auroc(up, fg))
                iou.append(iou_at_mean(up, fg))
            out[m]["auroc"].append(torch.stack(a))
            out[m]["iou"].append(torch.stack(iou))
    for m in methods:
        out[m] = {k: torch.cat(v, 1) for k, v in out[m].items()}
    out["layers"] = rec.layers
    return out


def mean_interval(values, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of ``values`` (any shape, NaNs left out) with its 95 % percentile bootstrap interval:
    ``{"mean", "low", "high", "n"}``."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten().numpy()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise ValueError("no finite values to average")
    draws = v[resample_indices(len(v), n_boot, seed)].mean(1)
    low, high = interval(draws)
    return dict(mean=float(v.mean()), low=low, high=high, n=len(v))


def over_layers(results: dict, metric: str = "auroc", n_boot: int = 1000, seed: int = 0) -> dict:
    """:func:`localisation` results averaged over the layers, image by image, then over images:
    ``{method: {"mean", "low", "high", "n"}}`` with a 95 % percentile bootstrap interval over the
    images (images whose score is NaN in every layer are left out)."""
    if metric not in ("auroc", "iou"):
        raise ValueError(f"metric must be 'auroc' or 'iou', got {metric!r}")
    out = {}
    for m in (k for k in results if k != "layers"):
        per_image = results[m][metric].double().nanmean(0).numpy()       # (N,)
        out[m] = mean_interval(per_image, n_boot, seed)
    return out


def paired_over_layers(results: dict, a: str = "tokenrank", b: str = "column_sum",
                       metric: str = "auroc", n_boot: int = 1000, seed: int = 0) -> dict:
    """``a - b`` averaged over the layers, image by image: ``{"mean", "low", "high", "n"}`` (95 %
    bootstrap interval over images), ``"wins"`` the share of images where ``a`` is ahead and
    ``"p_value"`` the one-sided Wilcoxon test of "a > b" on the per-image values."""
    x = results[a][metric].double().nanmean(0)
    y = results[b][metric].double().nanmean(0)
    keep = torch.isfinite(x - y)
    d = (x - y)[keep].numpy()
    out = mean_interval(d, n_boot, seed)
    out.update(wins=float((d > 0).mean()), p_value=wilcoxon_greater(x[keep], y[keep], min_pairs=10))
    return out


def paired_comparison(results: dict, a: str = "tokenrank", b: str = "column_sum",
                      metric: str = "auroc") -> list[dict]:
    """Per layer: mean of ``a - b`` over images, the share of images where ``a`` beats ``b``, and a
    one-sided Wilcoxon signed-rank p-value for "a > b" (:func:`chains_lite.eval.stats.wilcoxon_greater`;
    NaN with fewer than 10 images where they differ)."""
    rows = []
    for i, layer in enumerate(results["layers"]):
        x, y = results[a][metric][i].double(), results[b][metric][i].double()
        d = x - y
        keep = torch.isfinite(d)
        d = d[keep]
        rows.append(dict(layer=layer, mean_diff=d.mean().item(), wins=(d > 0).double().mean().item(),
                         p_value=wilcoxon_greater(x[keep], y[keep], min_pairs=10), n=len(d)))
    return rows


def per_head(model, images: torch.Tensor, masks: torch.Tensor, a: str = "tokenrank",
             b: str = "column_sum", batch_size: int = 100, alpha: float = DEFAULT_ALPHA) -> dict:
    """Two global maps compared head by head (no head mixing), beside each head's |λ2|.

    images: ``(N, 3, H, W)`` model input; masks: ``(N, H', W')``, nonzero = foreground. For every
    layer ``l``, head ``h`` and image, returns ``(L, heads, N)`` tensors:
    ``"lambda2"`` the chain's |λ2| (CLS kept); ``"auroc_diff"`` AUROC of ``a``'s map minus AUROC
    of ``b``'s (maps over the patch grid, upsampled as in :func:`localisation`); ``"distance"``
    the L1 distance between the two maps over the patch tokens, each rescaled to sum to 1
    (0 = the same map, 2 = disjoint). Also ``"layers"``.
    """
    images, masks = torch.as_tensor(images), torch.as_tensor(masks)
    if images.ndim != 4 or masks.ndim != 3 or len(masks) != len(images):
        raise ValueError(f"images must be (N, C, H, W) and masks (N, H', W') of the same N; got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    device = next(model.parameters()).device
    out = {"lambda2": [], "auroc_diff": [], "distance": []}
    for i in range(0, len(images), batch_size):
        x, fg = images[i:i + batch_size].to(device), masks[i:i + batch_size] > 0
        with torch.no_grad(), capture(model, device="cpu") as rec:
            model(x)
        lam, diff, dist = [], [], []
        for A in rec.attentions:                                   # (B, heads, n, n)
            B, H = A.shape[:2]
            lam.append(lambda2(A.double()).float().T)               # (heads, B)
            grids = [patch_map(A, m, rec.layout, alpha) for m in (a, b)]   # (B, heads, h, w)
            fgh = fg[:, None].expand(B, H, *fg.shape[-2:]).reshape(B * H, *fg.shape[-2:])
            s = [auroc(resize_maps(g.reshape(B * H, *g.shape[-2:]), fg.shape[-2:]), fgh)
                 .reshape(B, H) for g in grids]
            diff.append((s[0] - s[1]).T)
            p, q = (g.flatten(2) / g.flatten(2).sum(-1, keepdim=True) for g in grids)
            dist.append((p - q).abs().sum(-1).T)
        for k, v in zip(out, (lam, diff, dist)):
            out[k].append(torch.stack(v))
    out = {k: torch.cat(v, -1) for k, v in out.items()}
    out["layers"] = rec.layers
    return out


def rank_correlation(x, y, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Spearman's rank correlation of paired values ``x``, ``y`` ``(n,)`` (NaN pairs left out).

    Returns ``{"rho", "low", "high", "p_value", "n"}``: the percentile bootstrap interval over the
    pairs (``n_boot`` resamples, seeded) and scipy's two-sided p-value for "no correlation".
    """
    from scipy.stats import spearmanr
    x, y = (torch.as_tensor(v, dtype=torch.float64).flatten().numpy() for v in (x, y))
    if x.shape != y.shape:
        raise ValueError(f"x and y must hold the same number of values, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        raise ValueError(f"need at least 3 finite pairs, got {len(x)}")
    rho, p = spearmanr(x, y)
    with warnings.catch_warnings():    # a resample of few pairs can be constant: its rho is NaN, dropped
        warnings.simplefilter("ignore")
        draws = np.array([spearmanr(x[i], y[i])[0] for i in resample_indices(len(x), n_boot, seed)])
    low, high = interval(draws[np.isfinite(draws)], level)
    return dict(rho=float(rho), low=low, high=high, p_value=float(p), n=len(x))
