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
only needs products ``V P``, so ``stepper`` asks the lazy chain for them, and the iterative
solvers never see the difference. What such a chain provides is declared by
``chains_lite.core.numerics.LazyChain``; ``chains_lite/core/lazy.py`` implements it. The solvers
behind ``tokenrank`` and ``lambda2`` are in :mod:`chains_lite.core.solvers`.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch

from .numerics import Start, check_distribution, check_index, is_lazy, not_a_chain, start_vector, uniform, work_dtype
from .solvers import (DENSE_COPIES, DENSE_MAX_N, arnoldi_lambda2, auto_steady_state, dense_steady_state, finite,
                      krylov_steady_state, normalize, outgoing_matrix, pieces, power_steady_state, stepper)

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


def _carries_grad(A) -> bool:
    """Whether autograd would track a computation on ``A`` (a tensor, or a lazy chain's tensors)."""
    if not torch.is_grad_enabled():
        return False
    if isinstance(A, torch.Tensor):
        return A.requires_grad
    parts = list(vars(A).values()) if is_lazy(A) else []
    parts += [c for v in parts if isinstance(v, (list, tuple)) for c in v]
    return any(_carries_grad(v) for v in parts if isinstance(v, torch.Tensor) or is_lazy(v))


def _refuse_grad(A, what: str, instead: str) -> None:
    """``ValueError`` if gradients would flow into Krylov iterations (they update their arrays in
    place, so ``backward()`` fails with torch's in-place error)."""
    if _carries_grad(A):
        raise ValueError(f"{what} runs Krylov (Arnoldi / GMRES) iterations, which do not support "
                         f"autograd, and A requires grad: {instead}")


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
    return outgoing_matrix(A)


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
    step = stepper(A, direction)
    history = []
    for _ in range(steps):
        v = normalize(step(v.unsqueeze(-2)).squeeze(-2))
        history.append(v)
    finite(v, "bounce")  # NaN stays NaN: the last step tells
    return torch.stack(history, -2) if return_all else v


