"""Maps drawn over their image: each map upsampled to its image's size and laid over it.

    from chains_lite.viz.overlays import overlay_grid
    overlay_grid(maps, images, ["cat", "dog"], ["column select", "ours"], title="...")
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch

from .plots import label_grid

__all__ = ["upsample", "overlay_grid"]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(..., h, w)`` maps -> ``(..., H, W)``, each min-max scaled to [0, 1] (a constant map
    becomes 0) and resized (nearest: one patch stays one block of pixels)."""
    M = torch.as_tensor(maps).detach().float().cpu()
    if M.ndim < 2:
        raise ValueError(f"maps must be (..., h, w), got {tuple(M.shape)}")
    flat = M.reshape(-1, *M.shape[-2:])
    lo = flat.flatten(1).min(1).values[:, None, None]
    hi = flat.flatten(1).max(1).values[:, None, None]
    flat = (flat - lo) / (hi - lo).clamp_min(1e-12)
    up = torch.nn.functional.interpolate(flat[:, None], size=tuple(size), mode="nearest")[:, 0]
    return up.reshape(*M.shape[:-2], *size)


def overlay_grid(maps, images, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "",
                 alpha: float = 0.6, cmap: str = "inferno", cell: float = 1.6, binary=(),
                 image_label: str = "input"):
    """A grid of maps, each drawn over its row's image.

    maps: ``(R, C, h, w)``; images: ``(R, 3, H, W)`` in [0, 1] (shown alone in a first column).
    Each map is min-max scaled on its own (only its shape matters) and drawn with opacity
    ``alpha``. ``binary``: indices of columns holding masks (0/1): drawn as a tinted region with a
    contour. ``image_label``: the title of the image column. Returns the figure.
    """
    M = torch.as_tensor(maps).detach().float().cpu()
    X = torch.as_tensor(images).detach().float().cpu()
    if M.ndim != 4 or X.ndim != 4 or X.shape[1] != 3 or len(X) != len(M):
        raise ValueError(f"need maps (R, C, h, w) and images (R, 3, H, W), got {tuple(M.shape)} and {tuple(X.shape)}")
    if len(row_labels) != M.shape[0] or len(col_labels) != M.shape[1]:
        raise ValueError(f"{M.shape[0]} rows and {M.shape[1]} columns need as many labels, "
                         f"got {len(row_labels)} and {len(col_labels)}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    R, C = M.shape[:2]
    up = upsample(M, X.shape[-2:])
    fig, axes = plt.subplots(R, C + 1, figsize=(cell * (C + 1), cell * R + 0.5), squeeze=False)
    for r in range(R):
        img = X[r].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[r, 0].imshow(img)
        for c in range(C):
            ax = axes[r, c + 1]
            ax.imshow(img)
            if c in binary:
                m = (up[r, c] > 0.5).float().numpy()
                ax.imshow(m, cmap="Greens", alpha=0.45 * m, vmin=0, vmax=1)
                ax.contour(m, levels=[0.5], colors="lime", linewidths=0.8)
            else:
                ax.imshow(up[r, c].numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    return label_grid(fig, axes, row_labels, [image_label] + list(col_labels), title)
