"""Attention as a discrete-time Markov chain (paper Sec. 3-4).

A post-softmax attention matrix ``A`` (``(..., n, n)``, rows sum to 1) is the
transition matrix of a Markov chain whose states are tokens. Everything here is
a few lines of linear algebra on that chain:

* ``bounce``          one or more steps of the chain (Eq. 4, Sec. 4.2)
* ``row_select``, ``column_select``, ``column_sum``   the familiar single bounces (Sec. 4.1)
* ``teleport``        the PageRank revision ``alpha*A + (1-alpha)*e*p^T`` (Eq. 2)
* ``tokenrank``       the steady state of the (teleported) chain (Sec. 4.3)
* ``lambda2``         modulus of the second eigenvalue, the mixing speed (Sec. 4.4)
* ``head_weights``, ``mix_heads``   lambda2-weighted (or uniform / random) head mixtures

Conventions. Probability vectors are row vectors ``v`` of shape ``(..., n)``
summing to 1. A chain is bounced through as ``v <- v P`` with a right-stochastic
``P``: the *incoming* chain is ``P = A``; the *outgoing* chain normalises the
columns of ``A`` (``A_l = A / colsum``, left-stochastic) and transposes it,
``P = A_l^T``, so ``v P`` is the paper's ``A_l v``. Inputs of any float dtype are
computed in float32 (float64 inputs stay float64).

Every function also takes a matrix-free chain, ``chains_lite.LazyAttention(q, k)``: a bounce
only needs products ``V P``, so ``_stepper`` asks the lazy chain for them, and the iterative
solvers never see the difference. What such a chain provides is declared by
``chains_lite.numerics.LazyChain``; ``chains_lite/lazy.py`` implements it.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Callable

import torch

from .krylov import extend, gmres
from .numerics import (LazyChain, Start, batched_solve, check_distribution, check_index, is_lazy, matmul_float64,
                       not_a_chain, rowsum_float64, start_vector, uniform, work_dtype)

DIRECTIONS = ("incoming", "outgoing")
SCHEMES = ("lambda2", "uniform", "random")

#: Default teleport weight. 0.99 keeps the chain almost untouched while making its
#: steady state unique (the authors' released code uses the same value).
DEFAULT_ALPHA = 0.99


# --------------------------------------------------------------------------- validation
def _needs_dense(A, what: str) -> None:
    if is_lazy(A):
        raise ValueError(f"{what} needs the dense matrix; a LazyAttention gives it with .dense()")


def check_stochastic(A, name: str = "A") -> torch.Tensor:
    """Validate a batch of right-stochastic matrices and return it in the working dtype.

    A: ``(..., n, n)``, any real dtype (array-likes are converted). Returns ``(..., n, n)``
    float32 (float64 for float64 input). Raises ``ValueError`` naming the problem when
    A is not square, is empty, holds NaN/inf or negative entries, or has rows that do
    not sum to 1 (tolerance 1e-3, 1e-2 for fp16/bf16). Rows within tolerance are
    renormalised so that downstream results are exact probability vectors. A lazy chain
    (``LazyAttention``) is returned as is: it is stochastic by construction.
    """
    return _checked_rows(A, name)[0]


def _checked_rows(A, name: str = "A"):
    """``check_stochastic``'s ``A`` and the row sums ``(..., n)`` it computed (float64, summed in
    the working dtype), or None where it has none (a lazy chain, or rows it renormalised)."""
    if is_lazy(A):
        return A, None
    try:
        A = torch.as_tensor(A)
    except (TypeError, RuntimeError) as err:  # torch's "could not infer dtype" names no remedy
        raise not_a_chain(A, name) from err
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square with shape (..., n, n), got {tuple(A.shape)}")
    if A.shape[-1] == 0:
        raise ValueError(f"{name} is empty (n = 0)")
    if A.dtype.is_complex:
        raise ValueError(f"{name} must be real, got {A.dtype}")
    tol = 1e-2 if A.dtype in (torch.float16, torch.bfloat16) else 1e-3
    A = A.to(work_dtype(A.dtype))
    rows = A.sum(-1)
    if not torch.isfinite(rows).all():
        raise ValueError(f"{name} contains NaN or inf")
    if A.numel() and A.amin() < 0:
        raise ValueError(f"{name} has negative entries (min {A.amin().item():.3g}); "
                         "a transition matrix must be non-negative")
    deviation = (rows - 1).abs().max().item()
    if deviation > tol:
        raise ValueError(f"rows of {name} must sum to 1 (a post-softmax attention matrix); "
                         f"the largest deviation is {deviation:.3g} > {tol:g}")
    if deviation > 1e-6:
        return A / rows.unsqueeze(-1), None
    return A, rows.double()


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def _check_alpha(alpha: float) -> float:
    number = isinstance(alpha, numbers.Real) or (torch.is_tensor(alpha) and alpha.numel() == 1)
    if isinstance(alpha, bool) or not number:  # "0.9" or True would convert silently
        raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return alpha


def _broadcast_batch(shape_a, shape_b, what: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(shape_a, shape_b)
    except RuntimeError:
        raise ValueError(f"{what}: batch shapes {tuple(shape_a)} and {tuple(shape_b)} "
                         "do not broadcast") from None


# --------------------------------------------------------------------------- the chain
def transition_matrix(A, direction: str = "incoming") -> torch.Tensor:
    """The right-stochastic matrix ``P`` that ``direction`` bounces through (``v <- v P``).

    A: ``(..., n, n)`` right-stochastic. Returns ``(..., n, n)``.
    incoming: ``P = A``. outgoing: ``P = A_l^T`` with ``A_l = A / colsum`` (Sec. 4.2,
    "normalise the columns and transpose"). A column of ``A`` that nobody attends to
    (sum 0) is a dangling state of the outgoing chain and jumps uniformly, as in PageRank.
    """
    _check_direction(direction)
    _needs_dense(A, "transition_matrix")
    A = check_stochastic(A)
    if direction == "incoming":
        return A
    n = A.shape[-1]
    cols = A.sum(-2, keepdim=True)
    A_l = torch.where(cols > 0, A / cols.clamp_min(torch.finfo(A.dtype).tiny), 1.0 / n)
    return A_l.mT


def _stepper(A: torch.Tensor | LazyChain, direction: str, float64: bool = False,
             rows: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``step(V) = V P`` for row vectors ``V`` ``(..., m, n)``, without forming ``P``.

    ``A`` must already be validated. For the outgoing chain, ``V A_l^T = (A_l V^T)^T`` and
    ``A_l V^T = A (V^T / colsum)``, so only the column sums are stored. ``float64``:
    accumulate in float64 (for residuals) without a float64 copy of ``A``. ``rows``: the
    float64 row sums ``(..., n)`` of ``A`` if already known.
    """
    times, times_t, colsums = (A.products(float64) if is_lazy(A)
                               else _dense_products(A, float64, rows))
    if direction == "incoming":
        return times
    n = A.shape[-1]
    cols = colsums()  # (..., 1, n): column sums of the row-normalised A
    dangling = cols <= 0
    inv = torch.where(dangling, 0.0, 1.0 / cols.clamp_min(torch.finfo(A.dtype).tiny))
    if not dangling.any():
        return lambda V: times_t(V * inv)
    return lambda V: times_t(V * inv) + (V * dangling).sum(-1, keepdim=True) / n


