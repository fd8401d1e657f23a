"""Numerics the chain modules share, and the interface of a matrix-free chain.

* ``work_dtype``        the dtype policy: float64 stays float64, everything else computes in float32
* ``check_index``, ``check_distribution``, ``start_vector``   validated token indices and start vectors
* ``rowsum_float64``    row sums accumulated in float64, a block of rows at a time
* ``matmul_rows``, ``matmul_float64``   ``V @ A`` reading ``A`` a block of rows at a time
* ``LazyChain``         what a matrix-free chain provides (``chains_lite.core.lazy``), and ``is_lazy``
* ``one_thread``        a context in which torch computes on one CPU thread
* ``batched_solve``     ``torch.linalg.solve_ex`` over a batch, on one CPU thread

``chains_lite.core.chain`` computes on dense tensors and on any ``LazyChain``; ``chains_lite.core.lazy``
implements the interface with these same numerics.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Protocol, Union, runtime_checkable

import torch

Start = Union[torch.Tensor, int, str]

#: Rows converted (or multiplied) per block: a block stays in cache, a whole matrix would not.
ROW_BLOCK = 128


# --------------------------------------------------------------------------- the lazy-chain interface
@runtime_checkable
class LazyChain(Protocol):
    """A chain ``(..., n, n)`` known through products with row vectors, never by its entries.

    These are the members ``chains_lite.core.chain`` calls. ``chains_lite.LazyAttention`` and
    ``LazyMixture`` implement it; every function of ``chains_lite.core.chain`` accepts one wherever
    it accepts a dense ``A``.
    """

    shape: torch.Size
    ndim: int
    dtype: torch.dtype
    device: torch.device

    def products(self, float64: bool = False) -> tuple[Callable, Callable, Callable]:
        """``(V -> V P, V -> V P^T, () -> column sums (..., 1, n))`` of the row-normalised ``P``;
        ``V``: ``(..., k, n)``."""

    def row(self, i: int) -> torch.Tensor:
        """Row ``i`` of every chain, ``(..., n)``."""

    def chunk_size(self, copies: int = 3) -> int:
        """How many chains' dense matrices fit the memory budget ``copies`` times over."""

    def pieces(self, copies: int = 3, dense: bool = False):
        """``(slice, chains)`` over the chains of a flat ``(B, n, n)`` chain: dense chunks or itself."""

    def mix(self, weights: torch.Tensor, dim: int) -> "LazyChain":
        """``sum_h w_h P_h`` over the batch dim ``dim`` (``weights``: ``shape[:-2]``)."""

    def reshape(self, *shape) -> "LazyChain":
        """The chains with the batch dims reshaped (``shape`` ends with ``n, n``)."""

    def expand(self, *shape) -> "LazyChain":
        """The chains broadcast to the batch dims of ``shape``."""

    def __getitem__(self, idx) -> "LazyChain":
        """Chains selected along the first batch dim."""


_LAZY_MEMBERS = ("shape", "ndim", "dtype", "device", "products", "row", "chunk_size", "pieces", "mix",
                 "reshape", "expand", "__getitem__")


def is_lazy(A: Any) -> bool:
    """Whether ``A`` is a matrix-free chain (a ``LazyChain``; a tensor never is)."""
    return not isinstance(A, torch.Tensor) and isinstance(A, LazyChain)


def missing_members(obj: Any) -> list[str]:
    """The ``LazyChain`` members that ``obj`` lacks (empty for a conforming object)."""
    return [m for m in _LAZY_MEMBERS if not hasattr(obj, m)]


def not_a_chain(obj: Any, name: str = "A") -> TypeError:
    """The error for an object that is neither array-like nor a ``LazyChain``."""
    return TypeError(f"{name} must be a tensor (or array-like) of shape (..., n, n) or a lazy chain "
                     f"(chains_lite.core.numerics.LazyChain); {type(obj).__name__} lacks "
                     + ", ".join(missing_members(obj)))


# --------------------------------------------------------------------------- dtype and checks
def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype computations run in: float64 for float64 input, float32 for any other."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_index(i, n: int, what: str = "token index") -> int:
    """``i`` (an int or an integer 0-d tensor, negative counts from the end) as an int in ``[0, n)``."""
    if isinstance(i, torch.Tensor) and i.ndim == 0 and not i.is_floating_point():
        i = int(i)
    if isinstance(i, bool) or not isinstance(i, int):
        raise ValueError(f"{what} must be an int, got {type(i).__name__}")
    if not -n <= i < n:
        raise ValueError(f"{what} {i} is out of range for n = {n}")
    return i % n


def check_distribution(v, n: int, like, name: str) -> torch.Tensor:
    """A non-negative vector ``(..., n)``, normalised to sum 1 along the last dim, in ``like``'s
    dtype and device."""
    v = torch.as_tensor(v, device=like.device)
    if v.ndim == 0 or v.shape[-1] != n:
        raise ValueError(f"{name} must have shape (..., {n}), got {tuple(v.shape)}")
    v = v.to(like.dtype)
    total = v.sum(-1, keepdim=True)
    if not torch.isfinite(total).all():
        raise ValueError(f"{name} contains NaN or inf")
    if v.amin() < 0:
        raise ValueError(f"{name} has negative entries")
    if (total <= 0).any():
        raise ValueError(f"{name} sums to 0; it must hold some probability mass")
    return v / total


