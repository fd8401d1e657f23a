"""Global incoming-attention maps of vision transformers (paper Sec. 4.1, 4.3, Fig. 4).

Four ways to say "which tokens matter" from one layer's attention ``A`` ``(..., n, n)``, selected
from the methods of :mod:`chains_lite.scores`:

* ``"tokenrank"``  — the steady state of the (teleported) chain: indirect attention of all orders;
* ``"column_sum"`` — the column means: one incoming bounce from the uniform start;
* ``"center_row"`` — the row of the center patch: what one token attends to;
* ``"cls_row"``    — the row of the CLS token: what the classifier token attends to.

Heads are mixed first (``"uniform"`` average or ``"lambda2"`` weights, Sec. 4.4), then the map is
computed on the mixed chain, as the paper does for Table 6. :func:`localisation` scores the maps
of a whole dataset against ground-truth masks (AUROC, IoU at the mean threshold).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import scores
from .capture import TokenLayout, capture
from .chain import DEFAULT_ALPHA
from .chain import mix as mix_chain
from .metrics import auroc, iou_at_mean, resize_maps

GLOBAL_METHODS = scores.select("tokenrank", "column_sum", "center_row", "cls_row")
HEAD_MIX = scores.DETERMINISTIC_SCHEMES


def center_token(layout: TokenLayout) -> int:
    """Index of the patch token at the grid's center (row h//2, column w//2)."""
    return layout.center_token


def mix(A: torch.Tensor, heads: str = "uniform") -> torch.Tensor:
    """``(..., H, n, n)`` -> ``(..., n, n)``: heads averaged (``"uniform"``) or weighted by |λ2|."""
    if heads not in HEAD_MIX:
        raise ValueError(f"heads must be one of {HEAD_MIX}, got {heads!r}")
    return mix_chain(A, heads)


def global_map(A: torch.Tensor, method: str, layout: TokenLayout,
               alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """One global map per chain: ``A`` ``(..., n, n)`` -> ``(..., n)`` summing to 1.

    ``method`` is a :mod:`chains_lite.scores` name, usually one of :data:`GLOBAL_METHODS`;
    ``alpha`` is TokenRank's teleport weight.
    """
    return scores.token_scores(A, method, layout, alpha=alpha)


def patch_map(A: torch.Tensor, method: str, layout: TokenLayout,
              alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """:func:`global_map` restricted to the patch tokens, as an image ``(..., h, w)``."""
    return layout.to_grid(global_map(A, method, layout, alpha))


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
    for i in tqdm(range(0, len(images), batch_size), desc="localisation", disable=not progress):
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


EXPLORE_METHODS = GLOBAL_METHODS + scores.select("bounce_center")


def explore_map(A: torch.Tensor, layout: TokenLayout, head="uniform", method: str = "tokenrank",
                bounces: int = 2, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """The map behind the book's explorer widget: one image's layer ``A`` ``(H, n, n)`` -> ``(h, w)``.

    head: an int (one head), ``"uniform"`` or ``"lambda2"`` (mixed). method: one of
    :data:`EXPLORE_METHODS`; ``"bounce_center"`` bounces ``bounces`` times from the center token
    (incoming); ``alpha`` is TokenRank's teleport weight.
    """
    if A.ndim != 3:
        raise ValueError(f"A must be one image's layer (H, n, n), got {tuple(A.shape)}")
    chain = A[head] if isinstance(head, int) else mix(A, head)
    return layout.to_grid(scores.token_scores(chain, method, layout, alpha=alpha, steps=bounces))


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
    one-sided Wilcoxon signed-rank p-value for "a > b" (scipy)."""
    from scipy.stats import wilcoxon
    rows = []
    for i, layer in enumerate(results["layers"]):
        d = (results[a][metric][i] - results[b][metric][i])
        d = d[torch.isfinite(d)].double()
        nz = d[d != 0]
        p = wilcoxon(nz.numpy(), alternative="greater").pvalue if len(nz) >= 10 else float("nan")
        rows.append(dict(layer=layer, mean_diff=d.mean().item(), wins=(d > 0).double().mean().item(),
                         p_value=float(p), n=len(d)))
    return rows
