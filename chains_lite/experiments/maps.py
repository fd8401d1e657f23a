"""Chapter 2's tables: global maps of vision transformers scored against ground-truth masks.

:func:`localisation` scores every layer's maps (:func:`chains_lite.methods.maps.patch_map`) on a
dataset (AUROC, IoU at the mean threshold), :func:`summary_table` prints them per layer, and
:func:`paired_comparison` tests one method against another image by image.
"""
from __future__ import annotations

import torch
from ..core.progress import progress_bar

from ..capture import capture
from ..core.chain import DEFAULT_ALPHA
from ..eval.metrics import auroc, iou_at_mean, resize_maps
from ..eval.stats import wilcoxon_greater
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


def summary_table(results: dict, metric: str = "auroc") -> str:
    """:func:`localisation` results as a text table: mean over images per layer and method."""
    methods = [m for m in results if m != "layers"]
    if metric not in ("auroc", "iou"):
        raise ValueError(f"metric must be 'auroc' or 'iou', got {metric!r}")
    lines = [f"{'layer':>5} " + " ".join(f"{m:>11}" for m in methods)]
    for i, layer in enumerate(results["layers"]):
        vals = [results[m][metric][i].nanmean().item() for m in methods]
        best = max(range(len(vals)), key=vals.__getitem__)
        lines.append(f"{layer:>5} " + " ".join(f"{v:>10.3f}" + ("*" if j == best else " ")
                                               for j, v in enumerate(vals)))
    return "\n".join(lines)


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