def _dense_products(A: torch.Tensor, float64: bool, rows: torch.Tensor | None):
    """``V -> V R``, ``V -> V R^T`` and the column sums ``(..., 1, n)`` of ``R = A / rowsum``.

    A lazy chain provides the same three (``LazyAttention.products``).
    """
    matmul = matmul_float64 if float64 else torch.matmul
    dtype = torch.float64 if float64 else A.dtype
    # divide by the row sums on the fly: P is exactly stochastic even when float32 rows are off
    # by rounding (~1e-7), at the cost of an n-vector per step instead of a copy of A
    rows = (rowsum_float64(A) if rows is None else rows).to(dtype).unsqueeze(-2)
    return (lambda V: matmul(V / rows, A), lambda V: matmul(V, A.mT) / rows,
            lambda: matmul(1.0 / rows, A))


def _row_sums(A) -> torch.Tensor:
    """Row sums ``(..., n)`` in float64; a lazy chain's products are row-normalised already."""
    if is_lazy(A):
        return torch.ones(A.shape[:-1], dtype=torch.float64, device=A.device)
    return rowsum_float64(A)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.sum(-1, keepdim=True)


def _finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x``, after checking that a lazy chain's products gave finite numbers (a validated dense
    ``A`` cannot give NaN; a ``LazyChain`` from elsewhere can)."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: the chain's products are not finite (NaN or inf); for attention "
                         "from q and k, the logits q k^T * scale overflow float32")
    return x


# --------------------------------------------------------------------------- bounces
def bounce(A, v0: Start, steps: int = 1, direction: str = "incoming",
           return_all: bool = False) -> torch.Tensor:
    """Bounce a distribution through the attention chain ``steps`` times (Eq. 4).

    A: ``(..., n, n)`` right-stochastic attention. v0: a tensor ``(..., n)`` whose batch
    dims broadcast against A's, an int (one-hot start at that token) or ``"uniform"``.
    incoming: ``v_{k+1}^T = v_k^T A``; outgoing: ``v_{k+1} = A_l v_k`` with the
    column-normalised ``A_l = A / colsum``. Each step is renormalised to sum 1.
    Returns ``(..., n)``, or ``(..., steps, n)`` holding bounces 1..steps if ``return_all``.
    """
    _check_direction(direction)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    A = check_stochastic(A)
    v = start_vector(v0, A)
    _broadcast_batch(v.shape[:-1], A.shape[:-2], "v0 and A")
    step = _stepper(A, direction)
    history = []
    for _ in range(steps):
        v = _normalize(step(v.unsqueeze(-2)).squeeze(-2))
        history.append(v)
    _finite(v, "bounce")  # NaN stays NaN: the last step tells
    return torch.stack(history, -2) if return_all else v


def row_select(A, i: int) -> torch.Tensor:
    """Row ``i`` of A: the attention token ``i`` gives, one incoming bounce from ``e_i``.

    A: ``(..., n, n)``. Returns ``(..., n)``, summing to 1.
    """
    A = check_stochastic(A)
    i = check_index(i, A.shape[-1])
    return _normalize(_finite(A.row(i), "row_select") if is_lazy(A) else A[..., i, :])


def column_select(A, j: int) -> torch.Tensor:
    """Column ``j`` of A normalised to sum 1: one outgoing bounce from ``e_j`` (Sec. 4.1).

    A: ``(..., n, n)``. Returns ``(..., n)``; entry i is how much token i attends to j,
    relative to the others. A column of zeros (nobody attends to j) gives the uniform vector.
    """
    return bounce(A, j, 1, "outgoing")


def column_sum(A) -> torch.Tensor:
    """Column sums of A divided by n: one incoming bounce from the uniform vector (Sec. 4.1).

    A: ``(..., n, n)``. Returns ``(..., n)``, summing to 1.
    """
    A = check_stochastic(A)
    return bounce(A, "uniform") if is_lazy(A) else A.mean(-2)


# --------------------------------------------------------------------------- TokenRank
def _personalization(personalization, A: torch.Tensor):
    """The teleport distribution ``p`` ``(..., n)`` (uniform if None) and the joint batch shape."""
    n = A.shape[-1]
    p = (uniform(A) if personalization is None
         else check_distribution(personalization, n, A, "personalization"))
    return p, _broadcast_batch(p.shape[:-1], A.shape[:-2], "personalization and A")


