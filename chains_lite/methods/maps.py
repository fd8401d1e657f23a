"""Global incoming-attention maps of vision transformers (paper Sec. 4.1, 4.3, Fig. 4).

Four ways to say "which tokens matter" from one layer's attention ``A`` ``(..., n, n)``, selected
from the methods of :mod:`chains_lite.core.scores`:

* ``"tokenrank"``  — the steady state of the (teleported) chain: indirect attention of all orders;
* ``"column_sum"`` — the column means: one incoming bounce from the uniform start;
* ``"center_row"`` — the row of the center patch: what one token attends to;
* ``"cls_row"``    — the row of the CLS token: what the classifier token attends to.

Heads are mixed first (``"uniform"`` average or ``"lambda2"`` weights, Sec. 4.4), then the map is
computed on the mixed chain, as the paper does for Table 6. Scoring the maps of a dataset against
ground-truth masks is :mod:`chains_lite.experiments.maps`.
"""
from __future__ import annotations

import torch

from ..capture import capture
from ..core import scores
from ..core.chain import DEFAULT_ALPHA, lambda2
from ..core.chain import mix as mix_chain
from ..core.layout import TokenLayout

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

    ``method`` is a :mod:`chains_lite.core.scores` name, usually one of :data:`GLOBAL_METHODS`;
    ``alpha`` is TokenRank's teleport weight.
    """
    return scores.token_scores(A, method, layout, alpha=alpha)


def patch_map(A: torch.Tensor, method: str, layout: TokenLayout,
              alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """:func:`global_map` restricted to the patch tokens, as an image ``(..., h, w)``."""
    return layout.to_grid(global_map(A, method, layout, alpha))


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




@torch.no_grad()
def head_lambda2(model, images: torch.Tensor) -> torch.Tensor:
    """|λ2| of every head's attention chain (CLS kept), image by image (paper Sec. 4.4, Fig. 11).

    images: ``(B, 3, H, W)`` model input. Returns ``(layers, B, heads)``, computed in float64.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    with capture(model, device="cpu") as rec:
        model(images)
    return torch.stack([lambda2(A.double()) for A in rec.attentions]).float()
