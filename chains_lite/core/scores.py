"""Per-token scores of an attention chain: the one registry of "which tokens matter" methods.

Every method is a function ``score(A, layout, generator=None, **options)`` of a chain ``A``
(a dense ``(..., n, n)`` tensor or a lazy chain from :mod:`chains_lite.core.lazy`), its
:class:`~chains_lite.core.layout.TokenLayout` and an optional ``torch.Generator``, returning one
score per token ``(..., n)``. :data:`SCORES` maps names to them; :func:`token_scores` looks one
up and runs it. The maps, masking, probing and segmentation drivers select their methods from
:data:`NAMES` with :func:`select`.

* ``tokenrank``      steady state of the teleported chain (Sec. 4.3); option ``alpha``;
* ``column_sum``     column means: one incoming bounce from the uniform start (Sec. 4.1);
* ``center_row``, ``cls_row``   the row of the centre patch / the CLS token (Sec. 4.1);
* ``center_column``  the normalised column of the centre patch: one outgoing bounce (Sec. 4.1);
* ``bounce_center``  incoming bounces from the centre patch, option ``steps`` (default 2, Sec. 4.2);
* ``random``         uniform random scores; ``random_row`` the row of a random patch per image;
* ``row_select``, ``column_select``, ``incoming_2``, ``incoming_3``, ``outgoing_2``,
  ``outgoing_3``   1-3 incoming / outgoing bounces from option ``start`` (Sec. 4.1, 4.2).
"""
from __future__ import annotations

from typing import Callable

import torch

from .layout import TokenLayout
from .chain import DEFAULT_ALPHA, bounce, column_select, column_sum, row_select, tokenrank

Score = Callable[..., torch.Tensor]

#: Head weighting schemes of :func:`chains_lite.core.chain.mix` (Sec. 4.4), in the order tables list them.
HEAD_SCHEMES = ("uniform", "random", "lambda2")
#: The schemes that give the same mixture on every run (maps and segmentation offer these).
DETERMINISTIC_SCHEMES = tuple(s for s in HEAD_SCHEMES if s != "random")
#: Keyword options a score may read; each score ignores the ones it does not use.
OPTIONS = ("alpha", "start", "steps")


def _tokenrank(A, layout: TokenLayout, generator=None, *, alpha: float = DEFAULT_ALPHA, **_):
    """``(..., n)``: TokenRank, the steady state of the chain teleported with weight ``alpha``."""
    return tokenrank(A, alpha=alpha)


def _column_sum(A, layout: TokenLayout, generator=None, **_):
    """``(..., n)``: the column means of ``A``, what the uniform start flows into in one step."""
    return column_sum(A)


def _center_row(A, layout: TokenLayout, generator=None, **_):
    """``(..., n)``: the row of the centre patch, what it attends to."""
    return row_select(A, layout.center_token)


def _cls_row(A, layout: TokenLayout, generator=None, **_):
    """``(..., n)``: the row of the CLS token, what the classifier token attends to."""
    if layout.cls_index is None:
        raise ValueError("cls_row needs a model with a CLS token")
    return row_select(A, layout.cls_index)


def _center_column(A, layout: TokenLayout, generator=None, **_):
    """``(..., n)``: the centre patch's column normalised to sum 1, who attends to it."""
    return column_select(A, layout.center_token)


def _bounce_center(A, layout: TokenLayout, generator=None, *, steps: int = 2, **_):
    """``(..., n)``: ``steps`` incoming bounces from the centre patch (multi-bounce)."""
    return bounce(A, layout.center_token, steps, "incoming")


def _random(A, layout: TokenLayout, generator=None, **_):
    """``(..., n)``: uniform random scores from ``generator`` (drawn on the CPU)."""
    return torch.rand(A.shape[:-1], generator=generator).to(A.device)


def _random_row(A, layout: TokenLayout, generator=None, **_):
    """``(..., n)``: the row of one random patch per image (first dim of ``A``; one patch for a
    single chain ``(n, n)``), the same patch for the image's other batch dims (heads)."""
    one_chain = A.ndim == 2
    images = 1 if one_chain else A.shape[0]
    idx = layout.patch_start + torch.randint(layout.n_patches, (images,), generator=generator)
    # one-hot starts (images, 1, ..., n): broadcast over the other batch dims
    start = torch.nn.functional.one_hot(idx, A.shape[-1]).to(A.device)
    start = start[0] if one_chain else start.reshape(images, *[1] * (A.ndim - 3), -1)
    return bounce(A, start, 1, "incoming")


def _bounces(direction: str, steps: int) -> Score:
    """The score of ``steps`` bounces in ``direction`` from the option ``start``."""
    def score(A, layout: TokenLayout, generator=None, *, start=None, **_):
        if start is None:
            raise ValueError(f"{direction} bounces need a start: an int or an (..., n) distribution")
        return bounce(A, start, steps, direction)
    score.__doc__ = (f"``(..., n)``: {steps} {direction} bounce(s) from ``start`` (a token index "
                     "or a distribution ``(..., n)``).")
    return score


#: name -> score function; the one list of per-token methods.
SCORES: dict[str, Score] = {
    "tokenrank": _tokenrank,
    "column_sum": _column_sum,
    "center_row": _center_row,
    "cls_row": _cls_row,
    "center_column": _center_column,
    "bounce_center": _bounce_center,
    "random": _random,
    "random_row": _random_row,
    "row_select": _bounces("incoming", 1),
    "column_select": _bounces("outgoing", 1),
    "incoming_2": _bounces("incoming", 2),
    "incoming_3": _bounces("incoming", 3),
    "outgoing_2": _bounces("outgoing", 2),
    "outgoing_3": _bounces("outgoing", 3),
}
NAMES = tuple(SCORES)


def select(*names: str) -> tuple[str, ...]:
    """The given registry names as a tuple, in the given order; ``ValueError`` for any other."""
    for name in names:
        _lookup(name)
    return names


def _lookup(name: str) -> Score:
    if name not in SCORES:
        raise ValueError(f"unknown method {name!r}; expected one of {NAMES}")
    return SCORES[name]


def token_scores(A, name: str, layout: TokenLayout, generator: torch.Generator | None = None,
                 **options) -> torch.Tensor:
    """Score every token of the chain ``A`` ``(..., n, n)`` by method ``name``: ``(..., n)``.

    options: ``alpha`` (TokenRank's teleport weight), ``start`` (the start of ``row_select``,
    ``column_select``, ``incoming_*``, ``outgoing_*``: a token index or a distribution ``(..., n)``),
    ``steps`` (``bounce_center``'s number of bounces). ``generator`` feeds the random methods.
    """
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; scores take {OPTIONS}")
    return _lookup(name)(A, layout, generator, **options)