def teleport(A, alpha: float, personalization=None) -> torch.Tensor:
    """PageRank revision ``alpha*A + (1-alpha)*e*p^T`` (paper Eq. 2).

    A: ``(..., n, n)``; alpha in (0, 1]; personalization ``p``: ``(..., n)`` non-negative
    (normalised here), uniform by default. Returns ``(..., n, n)``, rows still summing to 1.
    With alpha < 1 and p > 0 every entry is positive, so the steady state is unique.
    """
    alpha = _check_alpha(alpha)
    _needs_dense(A, "teleport")
    A = check_stochastic(A)
    p, _ = _personalization(personalization, A)
    return alpha * A + (1.0 - alpha) * p.unsqueeze(-2)


def tokenrank(A, alpha: float = DEFAULT_ALPHA, direction: str = "incoming",
              personalization=None, tol: float = 1e-6, max_iter: int = 3000,
              method: str = "auto") -> torch.Tensor:
    """TokenRank: the steady state of the teleported attention chain (Sec. 4.3).

    A: ``(..., n, n)`` right-stochastic. Returns ``(..., n)`` summing to 1: the ``pi`` with
    ``pi^T P' = pi^T`` where ``P' = alpha*P + (1-alpha)*e*p^T`` and ``P`` is the
    ``direction`` chain (``transition_matrix``). incoming ranks "authorities" (tokens
    attention flows into), outgoing ranks "hubs". ``alpha=1.0`` means no teleport: then a
    chain with several closed classes (eigenvalue 1 repeated) has no unique steady state and
    raises ``ValueError``, and a periodic one (``|lambda_2| = 1``) warns.

    Three solvers give the same answer (tested against each other and against scipy);
    ``method="auto"`` (default) takes ``"dense"`` for ``n <= 256``. Above, it starts with power
    steps and keeps them if every chain mixes fast enough to settle in a few dozen, else hands
    all chains to ``"krylov"`` after three steps (``_auto_steady_state``; the outgoing
    direction and matrix-free chains take ``"krylov"``). Its power steps multiply float32
    pieces of 64 entries and sum them in float64 (``_chunked_times``); they stop only where
    their rounding floor, at most 6e-8 / (1 - r) in L1 measured (``r`` the contraction rate),
    is 4x below ``tol``. On float32 attention-like heads (``bench_core.py``) ``"auto"`` gave
    L1 error <= 5e-8 at ``tol=1e-6`` (``"power"``: 2.4e-7).

    * ``method="dense"``: the linear system below solved directly in float64 (``O(n^3)``,
      exact, fastest for short sequences).
    * ``method="krylov"``: ``pi`` solves the linear system
      ``pi (I - alpha P + alpha e p^T) = p^T``. GMRES (``chains_lite.krylov``) solves it in
      float32 and each residual is recomputed in float64 (iterative refinement), so float32
      attention still gets float64-grade answers. It stops when the residual ``r`` certifies
      the L1 error, ``4 |r|_1 / (1 - alpha) <= tol`` (``1 - alpha`` floored at 1e-3),
      using that ``I - alpha P`` has an inverse of L1 norm at most ``1 / (1 - alpha)``.
      ``max_iter`` bounds the refinement rounds' bounces.
    * ``method="power"`` (the paper's): ``v <- alpha * v P + (1-alpha) * p`` from the
      uniform vector, never forming ``P'``. It stops when the estimated L1 distance to the
      fixed point, ``|v_k - v_{k-1}|_1 * r / (1 - r)`` (``r`` the observed contraction rate,
      capped by ``alpha``, with a 4x margin), is below ``tol``, or when the steps stall at
      rounding noise. The iterates are float64 (most bounces still multiply in float32, see
      ``_power_iteration``), so float32 attention reaches ``tol`` as with the other solvers.

    In the iterative solvers chains that converge leave the batch early, and both warn if
    ``max_iter`` is reached.

    A ``LazyAttention`` is solved on dense chunks of heads when they fit its ``max_bytes``,
    matrix-free otherwise; ``"dense"`` then raises ``ValueError`` and ``"auto"`` takes
    ``"krylov"`` (on dense chunks it chooses as for a tensor).
    """
    alpha = _check_alpha(alpha)
    _check_direction(direction)
    if tol <= 0 or max_iter < 1:
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    A, rows = _checked_rows(A)
    n = A.shape[-1]
    p, batch = _personalization(personalization, A)
    A = A.expand(*batch, n, n).reshape(-1, n, n)
    p = p.expand(*batch, n).reshape(-1, n)
    rows = None if rows is None else rows.expand(*batch, n).reshape(-1, n)
    solvers = {"dense": _dense_steady_state, "krylov": _krylov_steady_state,
               "power": _power_iteration, "auto": _auto_steady_state}
    if method == "auto":  # (a lazy chain whose dense matrices do not fit its budget: krylov)
        small = n <= _DENSE_MAX_N and (not is_lazy(A) or A.chunk_size(_DENSE_COPIES) > 0)
        method = "dense" if small else "auto"
    if method not in solvers:
        raise ValueError(f"unknown method {method!r}; expected 'auto' or one of {tuple(solvers)}")
    if alpha == 1.0:
        _check_unique(A, direction)
    out = []
    for s, A_s in _pieces(A, dense=method == "dense"):
        known = {"rows": rows[s]} if method == "auto" and rows is not None else {}
        out.append(solvers[method](A_s, p[s], alpha, direction, tol, max_iter, **known))
    return torch.cat(out).reshape(*batch, n)