def row_select(A, i: int) -> torch.Tensor:
    """Row ``i`` of A: the attention token ``i`` gives, one incoming bounce from ``e_i``.

    A: ``(..., n, n)``. Returns ``(..., n)``, summing to 1.
    """
    A = check_stochastic(A)
    i = check_index(i, A.shape[-1])
    return normalize(finite(A.row(i), "row_select") if is_lazy(A) else A[..., i, :])


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
    all chains to ``"krylov"`` after three steps (``auto_steady_state``; the outgoing
    direction and matrix-free chains take ``"krylov"``). Its power steps multiply float32
    pieces of 64 entries and sum them in float64 (``chunked_times``); they stop only where
    their rounding floor, at most 6e-8 / (1 - r) in L1 measured (``r`` the contraction rate),
    is 4x below ``tol``. On float32 attention-like heads (``bench_core.py``) ``"auto"`` gave
    L1 error <= 5e-8 at ``tol=1e-6`` (``"power"``: 2.4e-7).

    * ``method="dense"``: the linear system below solved directly in float64 (``O(n^3)``,
      exact, fastest for short sequences).
    * ``method="krylov"``: ``pi`` solves the linear system
      ``pi (I - alpha P + alpha e p^T) = p^T``. GMRES (``chains_lite.core.krylov``) solves it in
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
      ``power_steady_state``), so float32 attention reaches ``tol`` as with the other solvers.

    In the iterative solvers chains that converge leave the batch early, and both warn if
    ``max_iter`` is reached.

    A ``LazyAttention`` is solved on dense chunks of heads when they fit its ``max_bytes``,
    matrix-free otherwise; ``"dense"`` then raises ``ValueError`` and ``"auto"`` takes
    ``"krylov"`` (on dense chunks it chooses as for a tensor).

    Gradients: ``"dense"`` and ``"power"`` support autograd; ``"krylov"`` refuses an ``A`` that
    requires grad (``ValueError``), and ``"auto"`` then takes ``"dense"`` above ``n = 256``.
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
    solvers = {"dense": dense_steady_state, "krylov": krylov_steady_state,
               "power": power_steady_state, "auto": auto_steady_state}
    if method == "auto":  # (a lazy chain whose dense matrices do not fit its budget: krylov)
        small = n <= DENSE_MAX_N and (not is_lazy(A) or A.chunk_size(DENSE_COPIES) > 0)
        method = "dense" if small else "auto"
    if method not in solvers:
        raise ValueError(f"unknown method {method!r}; expected 'auto' or one of {tuple(solvers)}")
    if method == "krylov":
        _refuse_grad(A, "tokenrank(method='krylov')", "use method='dense' or 'power' for gradients, "
                     "or pass A.detach()")
    elif method == "auto" and _carries_grad(A) and not is_lazy(A):  # gradients flow through dense
        method = "dense"
    if alpha == 1.0:
        with torch.no_grad():  # a warning's check: no gradient needed
            _check_unique(A, direction)
    out = []
    for s, A_s in pieces(A, dense=method == "dense"):
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
    found = [arnoldi_lambda2(A_s, direction, 1e-4, 400, 64, near_one=True) for _, A_s in pieces(A)]
    l2, near = torch.cat([l for l, _ in found]), torch.cat([d for _, d in found])
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
    Arnoldi (``chains_lite.core.krylov``) from a zero-sum start builds the space of its bounces;
    the eigenvalues of the small projected matrix ``H`` (Ritz values; complex pairs come out
    as pairs) converge to the largest eigenvalues in a few dozen bounces, instead of the
    ``O(n^3)`` of a full ``eigvals``. A chain stops when its top Ritz pair ``(theta, s)`` has
    a residual ``|h_{k+1,k} s_k|`` below ``tol * |theta|`` (relative, as ARPACK's; absolute,
    ``tol * 0.01``, below ``|theta| = 0.01``) and leaves the batch, so fast-mixing heads stop
    after a dozen bounces while slow ones go on. A chain still unconverged after
    ``krylov_dim`` bounces restarts from the Schur vectors of its larger half of Ritz values
    (Krylov-Schur: the space keeps what it knew of the leading eigenvalues), and lambda2 warns
    if ``max_iter`` bounces are not enough.

    Accuracy, measured against float64 ``eigvals`` on attention-like heads
    (``benchmarks/bench_core.py``; float32 bounces): the eigenvalue's error is about 0.1 to 1
    times the residual (the chains are not normal), so ``tol=1e-4`` (default) gave
    |error| <= 3e-6 and ``tol=1e-5`` gave |error| <= 2e-7 on the heads of
    tests/test_core_chain.py (``tol=1e-4``: <= 5.3e-6 over eight sets of twelve 197-token
    heads); float32 rounding floors it there (``tol=1e-6`` gave the same errors). With restarts
    in a small space, ``krylov_dim=12``, ``tol=1e-5`` gave |error| <= 2.6e-7.
    A looser ``tol`` risks stopping on |lambda_3|: when the start vector has little of the
    lambda_2 direction, a head can converge to the next eigenvalue first (``tol=1e-3`` returned
    a value 1.9e-3 off on one of those 96 heads). Eigenvalues of nearly equal modulus (closer
    than about ``tol``) can be confused the same way; lower ``tol`` for such spectra.
    """
    _check_direction(direction)
    if not (_is_real(tol) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if not (_is_int(max_iter) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not (_is_int(krylov_dim) and krylov_dim >= 2):
        raise ValueError(f"krylov_dim must be an int >= 2, got {krylov_dim!r}")
    _refuse_grad(A, "lambda2 (and head_weights' 'lambda2' scheme)",
                 "pass A.detach() (|lambda_2| is computed, not differentiated)")
    A, rows = _checked_rows(A)
    n = A.shape[-1]
    batch = A.shape[:-2]
    if n == 1:
        return torch.zeros(batch, dtype=A.dtype, device=A.device)
    out = []
    for s, A_s in pieces(A.reshape(-1, n, n)):
        out.append(arnoldi_lambda2(A_s, direction, tol, max_iter, krylov_dim,
                            rows=None if rows is None else rows.reshape(-1, n)[s]))
    return torch.cat(out).reshape(batch)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


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
