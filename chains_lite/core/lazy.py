"""Matrix-free attention chains: ``softmax(q k^T * scale)`` from queries and keys.

A dense attention map is ``heads x n x n``: 2 GB in float32 for one FLUX block at 1024^2
(n = 4608, 24 heads). Every chain operation in ``chains_lite.core.chain`` touches the matrix only
through products ``V P`` with row vectors (a bounce), so the matrix never has to exist:

* ``LazyAttention(q, k)`` computes ``S = q k^T * scale`` tile by tile, exponentiates it and
  multiplies, like flash attention. The row normalisers (each row's max ``m`` and the
  float64 sum of ``exp(S - m)``) come from the first pass and are cached; the column sums that
  the outgoing chain needs from one more pass, cached too. One tile exists at a time.
* The memory budget ``max_bytes`` sizes the tiles: whole ``n x n`` matrices of a few heads
  when they fit (``chunked dense``), blocks of query rows otherwise, blocks of rows x keys
  when even a row block does not fit (then the normalisers take two extra passes). A budget
  so small that a pass would take more than ``MAX_TILES`` tiles (and tiles under 64 KiB) is
  raised with a warning: such passes spend their time in per-tile overhead.
* Iterative solvers (``tokenrank``, ``lambda2``) would recompute every tile at every bounce.
  When the dense matrices of a chunk of heads fit the budget (three times over), they
  are solved chunk by chunk on dense matrices instead (``pieces``): dense speed, the memory
  of one chunk. Only chains too large for that run matrix-free.
* ``mix_heads(lazy, w)`` returns a ``LazyMixture``: its products are weighted sums of the
  heads' products, so head / layer / step averages never form the mixed matrix either.

The chain functions accept these objects wherever they accept ``A``: both implement
``chains_lite.core.numerics.LazyChain`` (``shape``, ``dtype``, ``device``; ``products(float64)`` ->
``(V -> V P, V -> V P^T, column sums)`` of the row-normalised ``P``; ``row(i)``;
``pieces(copies)``; ``mix(w, dim)``; ``reshape``, ``expand`` and indexing of the batch dims;
``dense()``), and ``chain._stepper`` asks them for products.

("Lazy" as in lazy evaluation: the paper's lazy chain ``0.5 (I + A)``, Sec. 4.1, is another thing.)
"""
from __future__ import annotations

import math
import warnings

import torch

from .numerics import check_index, matmul_rows, rowsum_float64, work_dtype

#: Default memory budget for the tiles and dense chunks of one lazy chain: 256 MiB.
DEFAULT_MAX_BYTES = 256 * 2**20

#: A smaller budget is raised so that one pass over the chains takes at most this many tiles,
#: unless the tiles would exceed ``MAX_FLOOR_BYTES``: each tile costs ~30 us of overhead, so a
#: budget of a few bytes (one logit per tile) would spend minutes where the default spends a second.
MAX_TILES = 512
MAX_FLOOR_BYTES = 64 * 2**10