def _check_unique(A, direction: str) -> None:
    """Without teleport the steady state is unique only if the eigenvalue 1 is simple.

    A chain whose eigenvalue 1 is repeated (a reducible chain with several closed classes, the
    identity at the extreme) has a whole family of steady states, and each solver would pick a
    different one: ``ValueError``. A chain with another eigenvalue of modulus 1 (periodic) has
    a unique one that bouncing never settles on: a warning (the power method hits max_iter).
    """
    n = A.shape[-1]
    if n == 1:
        return
    pieces = [_lambda2(A_s, direction, 1e-4, 400, 64, near_one=True) for _, A_s in _pieces(A)]
    l2, near = torch.cat([l for l, _ in pieces]), torch.cat([d for _, d in pieces])
    repeated = torch.nonzero(near < 1e-4).flatten().tolist()
    if repeated:
        raise ValueError(f"tokenrank(alpha=1): chain(s) {repeated[:10]} have the eigenvalue 1 more than "
                         "once (to within 1e-4: a reducible chain with several closed classes, or nearly "
                         "so), so the steady state is "
                         "not unique: every mixture of the classes' steady states is one. Use alpha < 1, "
                         "the PageRank revision (Sec. 4.3).")
    periodic = torch.nonzero(l2 > 1 - 1e-4).flatten().tolist()
    if periodic:
        warnings.warn(f"tokenrank(alpha=1): chain(s) {periodic[:10]} have |lambda2| = 1 (a periodic "
                      "chain, or nearly reducible): bouncing does not settle, so the power method "
                      "fails and the others are ill-conditioned. Use alpha < 1, the PageRank revision "
                      "(Sec. 4.3).", RuntimeWarning, stacklevel=3)


def _pieces(A, dense: bool = False):
    """``(batch slice, chains)`` pieces of ``B`` chains ``(B, n, n)`` to solve one at a time.

    A tensor is one piece. A lazy chain comes as dense chunks of chains that fit its memory
    budget (each solved at dense speed), else whole and matrix-free; ``dense``: the solver
    needs the entries (raises ``ValueError`` if even one chain does not fit).
    """
    if not is_lazy(A):
        return [(slice(None), A)]
    # iterative solvers: the chunk, a solver's copy of it, the next chunk while it is built
    return A.pieces(copies=_DENSE_COPIES if dense else 3, dense=dense)


_DENSE_MAX_N = 256  # below this a float64 LU solve beats any iteration (bench_core.py)
_DENSE_COPIES = 12  # float32 copies of A that the float64 dense solve holds at its peak


def _dense_steady_state(A, p, alpha, direction, tol, max_iter):
    """``pi (I - alpha P + alpha e p^T) = p^T`` by a float64 LU solve; ``(B, n, n)`` -> ``(B, n)``."""
    # M built in place in one float64 copy of A (allocating the float64 matrix is half the time)
    if direction == "incoming":
        P = A.to(torch.float64, copy=True)
        M = P.mul_(-alpha / P.sum(-1, keepdim=True))
    else:
        P = transition_matrix(A.double(), direction)
        M = P * (-alpha / P.sum(-1, keepdim=True))
    M.diagonal(dim1=-2, dim2=-1).add_(1.0)
    p64 = p.double()
    M.add_(alpha * p64.unsqueeze(-2))
    pi, info = batched_solve(M, p64.unsqueeze(-2), left=False)  # pi M = p^T
    pi = pi.squeeze(-2)
    if (info != 0).any() or not torch.isfinite(pi).all():
        raise ValueError("the chain has no unique steady state (alpha = 1 on a reducible chain?); "
                         "use alpha < 1")
    return _normalize(pi.clamp_min(0)).to(A.dtype)


def _krylov_steady_state(A, p, alpha, direction, tol, max_iter, x0=None):
    """Steady states of ``B`` teleported chains by GMRES with float64 refinement.

    ``A`` ``(B, n, n)``, ``p`` ``(B, n)`` -> ``(B, n)``. With ``M = I - alpha P + alpha e p^T``
    (nonsingular for alpha < 1; for alpha = 1 when the steady state is unique),
    ``pi M = p^T`` is the fixed point of the teleported chain with ``pi e = 1``. ``x0``: a
    float64 start ``(B, n)`` (zero if None).
    """
    n = A.shape[-1]
    rows = _row_sums(A)  # once: summing A costs about a bounce

    def operator(A_, p_, float64=False, rows_=rows):
        step = _stepper(A_, direction, float64, rows_)
        return lambda x: (x - alpha * step(x.unsqueeze(-2)).squeeze(-2)
                          + alpha * x.sum(-1, keepdim=True) * p_)

    cache = {}

    def subset(idx):  # the float32 operator for the systems idx (they leave as they converge)
        key = tuple(idx.tolist())
        if key not in cache:
            cache.clear()  # only the current set is ever needed again
            everything = len(idx) == A.shape[0]
            cache[key] = (operator(A, p) if everything
                          else operator(A[idx], p[idx], rows_=rows[idx]))
        return cache[key]

    # the error of x (and of x / sum(x)) is at most 3 |r|_1 / (1 - alpha) in L1: (I - alpha P)
    # has an inverse of L1 norm <= 1 / (1 - alpha), and sum(x) - 1 = -sum(r)
    certify = tol * max(1.0 - alpha, 1e-3) / 4
    exact = operator(A, p.double(), float64=True)
    x = torch.zeros_like(p, dtype=torch.float64) if x0 is None else x0.double()
    r = p.double() if x0 is None else p.double() - exact(x)
    spent, converged = 0, False
    while spent < max_iter:  # each round: a float32 GMRES solve for the float64 residual
        d, used = gmres(subset, r.to(A.dtype), rtol=1e-5, atol=0.1 * certify / n ** 0.5,
                        max_matvecs=max_iter - spent)
        spent += used
        x = x + d.double()
        r = p.double() - exact(x)
        _finite(r, "tokenrank")
        converged = bool((r.abs().sum(-1) <= certify).all())
        if converged or used == 0:  # used == 0: float32 GMRES cannot shrink this residual
            break
    if not converged:
        warnings.warn(f"tokenrank did not reach tol={tol} within max_iter={max_iter} bounces "
                      "(alpha = 1 on a chain without a unique steady state?); returning the "
                      "last iterate", RuntimeWarning, stacklevel=3)
    return _normalize(x.clamp_min(0)).to(A.dtype)


