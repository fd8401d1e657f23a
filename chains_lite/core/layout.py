"""Where each kind of token sits in a model's sequence, and chains with tokens removed.

A :class:`TokenLayout` says which index holds the CLS token, which hold register tokens and where
the patch grid starts; methods use it to read a per-token score as an image
(``layout.to_grid(v)``). :func:`chain_without` removes the CLS (or CLS and register) tokens as
states of the chain, exactly as if the softmax had run over the other keys only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .lazy import LazyAttention


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in a model's sequence.

    Tokens run ``[prefix tokens..., patch tokens (row-major h x w grid)..., trailing tokens]``.
    ``cls_index``: the CLS token (``None`` if the model has none). ``register_indices``: register
    tokens (DINOv2 with registers). ``grid``: the patch grid ``(h, w)`` (``None`` for text).
    ``patch_start``: index of the first patch token.
    """

    cls_index: int | None = None
    register_indices: tuple[int, ...] = ()
    grid: tuple[int, int] | None = None
    patch_start: int = 0

    @property
    def special_indices(self) -> tuple[int, ...]:
        """CLS and register tokens, sorted."""
        cls = () if self.cls_index is None else (self.cls_index,)
        return tuple(sorted(cls + self.register_indices))

    @property
    def n_patches(self) -> int:
        if self.grid is None:
            raise ValueError("this layout has no patch grid (a text model?)")
        return self.grid[0] * self.grid[1]

    @property
    def center_token(self) -> int:
        """Index of the patch token at the grid's center (row ``h // 2``, column ``w // 2``)."""
        self.n_patches  # raises for a layout without a grid
        h, w = self.grid
        return self.patch_start + (h // 2) * w + w // 2

    @property
    def patch_slice(self) -> slice:
        return slice(self.patch_start, self.patch_start + self.n_patches)

    def patches(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` values per token -> ``(..., h*w)`` values of the patch tokens."""
        self._check_tokens(v, "v")
        return v[..., self.patch_slice]

    def to_grid(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` values per token (or ``(..., h*w)`` per patch) -> ``(..., h, w)`` image."""
        if v.shape[-1] != self.n_patches:
            v = self.patches(v)
        return v.reshape(*v.shape[:-1], *self.grid)

    def patch_attention(self, A: torch.Tensor, renormalize: bool = True) -> torch.Tensor:
        """``(..., n, n)`` attention -> ``(..., h*w, h*w)`` among patch tokens only.

        The rows of the kept block sum to less than 1 (the mass that went to special tokens);
        ``renormalize=True`` rescales them to sum to 1 so the result is again a Markov chain.
        """
        self._check_tokens(A, "A")
        s = self.patch_slice
        B = A[..., s, s]
        if renormalize:
            B = B / B.sum(-1, keepdim=True).clamp_min(torch.finfo(B.dtype).tiny)
        return B

    def _check_tokens(self, v: torch.Tensor, name: str) -> None:
        if v.shape[-1] < self.patch_start + self.n_patches:
            raise ValueError(f"{name} has {v.shape[-1]} tokens on its last dim, but this layout "
                             f"needs {self.patch_start + self.n_patches} ({self})")


def drop_special(v: torch.Tensor, layout: TokenLayout, renormalize: bool = True) -> torch.Tensor:
    """Remove CLS / register tokens from ``(..., n)`` vectors, optionally rescaled to sum to 1."""
    keep = [i for i in range(v.shape[-1]) if i not in set(layout.special_indices)]
    out = v[..., keep]
    return out / out.sum(-1, keepdim=True) if renormalize else out


DROPPABLE = ("cls", "special")


def chain_without(A, layout: TokenLayout, tokens: str = "cls"):
    """The attention chain with the CLS token (``tokens="cls"``) or the CLS and register tokens
    (``"special"``) removed as states, as if the softmax had run over the other keys only.

    A: ``(..., n, n)`` attention probabilities, or a :class:`~chains_lite.core.lazy.LazyAttention`
    (``store="qk"``). Returns ``(chain, layout)``: the chain on the kept tokens and their layout.
    Removing state ``c`` from softmax rows and renormalising is exact, not an approximation:
    ``softmax(z)_j / sum_{k != c} softmax(z)_k = exp(z_j) / sum_{k != c} exp(z_k)``. A dense
    ``A`` is renormalised that way (its CLS row is dropped too); a lazy chain is rebuilt from the
    kept tokens' queries and keys, the softmax of their logits. The authors' demo notebook
    computes ``softmax(logits[..., 1:, 1:])``: the CLS token dropped, registers kept.
    """
    if tokens not in DROPPABLE:
        raise ValueError(f"tokens must be one of {DROPPABLE}, got {tokens!r}")
    drop = ((layout.cls_index,) if layout.cls_index is not None else ()) if tokens == "cls" \
        else layout.special_indices
    if not drop:
        raise ValueError(f"this layout has no {'CLS' if tokens == 'cls' else 'CLS or register'} token to drop")
    layout._check_tokens(A, "A")
    keep = [i for i in range(A.shape[-1]) if i not in drop]
    new = {i: j for j, i in enumerate(keep)}
    kept = TokenLayout(None if tokens == "special" or layout.cls_index in drop else new[layout.cls_index],
                       tuple(new[r] for r in layout.register_indices if r in new), layout.grid,
                       new[layout.patch_start])
    if isinstance(A, LazyAttention):
        mask = None if A.mask is None else A.mask[..., keep]
        return LazyAttention(A.q[..., keep, :], A.k[..., keep, :], A.scale, mask, A.max_bytes), kept
    if not torch.is_tensor(A):
        raise ValueError(f"A must be a tensor or a LazyAttention, got {type(A).__name__}")
    B = A[..., keep, :][..., keep]
    B = B.to(torch.promote_types(B.dtype, torch.float32))   # half precision renormalised in float32
    return B / B.sum(-1, keepdim=True).clamp_min(torch.finfo(B.dtype).tiny), kept