def budget_floor(batch: int, n: int, dtype: torch.dtype) -> int:
    """The smallest ``max_bytes`` honoured for ``batch`` chains of size ``n`` (see ``MAX_TILES``)."""
    whole = batch * n * n * (dtype.itemsize + 8)  # every tile of a pass, with its temporaries
    return min(MAX_FLOOR_BYTES, -(-whole // MAX_TILES))


def _all_finite(t: torch.Tensor, chunk: int = 2**20) -> bool:
    """``torch.isfinite(t).all()`` a chunk at a time: on the whole tensor its temporaries cost
    more than ``t`` itself (at n = 16384, 24 heads, d = 128: 200 MB beyond the budget)."""
    n = t.shape[-2]
    rows = max(1, chunk * n // max(1, t.numel()))   # slices along n: views, whatever the strides
    return all(bool(torch.isfinite(t[..., i:i + rows, :]).all()) for i in range(0, n, rows))


def _check_row_maxima(m: torch.Tensor) -> None:
    """Each row's largest logit must be finite: from finite q and k, +inf or NaN there means
    ``q k^T * scale`` overflowed the working dtype (and -inf that every logit of the row did),
    which would turn the whole row into NaN. One check of ``(..., n)`` maxima per pass."""
    if not torch.isfinite(m).all():
        dtype = str(m.dtype).removeprefix("torch.")
        raise ValueError(f"the attention logits q k^T * scale are not finite in some rows: they overflow "
                         f"{dtype} (|logit| > {torch.finfo(m.dtype).max:.3g}), so the softmax would be "
                         "NaN. q and k are finite but too large for this scale: rescale q, k or scale, "
                         "or pass float64 q and k")


def _row_blocks_matmul_t(V: torch.Tensor, T: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``V @ T^T`` ``(h, k, c) @ (h, c, r)`` in ``V``'s dtype, a block of ``T``'s rows at a time
    (as ``matmul_rows``: a whole tile would be packed or converted in one more tile of memory)."""
    return torch.cat([matmul_rows(V, T[..., i:i + block, :].mT, block)
                      for i in range(0, T.shape[-2], block)], dim=-1)


class _LazyChain:
    """What ``LazyAttention`` and ``LazyMixture`` share: shape, batch ops, products, pieces."""

    batch: torch.Size
    n: int
    dtype: torch.dtype
    device: torch.device
    max_bytes: int

    # ------------------------------------------------------------------ tensor-like surface
    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.batch, self.n, self.n))

    @property
    def ndim(self) -> int:
        return len(self.batch) + 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype})"

    def _batch_shape(self, shape) -> tuple:
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
        if len(shape) < 2 or tuple(shape[-2:]) != (self.n, self.n):
            raise ValueError(f"a lazy chain keeps its last two dims ({self.n}, {self.n}); "
                             f"got {tuple(shape)}")
        return tuple(shape[:-2])

    def reshape(self, *shape):
        """The same chains with the batch dims reshaped (``shape`` ends with ``n, n``)."""
        batch = self._batch_shape(shape)
        return self._apply(lambda t, tail: t.reshape(*batch, *t.shape[t.ndim - tail:]))

    def expand(self, *shape):
        """The chains broadcast to the batch dims of ``shape`` (``shape`` ends with ``n, n``)."""
        batch = self._batch_shape(shape)
        return self._apply(lambda t, tail: t.expand(*batch, *t.shape[t.ndim - tail:]))

    def __getitem__(self, idx):
        """Chains selected along the first batch dim (an int, slice, or index / bool tensor)."""
        if not self.batch:
            raise ValueError("a lazy chain without batch dims cannot be indexed")
        return self._apply(lambda t, tail: t[idx])

    def _movedim_last(self, d: int):
        """The batch dim ``d`` moved to the last batch position."""
        nb = len(self.batch)
        return self._apply(lambda t, tail: t.movedim(d, t.ndim - tail - 1) if d < nb - 1 else t)

    def dense(self) -> torch.Tensor:
        """The full matrices ``(..., n, n)`` in the working dtype (for small ``n``)."""
        B = math.prod(self.batch)
        return self._dense(torch.arange(B, device=self.device)).reshape(self.shape)

    # ------------------------------------------------------------------ the chain seam
    def products(self, float64: bool = False):
        """``(V -> V P, V -> V P^T, cols)`` for the row-normalised ``P`` of each chain.

        V: row vectors ``(..., k, n)`` whose batch dims broadcast against the chains';
        returns ``(..., k, n)`` in the working dtype (float64 with ``float64``, accumulated
        in float64). ``cols()``: the column sums of ``P``, ``(..., 1, n)``.
        """
        dtype = torch.float64 if float64 else self.dtype
        return (lambda V: self._broadcast(V, dtype, transpose=False),
                lambda V: self._broadcast(V, dtype, transpose=True),
                lambda: self.colsums().to(dtype).unsqueeze(-2))

    def _broadcast(self, V: torch.Tensor, dtype, transpose: bool) -> torch.Tensor:
        k, n = V.shape[-2:]
        batch = torch.broadcast_shapes(V.shape[:-2], self.batch)
        extra = len(batch) - len(self.batch)
        if batch[extra:] != self.batch:  # V's batch is wider than the chains': copy them
            return self.expand(*batch, n, n)._broadcast(V, dtype, transpose)
        # V's extra leading dims become more vectors per chain: still one pass
        E, B = math.prod(batch[:extra]), math.prod(self.batch)
        V = V.to(dtype).expand(*batch, k, n).reshape(E, B, k, n).transpose(0, 1)
        V = V.reshape(B, E * k, n)
        out = self._times_t(V) if transpose else self._times(V)
        return out.reshape(B, E, k, n).transpose(0, 1).reshape(*batch, k, n)

    def colsums(self) -> torch.Tensor:
        """Column sums ``(..., n)`` (float64) of the row-normalised matrices; one pass, cached."""
        if self._cols is None:
            ones = torch.ones(math.prod(self.batch), 1, self.n, dtype=torch.float64,
                              device=self.device)
            self._cols = self._times(ones)[:, 0].reshape(*self.batch, self.n)
        return self._cols

    def chunk_size(self, copies: int = 3) -> int:
        """How many chains' dense matrices fit ``max_bytes`` with ``copies`` copies of each."""
        return self.max_bytes // (copies * self._dense_bytes())

    def pieces(self, copies: int = 3, dense: bool = False):
        """``(slice, chains)`` over the ``B`` chains of a flat ``(B, n, n)`` lazy chain.

        Dense chunks of ``chunk_size(copies)`` chains (a solver may copy what it is given);
        a single matrix-free piece if not even one fits, or a ``ValueError`` if ``dense``
        (the caller needs the entries).
        """
        B = math.prod(self.batch)
        chunk = min(B, self.chunk_size(copies))
        if chunk < 1:
            if dense:
                need = copies * self._dense_bytes() / 2**20
                raise ValueError(f"this needs dense {self.n} x {self.n} matrices ({need:.3g} MiB "
                                 f"per chain with working copies) but max_bytes is "
                                 f"{self.max_bytes / 2**20:.3g} MiB; raise max_bytes or use "
                                 "method='krylov'")
            yield slice(None), self
            return
        for b in range(0, B, chunk):
            idx = torch.arange(b, min(b + chunk, B), device=self.device)
            yield slice(b, b + chunk), self._dense(idx)

    def mix(self, weights: torch.Tensor, dim: int) -> "LazyMixture":
        """``sum_h w_h P_h`` over the batch dim ``dim`` (``weights``: ``self.shape[:-2]``)."""
        base = self._movedim_last(dim)
        return LazyMixture(base, weights.movedim(dim, -1))


class LazyAttention(_LazyChain):
    """``softmax(q k^T * scale)`` over the keys, never stored: a matrix-free attention chain.

    q, k: ``(..., n, d)`` (heads are batch dims, e.g. ``(batch, heads, n, d)``); their batch
    dims broadcast. ``scale``: default ``1 / sqrt(d)``. ``mask``: boolean key mask
    ``(..., n)`` broadcastable to the batch, ``True`` = the key takes part (as in
    ``scaled_dot_product_attention``); masked keys get logit ``-inf``, so nobody attends to
    them (a dangling state of the outgoing chain). ``max_bytes``: memory budget for tiles and
    dense chunks (``DEFAULT_MAX_BYTES``, 256 MiB); q and k themselves are not counted. A budget
    below ``budget_floor`` (at most 64 KiB) is raised to it with a warning.
    Computes in float32 (float64 for float64 q, k); bf16 / fp16 inputs are upcast.

    Shape ``(..., n, n)``; pass it to ``bounce``, ``tokenrank``, ``lambda2`` ... as ``A``.
    Raises ``ValueError`` on mismatched shapes, NaN / inf, a bad mask or a row with every
    key masked.
    """

    def __init__(self, q, k, scale: float | None = None, mask=None,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        q, k = torch.as_tensor(q), torch.as_tensor(k)
        if q.ndim < 2 or k.ndim < 2:
            raise ValueError(f"q and k must have shape (..., n, d), got {tuple(q.shape)} and "
                             f"{tuple(k.shape)}")
        if q.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"q and k must have the same (n, d) for a square chain, got "
                             f"{tuple(q.shape)} and {tuple(k.shape)}")
        n, d = q.shape[-2:]
        if n == 0 or d == 0:
            raise ValueError(f"q and k are empty: shape {tuple(q.shape)}")
        if not (q.is_floating_point() and k.is_floating_point()):
            raise ValueError(f"q and k must be real floating point, got {q.dtype} and {k.dtype}")
        try:
            batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        except RuntimeError:
            raise ValueError(f"batch dims of q {tuple(q.shape)} and k {tuple(k.shape)} do not "
                             "broadcast") from None
        if not (_all_finite(q) and _all_finite(k)):
            raise ValueError("q or k contains NaN or inf")
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {scale}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        dtype = work_dtype(torch.promote_types(q.dtype, k.dtype))
        q, k = q.to(dtype).expand(*batch, n, d), k.to(dtype).expand(*batch, n, d)  # no copies
        if mask is not None:
            mask = self._check_mask(mask, batch, n, q.device)
        floor = budget_floor(math.prod(batch), n, dtype)
        if max_bytes < floor:
            warnings.warn(f"max_bytes={max_bytes} is raised to {floor}: with tiles that small a pass over "
                          f"these chains would take more than {MAX_TILES} tiles and its time would go "
                          "to per-tile overhead", RuntimeWarning, stacklevel=2)
            max_bytes = floor
        self._set(q, k, scale, mask, max_bytes)

    @staticmethod
    def _check_mask(mask, batch, n, device) -> torch.Tensor | None:
        mask = torch.as_tensor(mask, device=device)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = attend), got {mask.dtype}")
        if mask.ndim == 0 or mask.shape[-1] != n:
            raise ValueError(f"mask must have shape (..., {n}), got {tuple(mask.shape)}")
        try:
            mask = mask.expand(*batch, n)
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the "
                             f"batch {tuple(batch)} + ({n},)") from None
        if not mask.any(-1).all():
            raise ValueError("mask hides every key of some chain; each query needs a key")
        return None if mask.all() else mask

    def _set(self, q, k, scale, mask, max_bytes, m=None, rows=None, cols=None):
        self.q, self.k, self.scale, self.mask, self.max_bytes = q, k, scale, mask, max_bytes
        self.batch, self.n = q.shape[:-2], q.shape[-2]
        self.dtype, self.device = q.dtype, q.device
        self._m, self._rows, self._cols = m, rows, cols  # cached normalisers, column sums
        return self

    def _apply(self, f, keep: int = 0):
        """The same object with ``f(tensor, trailing dims to keep)`` applied to the batch dims."""
        opt = lambda t, tail: None if t is None else f(t, tail + keep)
        return LazyAttention.__new__(LazyAttention)._set(
            f(self.q, 2 + keep), f(self.k, 2 + keep), self.scale, opt(self.mask, 1), self.max_bytes,
            opt(self._m, 1), opt(self._rows, 1), opt(self._cols, 1))

    def _dense_bytes(self) -> int:
        return self.n * self.n * self.dtype.itemsize

    # ------------------------------------------------------------------ tiles
    def _flat(self):
        n, d = self.q.shape[-2:]
        mask = None if self.mask is None else self.mask.reshape(-1, n)
        return self.q.reshape(-1, n, d), self.k.reshape(-1, n, d), mask

    def _plan(self):
        """``(heads per tile, query rows, keys)`` so that a tile fits ``max_bytes``."""
        n, B = self.n, math.prod(self.batch)
        # bytes per tile entry: the tile (4 in float32) and 8 of headroom for the temporaries
        # (float64 row sums and products go a block of rows at a time, so they stay small)
        entries = max(1, self.max_bytes // (self.dtype.itemsize + 8))
        if n * n <= entries:  # chunked dense: whole matrices of a few heads
            return min(B, entries // (n * n)), n, n
        if n <= entries:  # blocks of query rows against every key
            return 1, min(n, entries // n), n
        return 1, 1, entries  # blocks of keys too (normalisers then take two passes)

    def _logits(self, q, k, mask, b, i, j):
        # (heads, rows, keys); the scale inside the GEMM (beta=0 ignores the input)
        S = torch.baddbmm(q.new_zeros(1, 1, 1), q[b, i], k[b, j].mT, beta=0, alpha=self.scale)
        if mask is not None:
            S.masked_fill_(~mask[b, None, j], float("-inf"))
        return S

    def _each_tile(self, fn):
        """Call ``fn(b, i, j, T, r)`` on every tile: ``T = exp(S - m)`` on heads ``b``, rows
        ``i``, keys ``j`` and the float64 row sums ``r`` ``(heads, rows)`` of the whole rows ``i``.

        With whole rows in a tile the normalisers are computed on the way (and cached after a
        complete pass); otherwise ``_normalise`` takes two passes first. One tile exists at a
        time (a callback, not a generator: the caller holds no tile while the next is made).
        """
        hc, bq, bk = self._plan()
        q, k, mask = self._flat()
        B, n = q.shape[0], self.n
        if self._m is None and bk < n:
            self._normalise()
        fresh = self._m is None
        if fresh:
            m = q.new_empty(B, n)
            rows = torch.empty(B, n, dtype=torch.float64, device=self.device)
        else:
            m, rows = self._m.reshape(B, n), self._rows.reshape(B, n)
        for b0 in range(0, B, hc):
            b = slice(b0, b0 + hc)
            for i0 in range(0, n, bq):
                i = slice(i0, i0 + bq)
                for j0 in range(0, n, bk):
                    j = slice(j0, j0 + bk)
                    T = self._logits(q, k, mask, b, i, j)
                    if fresh:
                        m[b, i] = T.amax(-1)
                    T.sub_(m[b, i].unsqueeze(-1)).exp_()
                    if fresh:
                        rows[b, i] = rowsum_float64(T)
                    fn(b, i, j, T, rows[b, i])
                    del T
        if fresh:
            _check_row_maxima(m)
            self._m, self._rows = m.reshape(*self.batch, n), rows.reshape(*self.batch, n)

    def _normalise(self):
        """Row maxima, then float64 sums of ``exp(S - max)``, when tiles split the keys."""
        hc, bq, bk = self._plan()
        q, k, mask = self._flat()
        B, n = q.shape[0], self.n
        m = q.new_full((B, n), float("-inf"))
        rows = torch.zeros(B, n, dtype=torch.float64, device=self.device)
        blocks = [(slice(b, b + hc), slice(i, i + bq), slice(j, j + bk))
                  for b in range(0, B, hc) for i in range(0, n, bq) for j in range(0, n, bk)]
        for b, i, j in blocks:
            m[b, i] = torch.maximum(m[b, i], self._logits(q, k, mask, b, i, j).amax(-1))
        _check_row_maxima(m)
        for b, i, j in blocks:
            T = self._logits(q, k, mask, b, i, j).sub_(m[b, i].unsqueeze(-1)).exp_()
            rows[b, i] += rowsum_float64(T)
        self._m, self._rows = m.reshape(*self.batch, n), rows.reshape(*self.batch, n)

    # ------------------------------------------------------------------ products
    def _times(self, V: torch.Tensor) -> torch.Tensor:
        """``V P`` for flat ``V`` ``(B, k, n)``: ``out[:, :, j] += (V[:, :, i] / r_i) T_ij``."""
        out = torch.zeros_like(V)

        def add(b, i, j, T, r):
            out[b, :, j] += matmul_rows(V[b, :, i] / r.unsqueeze(-2).to(V.dtype), T)
        self._each_tile(add)
        return out

    def _times_t(self, V: torch.Tensor) -> torch.Tensor:
        """``V P^T`` for flat ``V`` ``(B, k, n)``: ``out[:, :, i] += V[:, :, j] T_ij^T``, then ``/ r``."""
        out = torch.zeros_like(V)

        def add(b, i, j, T, r):
            out[b, :, i] += _row_blocks_matmul_t(V[b, :, j], T)
        self._each_tile(add)
        rows = self._rows.reshape(-1, 1, self.n).to(V.dtype)
        return out / rows

    def row(self, i: int) -> torch.Tensor:
        """Row ``i`` of every chain, ``(..., n)``: the attention query ``i`` gives."""
        i = check_index(i, self.n)
        S = (self.q[..., i, None, :] @ self.k.mT).squeeze(-2) * self.scale  # (..., n)
        if self.mask is not None:
            S = S.masked_fill(~self.mask, float("-inf"))
        _check_row_maxima(S.amax(-1))
        return torch.softmax(S, -1)

    def _dense(self, idx: torch.Tensor) -> torch.Tensor:
        """The softmax matrices ``(len(idx), n, n)`` of the flat chains ``idx``, built in place."""
        q, k, mask = self._flat()
        S = torch.baddbmm(q.new_zeros(1, 1, 1), q[idx], k[idx].mT, beta=0, alpha=self.scale)
        if mask is not None:
            S.masked_fill_(~mask[idx, None, :], float("-inf"))
        m = S.amax(-1, keepdim=True)
        _check_row_maxima(m)
        S.sub_(m).exp_()
        return S.div_(S.sum(-1, keepdim=True))


class LazyMixture(_LazyChain):
    """``sum_h w_h P_h`` over the last batch dim of a lazy chain, never formed (Sec. 4.4).

    base: a lazy chain ``(..., h, n, n)`` (``LazyAttention`` or another mixture, for layer /
    step averages); weights: ``(..., h)``, non-negative (renormalised to sum 1 over h).
    Shape ``(..., n, n)``. Products are the weighted sums of the heads' products, so
    ``V M = sum_h w_h V P_h`` costs one pass over the heads. Made by ``mix_heads``.
    """

    def __init__(self, base: _LazyChain, weights: torch.Tensor):
        w = torch.as_tensor(weights, device=base.device).to(base.dtype)
        if w.shape != base.batch:
            raise ValueError(f"weights must have the base batch shape {tuple(base.batch)}, "
                             f"got {tuple(w.shape)}")
        self.base, self.w = base, w / w.sum(-1, keepdim=True)
        self.batch, self.n = base.batch[:-1], base.n
        self.dtype, self.device, self.max_bytes = base.dtype, base.device, base.max_bytes
        self._cols = None

    def _apply(self, f, keep: int = 0):
        return LazyMixture(self.base._apply(f, keep + 1), f(self.w, keep + 1))

    def _dense_bytes(self) -> int:  # the sum, and one head at a time
        return self.n * self.n * self.dtype.itemsize + self.base._dense_bytes()

    def _heads(self, V: torch.Tensor, times) -> torch.Tensor:
        h = self.w.shape[-1]
        B, k, n = V.shape
        out = times(V.unsqueeze(1).expand(B, h, k, n).reshape(B * h, k, n))
        w = self.w.reshape(B, h, 1, 1).to(V.dtype)
        return (out.reshape(B, h, k, n) * w).sum(1)

    def _times(self, V):
        return self._heads(V, self.base._times)

    def _times_t(self, V):
        return self._heads(V, self.base._times_t)

    def row(self, i: int) -> torch.Tensor:
        return (self.base.row(i) * self.w.unsqueeze(-1)).sum(-2)

    def _dense(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.w.shape[-1]
        w = self.w.reshape(-1, h)[idx]
        out = torch.zeros(len(idx), self.n, self.n, dtype=self.dtype, device=self.device)
        for j in range(h):  # one head at a time: the memory of two matrices per chain
            out.add_(self.base._dense(idx * h + j).mul_(w[:, j, None, None]))
        return out