def _auto_steady_state(A, p, alpha, direction, tol, max_iter, rows=None):
    """Steady states of ``B`` chains ``(B, n, n)``: power steps first, GMRES for the slow chains.

    Chains that mix fast settle in a dozen power steps, fewer bounces than GMRES spends with its
    float64 residuals; slowly mixing ones would take hundreds. So every chain starts with power
    steps whose products are nearly float64-accurate at float32 cost (``_chunked_times``). From
    the step sizes ``d_k = |v_k - v_{k-1}|_1`` the contraction rate ``r`` (the largest ratio of
    successive steps, those at rounding noise left out) predicts how many more steps a chain
    needs. From ``_FIRST_LOOK`` steps on, as long as no chain has finished, if any chain needs
    more than ``_POWER_LEFT`` or the rounding floor of the products, ``_PROBE_FLOOR / (1 - r)``
    in L1, is not 4x below ``tol``, every chain goes to GMRES (``_krylov_steady_state``) as if it
    had been chosen at the start: GMRES pays its float64 residuals for that chain anyway, and
    fast chains leave it within a restart. Otherwise the power steps go on; a chain stops once
    its estimated error ``4 d_k r / (1 - r)`` (``r`` over the last ``_WINDOW`` steps) plus the
    floor is below ``tol``, and one that turns out slow after others finished goes to GMRES from
    its last iterate.
    ``(B, n, n)``, ``(B, n)`` -> ``(B, n)``; dense incoming chains only (others go to GMRES).
    ``rows``: the row sums ``(B, n)`` of ``A`` if known.
    """
    if is_lazy(A) or direction != "incoming":
        return _krylov_steady_state(A, p, alpha, direction, tol, max_iter)
    p = p.double()
    out = p.clone()
    todo = torch.arange(A.shape[0], device=A.device)  # chains still in power steps
    slow, starts = [], []  # chains handed to GMRES, and their last iterates
    A_, p_ = A, p
    rows = A.sum(-1).double() if rows is None else rows
    times = _chunked_times(A_, rows)
    v = p_.unsqueeze(-2)  # (B, 1, n)
    diffs = []
    max_rate = min(alpha, 0.999)
    k = 0
    for k in range(1, max_iter + 1):
        v_new = _normalize(alpha * times(v) + (1.0 - alpha) * p_.unsqueeze(-2))
        diffs = (diffs + [(v_new - v).abs().sum((-2, -1))])[-(_WINDOW + 1):]
        v = v_new
        if len(diffs) < _FIRST_LOOK:
            continue
        D = torch.stack(diffs)  # (<= W+1, B)
        # steps at the rounding noise say nothing about the rate: their ratios are left out
        ratios = torch.where(D[:-1] > _STEP_NOISE, D[1:] / D[:-1].clamp_min(1e-30), 0.0)
        rate = ratios.amax(0).clamp(1e-3, max_rate)
        floor = _PROBE_FLOOR / (1 - rate)
        left = 4 * D[1:].amax(0) * rate / (1 - rate)  # estimated L1 distance to the fixed point
        done = (left + floor <= tol) & (len(diffs) > _WINDOW)
        steps_left = (torch.log((tol - floor).clamp_min(1e-300) / left.clamp_min(1e-300))
                      / torch.log(rate))
        hand_over = ~done & ((4 * floor > tol) | (steps_left > _POWER_LEFT) | D[-1].isnan())
        if hand_over.any() and len(todo) == A.shape[0]:
            # GMRES pays its float64 residuals for a slow chain anyway, and chains that mix
            # fast leave it within a restart: all go, as if GMRES had been the choice (and A
            # is not copied)
            return _krylov_steady_state(A, p.to(A.dtype), alpha, direction, tol, max(1, max_iter - k))
        leave = done | hand_over
        if not leave.any():
            continue
        out[todo[done]] = v[done, 0]
        slow.append(todo[hand_over])
        starts.append(v[hand_over, 0])
        keep = ~leave
        if not keep.any():
            break
        todo, A_, p_, v, rows = todo[keep], A_[keep], p_[keep], v[keep], rows[keep]
        diffs = [d[keep] for d in diffs]
        times = _chunked_times(A_, rows)
    else:  # max_iter power steps: GMRES gets no bounces left, and warns
        slow.append(todo)
        starts.append(v[:, 0])
    slow = torch.cat(slow)
    if slow.numel():
        out[slow] = _krylov_steady_state(A[slow], p[slow].to(A.dtype), alpha, direction, tol,
                                         max(1, max_iter - k), torch.cat(starts)).double()
    return _finite(out, "tokenrank").to(A.dtype)


_FIRST_LOOK = 3  # power steps before the first choice between power steps and GMRES
_PROBE_FLOOR = 1e-7  # L1 rounding floor times (1 - r) of power steps on _chunked_times (6e-8 measured)
_STEP_NOISE = 1e-7  # L1 step size below which the power steps on _chunked_times are rounding noise
_POWER_LEFT = 32  # power steps a chain may still need before it goes to GMRES instead
_CHUNK = 64  # terms per float32 partial sum in _chunked_times


