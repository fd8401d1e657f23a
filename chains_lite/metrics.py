"""How well a map localises ground truth: per-image AUROC and IoU at the mean threshold.

Maps are scores per pixel (any resolution: :func:`resize_maps` brings them to the mask's);
masks are boolean foreground. Every function returns one number per image, so callers can average,
take medians or run paired tests.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

RESIZE = ("bilinear", "nearest")


def _check_pair(scores: torch.Tensor, masks: torch.Tensor):
    scores, masks = torch.as_tensor(scores), torch.as_tensor(masks)
    if scores.ndim != 3 or masks.ndim != 3 or scores.shape != masks.shape:
        raise ValueError(f"scores and masks must both be (N, H, W) with the same shape, got "
                         f"{tuple(scores.shape)} and {tuple(masks.shape)} (resize_maps first)")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores.float(), masks.bool()


def resize_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(N, h, w)`` maps -> ``(N, *size)``; bilinear (default) or nearest upsampling."""
    if mode not in RESIZE:
        raise ValueError(f"mode must be one of {RESIZE}, got {mode!r}")
    maps = torch.as_tensor(maps).float()
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, h, w), got {tuple(maps.shape)}")
    kw = dict(align_corners=False) if mode == "bilinear" else {}
    return F.interpolate(maps[:, None], size=tuple(size), mode=mode, **kw)[:, 0]


def auroc(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image area under the ROC curve of ``scores`` ranking foreground above background.

    scores: ``(N, H, W)`` float; masks: ``(N, H, W)`` bool (True = foreground). Returns ``(N,)``:
    the probability that a random foreground pixel outscores a random background pixel (ties
    count one half; the Mann-Whitney U statistic). NaN for an image whose mask is all one class.
    """
    scores, masks = _check_pair(scores, masks)
    s = scores.flatten(1).double().numpy()
    y = masks.flatten(1).numpy()
    ranks = rankdata(s, axis=1)                # average ranks for ties
    pos = y.sum(1).astype(np.float64)
    neg = y.shape[1] - pos
    u = (ranks * y).sum(1) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (pos * neg)
    return torch.from_numpy(out).float()


def iou_at_mean(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of ``scores > mean(scores)`` with the foreground mask.

    scores: ``(N, H, W)``; masks: ``(N, H, W)`` bool. Returns ``(N,)`` in [0, 1] (each image's
    threshold is its own mean, as in the Chefer et al. protocol; 0 when both sets are empty).
    """
    scores, masks = _check_pair(scores, masks)
    pred = scores > scores.flatten(1).mean(1)[:, None, None]
    inter = (pred & masks).flatten(1).sum(1).float()
    union = (pred | masks).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))