def uniform(A) -> torch.Tensor:
    """The uniform distribution ``(n,)`` over the states of ``A`` ``(..., n, n)``."""
    n = A.shape[-1]
    return torch.full((n,), 1.0 / n, dtype=A.dtype, device=A.device)


def start_vector(v0: Start, A) -> torch.Tensor:
    """The start distribution of a bounce on ``A`` ``(..., n, n)`` (a tensor or a ``LazyChain``).

    v0: ``"uniform"``, an int (one-hot at that token) or a non-negative tensor ``(..., n)``
    (normalised here). Returns ``(n,)`` or ``(..., n)`` in ``A``'s dtype.
    """
    n = A.shape[-1]
    if isinstance(v0, str):
        if v0 != "uniform":
            raise ValueError(f"unknown start {v0!r}; use 'uniform', an int or a tensor")
        return uniform(A)
    if isinstance(v0, torch.Tensor) and v0.ndim > 0 or not isinstance(v0, (int, torch.Tensor)):
        return check_distribution(v0, n, A, "v0")
    i = check_index(v0, n)
    v = torch.zeros(n, dtype=A.dtype, device=A.device)
    v[i] = 1.0
    return v


# --------------------------------------------------------------------------- blocked products
def rowsum_float64(A: torch.Tensor) -> torch.Tensor:
    """Row sums ``(..., n)`` of a dense ``A`` ``(..., m, n)`` accumulated in float64
    (``A.sum(dtype=float64)`` is 25x slower)."""
    if A.dtype == torch.float64:
        return A.sum(-1)
    # Contiguous row blocks: converting a few rows at a time stays in cache. One reused float64
    # buffer and sums written in place: a fresh block per step, with small results allocated
    # between them, fragments the heap (a 4608 x 4608 tile left 160 MB behind).
    block = ROW_BLOCK
    out = torch.empty(A.shape[:-1], dtype=torch.float64, device=A.device)
    buf = torch.empty((*A.shape[:-2], min(block, A.shape[-2]), A.shape[-1]), dtype=torch.float64,
                      device=A.device)
    for i in range(0, A.shape[-2], block):
        rows = min(block, A.shape[-2] - i)
        part = buf[..., :rows, :]
        part.copy_(A[..., i:i + rows, :])
        torch.sum(part, -1, out=out[..., i:i + rows])
    return out


def matmul_rows(V: torch.Tensor, A: torch.Tensor, block: int = ROW_BLOCK) -> torch.Tensor:
    """``V @ A`` ``(..., k, m) @ (..., m, n)`` in ``V``'s dtype, reading ``A`` a block of rows at a time.

    Converting (or letting the BLAS pack) a whole large ``A`` costs a second copy of it; a block
    goes through one reused buffer instead (fresh blocks would fragment the heap, see
    ``rowsum_float64``).
    """
    rows_total = A.shape[-2]
    if rows_total <= block:
        return V @ A.to(V.dtype)
    buf = None if A.dtype == V.dtype else torch.empty(
        (*A.shape[:-2], block, A.shape[-1]), dtype=V.dtype, device=A.device)
    out = None
    for i in range(0, rows_total, block):
        rows = min(block, rows_total - i)
        part = A[..., i:i + rows, :]
        if buf is not None:
            part = buf[..., :rows, :].copy_(part)
        prod = V[..., i:i + rows] @ part
        out = prod if out is None else out.add_(prod)
    return out


def matmul_float64(V: torch.Tensor, A: torch.Tensor, block: int = ROW_BLOCK) -> torch.Tensor:
    """``V @ A`` in float64 (``A`` converted a block of rows at a time)."""
    return matmul_rows(V.double(), A, block)


# --------------------------------------------------------------------------- dense solves
@contextmanager
def one_thread():
    """Compute on one CPU thread inside the ``with`` block (the thread count is restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def batched_solve(M: torch.Tensor, b: torch.Tensor, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.solve_ex(M, b, left=left)`` for ``M`` ``(B, n, n)``: ``(x, info)``; ``x M = b``
    with ``b`` ``(B, k, n)`` when not ``left``, else ``M x = b`` with ``b`` ``(B, n, k)``.

    On the CPU the batch is factorised on one thread. With two or more threads, torch 2.14.1's
    batched LU (MKL 2024.2) fails for ``n`` above about 130 on the 2-core machine this project
    tests on: MKL prints "Parameter 6 was incorrect on entry to DLASWP" and the call hangs
    (``tests/test_numerics.py`` runs it in a subprocess). One thread is also the faster choice
    for a batch of small systems.
    """
    if M.device.type != "cpu":
        return torch.linalg.solve_ex(M, b, left=left)
    with one_thread():
        return torch.linalg.solve_ex(M, b, left=left)