def _chunked_times(A: torch.Tensor, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``V -> V P`` ``(B, 1, n)`` float64 for dense incoming chains ``A`` ``(B, n, n)`` with row sums
    ``rows`` ``(B, n)``, ``P = A / rows``.

    A float32 matrix-vector product sums ``n`` terms in float32: its relative error grows with
    ``n`` (5e-7 in L1 at n = 4096, the fixed point of the power method is off by as much). Here
    ``V`` is cut into pieces of ``_CHUNK`` entries; the pieces multiply the matching rows of
    ``A`` in float32 (one batched product, the same pass over ``A``) and their partial results
    are summed in float64: the fixed point then sat 1e-8 from the float64 one, at the speed of a
    float32 product.
    """
    B, n = A.shape[0], A.shape[-1]
    q = n // _CHUNK
    cut = q * _CHUNK
    head = A[:, :cut].reshape(B, q, _CHUNK, n)  # a view
    rows = rows.unsqueeze(-2)  # (B, 1, n)

    def times(V):
        x = (V / rows).to(A.dtype)
        y = (x[..., 0, :cut].reshape(B, q, 1, _CHUNK) @ head).double().sum(1) if q else 0.0
        if cut < n:
            y = y + (x[..., cut:] @ A[:, cut:]).double()
        return y
    return times


_WINDOW = 4  # iterations over which the contraction rate is measured (complex pairs oscillate)


def _geometric_converged(steps, tol, max_rate, noise):
    """Which sequences have converged, from their last ``_WINDOW + 1`` step sizes ``(B,)`` each.

    For geometric convergence at rate ``r`` the error left after a step of size ``d`` is
    about ``d * r / (1 - r)``. ``r`` is the largest step-to-step ratio in the window (steps
    oscillate when a complex pair dominates), capped by ``max_rate``, and the estimate must
    be 4x below ``tol`` (with several slow modes the single-mode estimate runs low, about 2x
    measured). A sequence whose steps stopped shrinking at rounding ``noise`` is done too.
    """
    if len(steps) <= _WINDOW:
        return torch.zeros_like(steps[-1], dtype=torch.bool)
    D = torch.stack(steps)  # (W+1, B)
    ratio = (D[-1] / D[0].clamp_min(1e-30)) ** (1.0 / _WINDOW)  # mean rate over the window
    rate = (D[1:] / D[:-1].clamp_min(1e-30)).amax(0).clamp(0.0, max_rate)
    done = 4 * D[1:].amax(0) * rate / (1 - rate) <= tol
    # a NaN step (a lazy chain's products overflowed) ends the sequence: the caller checks
    return done | ((ratio >= 1) & (D.amax(0) <= noise)) | D[-1].isnan()


def _power_iteration(A, p, alpha, direction, tol, max_iter):
    """Steady states of ``B`` teleported chains: ``A`` ``(B, n, n)``, ``p`` ``(B, n)`` -> ``(B, n)``.

    Chains that have converged leave the batch, so slowly mixing heads do not make the
    fast ones iterate on. The iterates are float64: the fixed point of a float32 iteration is
    off by about eps32 / (1 - alpha |lambda_2|), 1e-5 in L1 at alpha = 0.99 on slow heads. Each
    bounce is ``v P = x P + (v - x) P`` around an anchor ``x`` whose ``x P`` is a float64 product
    (renewed every ``_ANCHOR`` steps); ``(v - x) P`` is small and goes in float32, so its rounding
    is far below ``tol`` at the cost of one float64 product per ``_ANCHOR`` float32 ones.
    """
    p = p.double()
    out = p.clone()
    todo = torch.arange(A.shape[0], device=A.device)  # chains still iterating
    rows = _row_sums(A)  # once for both products: summing A costs about a bounce
    step, exact = _stepper(A, direction, False, rows), _stepper(A, direction, True, rows)
    v = p.unsqueeze(-2)  # (B, 1, n): the uniform start when p is uniform
    diffs = []  # the last _WINDOW + 1 step sizes |v_k - v_{k-1}|_1, each (B,)
    max_rate = min(alpha, 0.999)  # the teleported chain contracts L1 distances by alpha
    noise = 2 * torch.finfo(torch.float64).eps  # where float64 steps stall
    for k in range(max_iter):
        if k % _ANCHOR == 0:
            x, xP = v, exact(v)
        vP = xP + step((v - x).to(A.dtype)).double()
        v_new = _normalize(alpha * vP + (1.0 - alpha) * p.unsqueeze(-2))
        diffs = (diffs + [(v_new - v).abs().sum((-2, -1))])[-(_WINDOW + 1):]
        v = v_new
        done = _geometric_converged(diffs, tol, max_rate, noise)
        if not done.any():
            continue
        out[todo[done]] = v[done, 0]
        keep = ~done
        if not keep.any():
            return _finite(out, "tokenrank").to(A.dtype)
        todo, A, p, v, x, xP = todo[keep], A[keep], p[keep], v[keep], x[keep], xP[keep]
        diffs, rows = [d[keep] for d in diffs], rows[keep]
        step, exact = _stepper(A, direction, False, rows), _stepper(A, direction, True, rows)
    warnings.warn(f"tokenrank did not reach tol={tol} in max_iter={max_iter} iterations for "
                  f"{len(todo)} chain(s) (alpha close to 1 on a slowly mixing chain?); "
                  "returning the last iterate", RuntimeWarning, stacklevel=3)
    out[todo] = v[:, 0]
    return _finite(out, "tokenrank").to(A.dtype)


_ANCHOR = 16  # float32 bounces per float64 one in the power method


# --------------------------------------------------------------------------- lambda2
def lambda2(A, direction: str = "incoming", tol: float = 1e-4, max_iter: int = 400,
            krylov_dim: int = 64) -> torch.Tensor:
    """|lambda_2|: modulus of the second-largest-modulus eigenvalue of each chain (Sec. 4.4).

    A: ``(..., n, n)`` right-stochastic. Returns ``A.shape[:-2]`` (float32 or float64).
    For a reducible or periodic chain this is 1. ``direction`` picks the chain as in
    ``transition_matrix``.

    Why it is cheap: since ``P e = e``, row vectors summing to 0 stay summing to 0 under
    ``x <- x P``. On that invariant subspace ``P`` has every eigenvalue but the leading 1,
    so lambda_2 is its dominant eigenvalue, and no steady state is needed to remove the 1.
    Arnoldi (``chains_lite.krylov``) from a zero-sum start builds the space of its bounces;
    the eigenvalues of the small projected matrix ``H`` (Ritz values; complex pairs come out
    as pairs) converge to the largest eigenvalues in a few dozen bounces, instead of the
    ``O(n^3)`` of a full ``eigvals``. A chain stops when its top Ritz pair's residual
    ``|h_{k+1,k} s_k|`` is below ``tol`` and leaves the batch, so fast-mixing heads stop after a
    dozen bounces while slow ones go on; Arnoldi restarts from the leading Ritz directions every
    ``krylov_dim`` bounces, and warns if ``max_iter`` bounces are not enough.

    Accuracy, measured against float64 ``eigvals`` on attention-like heads
    (``benchmarks/bench_core.py``; float32 bounces): the eigenvalue's error is about 0.1 to 1
    times the residual (the chains are not normal), so ``tol=1e-4`` (default) gave
    |error| <= 1.1e-5 and ``tol=1e-5`` gave |error| <= 1.1e-6 (tests/test_chain.py); float32
    rounding floors it near 3e-7, and a ``tol`` below about 3e-6 may not be reached in float32
    (with restarts in a small space, ``krylov_dim=12``, not below about 1e-4).
    A looser ``tol`` risks stopping on |lambda_3|: when the start vector has little of the
    lambda_2 direction, a head can converge to the next eigenvalue first (``tol=1e-3`` returned
    a value 1e-2 low on one of twelve heads). Eigenvalues of nearly equal modulus (closer than
    about ``tol``) can be confused the same way; lower ``tol`` for such spectra.
    """
    _check_direction(direction)
    if not (_is_real(tol) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if not (_is_int(max_iter) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not (_is_int(krylov_dim) and krylov_dim >= 2):
        raise ValueError(f"krylov_dim must be an int >= 2, got {krylov_dim!r}")
    A, rows = _checked_rows(A)
    n = A.shape[-1]
    batch = A.shape[:-2]
    if n == 1:
        return torch.zeros(batch, dtype=A.dtype, device=A.device)
    out = []
    for s, A_s in _pieces(A.reshape(-1, n, n)):
        out.append(_lambda2(A_s, direction, tol, max_iter, krylov_dim,
                            rows=None if rows is None else rows.reshape(-1, n)[s]))
    return torch.cat(out).reshape(batch)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _lambda2(A, direction, tol, max_iter, krylov_dim, near_one: bool = False, rows=None):
    """|lambda_2| ``(B,)`` of ``B`` chains ``(B, n, n)``, ``n >= 2`` (see ``lambda2``).

    One batched Arnoldi process; a chain whose top Ritz pair has converged leaves the batch at
    the next check, so fast-mixing heads stop bouncing after a dozen steps while slow ones go on.
    Checks (an ``eig`` of every ``k x k`` projected matrix) come every ``_check_every`` steps.

    ``near_one``: also return the distance ``(B,)`` from 1 to the nearest Ritz value (0 when the
    eigenvalue 1 is repeated: a reducible chain with several closed classes). ``rows``: the row
    sums ``(B, n)`` of ``A`` if known."""
    B, n = A.shape[0], A.shape[-1]
    # float32 row sums (a third of the float64 ones' cost): their rounding, ~1e-7 relative,
    # is far below lambda2's float32 floor
    if rows is None:
        rows = _row_sums(A) if is_lazy(A) else A.sum(-1).double()
    lam = torch.zeros(B, dtype=torch.float64, device=A.device)
    near = torch.zeros_like(lam)
    todo = torch.arange(B, device=A.device)  # chains still iterating
    # fixed seed: the answer must not depend on global RNG state
    g = torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=g, dtype=A.dtype).to(A.device)
    v = (v - v.mean()).expand(B, n)
    m = max(1, min(krylov_dim, n - 1))
    spent = 0
    while True:
        step = _stepper(A, direction, rows=rows)
        V = v.new_zeros(len(todo), m + 1, n)
        H = v.new_zeros(len(todo), m + 1, m)
        V[:, 0] = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        k, check = 0, _FIRST_CHECK
        while k < m and spent + k < max_iter:
            y = step(V[:, k].unsqueeze(-2)).squeeze(-2)
            extend(V, H, k, y - y.mean(-1, keepdim=True))  # re-projected: rounding leaks into e
            k += 1
            if k < min(check, m, max_iter - spent):
                continue
            check = k + _check_every(k, n)
            theta, residual, dist = _top_ritz(H[:, : k + 1, :k])
            # k = n - 1 steps span the whole zero-sum space: the Ritz values are exact
            done = (residual <= tol) | (k == n - 1)
            if not done.any():
                continue
            lam[todo[done]], near[todo[done]] = theta[done], dist[done]
            keep = ~done
            if not keep.any():
                return (lam.to(A.dtype), near) if near_one else lam.to(A.dtype)
            todo, A, rows, V, H = todo[keep], A[keep], rows[keep], V[keep], H[keep]
            theta, dist = theta[keep], dist[keep]
            step = _stepper(A, direction, rows=rows)
        spent += k
        if spent >= max_iter:
            warnings.warn(f"lambda2 did not converge to tol={tol} in max_iter={max_iter} bounces; "
                          "increase max_iter or krylov_dim", RuntimeWarning, stacklevel=3)
            lam[todo], near[todo] = theta, dist
            return (lam.to(A.dtype), near) if near_one else lam.to(A.dtype)
        v = _restart_vector(H[:, : k + 1, :k], V[:, : k + 1])


_FIRST_CHECK = 8  # Arnoldi steps before lambda2's first convergence check


def _check_every(k: int, n: int) -> int:
    """Arnoldi steps between lambda2's checks at step ``k`` for chains of ``n`` states.

    A check (``eig`` of the ``k x k`` projected matrix, ~``k^3``) costs about ``50 k^3 / n^2``
    bounces (~``n^2``) on a CPU core: 1 ms at ``k = 48``, five bounces of a 1024-token head.
    Checks come about that many steps apart, so they cost at most about one bounce each, but
    at least every ``max(4, k // 8)`` steps and at most every 2.
    """
    return max(2, min(max(4, k // 8), round(50 * k ** 3 / n ** 2)))


def _restart_vector(H: torch.Tensor, V: torch.Tensor, keep: int = 4) -> torch.Tensor:
    """A restart vector ``(B, n)`` holding the ``keep`` largest Ritz directions.

    Restarting from the top Ritz vector alone can lock onto a wrong eigenvalue when the
    top Ritz value is not yet the true lambda_2; the real + imaginary parts of the leading
    few keep their planes (complex pairs included) in the next Krylov space.
    """
    k = H.shape[-1]
    theta, S = torch.linalg.eig(H[:, :k, :k].double())
    top = theta.abs().topk(min(keep, k), dim=-1).indices  # (B, keep)
    S = S.gather(-1, top[:, None, :].expand(-1, k, -1))  # (B, k, keep), unit columns
    y = (S.real + S.imag).sum(-1).to(V.dtype)  # (B, k)
    return (y.unsqueeze(-2) @ V[:, :k]).squeeze(-2)


def _top_ritz(H: torch.Tensor):
    """Largest Ritz value modulus ``(B,)``, the residual ``(B,)`` of its Ritz pair and the
    distance ``(B,)`` from 1 to the nearest Ritz value.

    H: ``(B, k+1, k)`` from ``arnoldi``. The residual of the Ritz pair ``(theta, V_k^T s)`` is
    ``|h_{k+1,k}| |s_k|`` for a unit eigenvector ``s`` of the square part of ``H``.
    """
    k = H.shape[-1]
    _finite(H, "lambda2")  # a lazy chain's overflowing products would reach eig as NaN
    theta, S = torch.linalg.eig(H[:, :k, :k].double())
    i = theta.abs().argmax(-1)
    s = S.gather(-1, i[:, None, None].expand(-1, k, 1)).squeeze(-1)
    residual = H[:, k, k - 1].double().abs() * s[:, -1].abs()
    return theta.abs().amax(-1), residual, (theta - 1).abs().amin(-1)


# --------------------------------------------------------------------------- heads
def _weights_dim(A: torch.Tensor, dim: int) -> int:
    """Map a head dim of ``A`` (``(..., n, n)``) to the matching dim of ``A.shape[:-2]``."""
    nb = A.ndim - 2
    d = dim + A.ndim if dim < 0 else dim
    if not 0 <= d < nb:
        raise ValueError(f"dim={dim} is not a batch (head) dim of A with shape {tuple(A.shape)}; "
                         f"use one of the first {nb} dims, e.g. -3")
    return d


def head_weights(A, scheme: str = "lambda2", dim: int = -3, generator=None,
                 direction: str = "incoming") -> torch.Tensor:
    """Weights for mixing heads, summing to 1 over ``dim`` (Sec. 4.4).

    A: ``(..., h, n, n)`` with heads on ``dim`` (default -3). Returns ``A.shape[:-2]``.
    ``"lambda2"``: ``w_h ∝ |lambda_2(A_h)|`` (slowly mixing, structured heads count more; if
    every head has lambda_2 = 0 the weights fall back to uniform); ``"uniform"``: ``1/h``;
    ``"random"``: uniform random weights from ``generator`` (a ``torch.Generator``).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    A = check_stochastic(A)
    d = _weights_dim(A, dim)
    shape = A.shape[:-2]
    if scheme == "uniform":
        w = torch.ones(shape, dtype=A.dtype, device=A.device)
    elif scheme == "random":
        w = torch.rand(shape, generator=generator, dtype=A.dtype).to(A.device)
    else:
        w = lambda2(A, direction=direction)
        w = torch.where(w.sum(d, keepdim=True) > 0, w, torch.ones_like(w))
    return w / w.sum(d, keepdim=True)


def mix_heads(A, weights, dim: int = -3) -> torch.Tensor:
    """Weighted mixture of chains over ``dim``: ``sum_h w_h A_h``, still right-stochastic.

    A: ``(..., h, n, n)``; weights: ``A.shape[:-2]`` (as from ``head_weights``) or ``(h,)``,
    non-negative and summing to 1 over the head dim. Returns A with ``dim`` removed,
    ``(..., n, n)``. Uniform weights give the usual head average.
    """
    A = check_stochastic(A)
    d = _weights_dim(A, dim)
    w = torch.as_tensor(weights, device=A.device).to(A.dtype)
    h = A.shape[d]
    if w.ndim == 1 and w.shape[0] == h:
        w = w.reshape((h,) + (1,) * (A.ndim - 3 - d))
    try:
        w = torch.broadcast_to(w, A.shape[:-2])
    except RuntimeError:
        raise ValueError(f"weights of shape {tuple(torch.as_tensor(weights).shape)} do not fit "
                         f"A of shape {tuple(A.shape)} (expected {tuple(A.shape[:-2])} or ({h},))") from None
    if not torch.isfinite(w).all() or w.amin() < 0:
        raise ValueError("weights must be finite and non-negative")
    if ((w.sum(d) - 1).abs() > 1e-4).any():
        raise ValueError(f"weights must sum to 1 over the head dim {dim}")
    if is_lazy(A):  # a lazy mixture: its products are the weighted sums of the heads'
        return A.mix(w, d)
    return (A * w[..., None, None]).sum(d)


def mix(A, scheme: str, dim: int = -3, generator=None, direction: str = "incoming") -> torch.Tensor:
    """Heads mixed into one chain by a weighting ``scheme`` (Sec. 4.4): ``(..., h, n, n)`` ->
    ``(..., n, n)`` (``dim`` removed); dense or lazy, as ``A``.

    Shorthand for ``mix_heads(A, head_weights(A, scheme, dim, generator, direction), dim)``;
    ``scheme`` is one of ``"lambda2"``, ``"uniform"``, ``"random"`` (see :func:`head_weights`).
    """
    return mix_heads(A, head_weights(A, scheme, dim=dim, generator=generator, direction=direction), dim=dim)
