"""The solvers behind :func:`~chains_lite.core.chain.tokenrank` and
:func:`~chains_lite.core.chain.lambda2`, on chains that the lesson API has validated.

* Bounces without forming ``P``: :func:`stepper` (``V -> V P`` for the incoming or outgoing chain,
  dense or matrix-free).
* Steady states of ``B`` teleported chains ``(B, n, n)``: :func:`dense_steady_state` (float64 LU),
  :func:`krylov_steady_state` (GMRES with float64 refinement), :func:`power_steady_state` (the
  paper's power method, float64 iterates), :func:`auto_steady_state` (power steps for chains that
  mix fast, GMRES for the rest).
* |lambda_2| of ``B`` chains: :func:`arnoldi_lambda2` (batched Arnoldi on the zero-sum subspace).

Host reads. The loops test convergence on the device and read the verdict on the host only at
chosen steps: each read (``.tolist()``, ``bool()``, ``.cpu()`` of a device tensor) waits for the
device to finish every queued step, and the device then idles until the host has queued the next
ones, about one step's time on a GPU. Between reads a chain that has converged is frozen by a
mask (``torch.where``), so it keeps the iterate at which it converged; at a read, converged chains
leave the batch. The next read comes where the contraction-rate estimate predicts the next chain
to finish, but at least :data:`SYNC_MIN` and at most :data:`SYNC_MAX` steps later: a read every
``k = SYNC_MIN`` steps or fewer saves ``k - 1`` waits per ``k`` steps, while a prediction that
comes short costs at most ``k - 1`` steps of frozen chains. So a solve of ``S`` steps reads the
host at most about ``ceil(S / SYNC_MIN)`` times plus a constant (``tests/test_core_solvers.py``
counts them), and usually far fewer. Host-to-device copies (the indices of the chains that stay,
a restarted basis) come right after a read, when the device's queue is empty.

Accuracy and the reasons behind each choice are in :func:`~chains_lite.core.chain.tokenrank`'s
and ``lambda2``'s docstrings.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Callable

import numpy as np
import scipy.linalg
import torch

from .krylov import extend, gmres
from .numerics import LazyChain, batched_solve, is_lazy, matmul_float64, rowsum_float64


def outgoing_matrix(A: torch.Tensor) -> torch.Tensor:
    """``(..., n, n)`` validated ``A`` -> the outgoing chain ``P = A_l^T``, ``A_l = A / colsum``; a
    column nobody attends to (sum 0) is a dangling state that jumps uniformly, as in PageRank."""
    n = A.shape[-1]
    cols = A.sum(-2, keepdim=True)
    A_l = torch.where(cols > 0, A / cols.clamp_min(torch.finfo(A.dtype).tiny), 1.0 / n)
    return A_l.mT


def stepper(A: torch.Tensor | LazyChain, direction: str, float64: bool = False,
             rows: torch.Tensor | None = None,
             dangling: bool | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``step(V) = V P`` for row vectors ``V`` ``(..., m, n)``, without forming ``P``.

    ``A`` must already be validated. For the outgoing chain, ``V A_l^T = (A_l V^T)^T`` and
    ``A_l V^T = A (V^T / colsum)``, so only the column sums are stored. ``float64``:
    accumulate in float64 (for residuals) without a float64 copy of ``A``. ``rows``: the
    float64 row sums ``(..., n)`` of ``A`` if already known. ``dangling``: whether a column of
    some chain sums to 0, if known (read on the host otherwise; a solver passes the answer for
    the whole batch to the steppers of its sub-batches: the jump term is exact zero where no
    column dangles). ``step.dangling`` holds the answer used.
    """
    times, times_t, colsums = (A.products(float64) if is_lazy(A)
                               else dense_products(A, float64, rows))
    if direction == "incoming":
        times.dangling = False
        return times
    n = A.shape[-1]
    cols = colsums()  # (..., 1, n): column sums of the row-normalised A
    gaps = cols <= 0
    inv = torch.where(gaps, 0.0, 1.0 / cols.clamp_min(torch.finfo(A.dtype).tiny))
    if dangling is None:
        dangling = bool(gaps.any())
    if not dangling:
        step = lambda V: times_t(V * inv)  # noqa: E731
    else:
        step = lambda V: times_t(V * inv) + (V * gaps).sum(-1, keepdim=True) / n  # noqa: E731
    step.dangling = dangling
    return step


def dense_products(A: torch.Tensor, float64: bool, rows: torch.Tensor | None):
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


def row_sums(A) -> torch.Tensor:
    """Row sums ``(..., n)`` in float64; a lazy chain's products are row-normalised already."""
    if is_lazy(A):
        return torch.ones(A.shape[:-1], dtype=torch.float64, device=A.device)
    return rowsum_float64(A)


def normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.sum(-1, keepdim=True)


def finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x``, after checking that a lazy chain's products gave finite numbers (a validated dense
    ``A`` cannot give NaN; a ``LazyChain`` from elsewhere can)."""
    if not torch.isfinite(x).all():
        raise not_finite(what)
    return x


def not_finite(what: str) -> ValueError:
    return ValueError(f"{what}: the chain's products are not finite (NaN or inf); for attention "
                      "from q and k, the logits q k^T * scale overflow float32")


SYNC_MIN = 4  # k: steps between two host reads of the convergence flags, at least
SYNC_MAX = 32  # and at most (a read also compacts the batch)


def next_read(step: int, predicted: float) -> int:
    """The step after ``step`` at which a loop reads its flags on the host: ``predicted`` steps
    later (when the rate estimate says the next chain finishes) plus one (a read one step late
    costs a step, one too early up to ``SYNC_MIN``), clamped to ``[SYNC_MIN, SYNC_MAX]``."""
    if not math.isfinite(predicted):
        return step + SYNC_MAX
    return step + int(min(max(math.ceil(predicted) + 1, SYNC_MIN), SYNC_MAX))


def read_flags(flags: list[torch.Tensor], steps_left: torch.Tensor, gone: torch.Tensor):
    """One host read: the boolean masks ``flags`` (each ``(B,)``) as lists, and the fewest
    predicted ``steps_left`` ``(B,)`` among the chains not ``gone`` (inf if none)."""
    fewest = torch.where(gone, torch.inf, steps_left.double()).amin(0, keepdim=True)
    host = torch.cat([f.double() for f in flags] + [fewest]).tolist()
    B = gone.shape[0]
    return [[x > 0.5 for x in host[i * B:(i + 1) * B]] for i in range(len(flags))], host[-1]


def index(ids: list[int], device) -> torch.Tensor:
    """Host indices as a device tensor (a copy made right after a read: the queue is empty)."""
    return torch.tensor(ids, dtype=torch.long, device=device)


def by_runs(ids: list[int], make: Callable, device) -> Callable:
    """One function of row blocks ``X`` ``(len(ids), ...)`` for the chains ``ids`` (increasing
    indices into a batch) from ``make(s)``, the function for the chains ``s`` of the batch (a
    slice, or an index tensor).

    On the CPU ``make`` gets slices, so it builds on views of the batch (``A[s]``) and when
    converged chains leave, the matrices of those that stay are not copied: a copy of
    ``A[ids]`` costs about two bounces per chain there, most of it in faults on the fresh memory
    (a third of a lambda2 call at 12 x 1024). Each run of consecutive ``ids`` is one call; their
    outputs are concatenated. On a GPU, where a copy is fast and each call launches kernels,
    ``make`` gets the index tensor of all ``ids`` (one copy, one call).
    """
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            runs.append(slice(ids[start], ids[i - 1] + 1))
            start = i
    if len(runs) == 1:
        return make(runs[0])
    if torch.device(device).type != "cpu":
        return make(index(ids, device))
    parts = [make(run) for run in runs]
    sizes = [run.stop - run.start for run in runs]

    def joined(X):
        return torch.cat([f(x) for f, x in zip(parts, X.split(sizes))])
    joined.dangling = getattr(parts[0], "dangling", False)
    return joined


def pieces(A, dense: bool = False):
    """``(batch slice, chains)`` pieces of ``B`` chains ``(B, n, n)`` to solve one at a time.

    A tensor is one piece. A lazy chain comes as dense chunks of chains that fit its memory
    budget (each solved at dense speed), else whole and matrix-free; ``dense``: the solver
    needs the entries (raises ``ValueError`` if even one chain does not fit).
    """
    if not is_lazy(A):
        return [(slice(None), A)]
    # iterative solvers: the chunk, a solver's copy of it, the next chunk while it is built
    return A.pieces(copies=DENSE_COPIES if dense else 3, dense=dense)


DENSE_MAX_N = 256  # below this a float64 LU solve beats any iteration (bench_core.py)
DENSE_COPIES = 12  # float32 copies of A that the float64 dense solve holds at its peak


def dense_steady_state(A, p, alpha, direction, tol, max_iter):
    """``pi (I - alpha P + alpha e p^T) = p^T`` by a float64 LU solve; ``(B, n, n)`` -> ``(B, n)``."""
    # M built in place in one float64 copy of A (allocating the float64 matrix is half the time)
    if direction == "incoming":
        P = A.to(torch.float64, copy=True)
        M = P.mul_(-alpha / P.sum(-1, keepdim=True))
    else:
        P = outgoing_matrix(A.double())
        M = P * (-alpha / P.sum(-1, keepdim=True))
    M.diagonal(dim1=-2, dim2=-1).add_(1.0)
    p64 = p.double()
    M.add_(alpha * p64.unsqueeze(-2))
    pi, info = batched_solve(M, p64.unsqueeze(-2), left=False)  # pi M = p^T
    pi = pi.squeeze(-2)
    if (info != 0).any() or not torch.isfinite(pi).all():
        raise ValueError("the chain has no unique steady state (alpha = 1 on a reducible chain?); "
                         "use alpha < 1")
    return normalize(pi.clamp_min(0)).to(A.dtype)


def krylov_steady_state(A, p, alpha, direction, tol, max_iter, x0=None):
    """Steady states of ``B`` teleported chains by GMRES with float64 refinement.

    ``A`` ``(B, n, n)``, ``p`` ``(B, n)`` -> ``(B, n)``. With ``M = I - alpha P + alpha e p^T``
    (nonsingular for alpha < 1; for alpha = 1 when the steady state is unique),
    ``pi M = p^T`` is the fixed point of the teleported chain with ``pi e = 1``. ``x0``: a
    float64 start ``(B, n)`` (zero if None). One host read per refinement round, besides
    GMRES's own (``chains_lite.core.krylov.gmres``).
    """
    n = A.shape[-1]
    rows = row_sums(A)  # once: summing A costs about a bounce
    exact_step = stepper(A, direction, True, rows)
    dangling = exact_step.dangling  # read once for the whole batch

    def operator(p_, step):
        return lambda x: (x - alpha * step(x.unsqueeze(-2)).squeeze(-2)
                          + alpha * x.sum(-1, keepdim=True) * p_)

    def subset(ids):  # the float32 operator for the systems ids (they leave as they converge)
        return by_runs(ids, lambda s: operator(
            p[s], stepper(A[s], direction, rows=rows[s], dangling=dangling)), A.device)

    # the error of x (and of x / sum(x)) is at most 3 |r|_1 / (1 - alpha) in L1: (I - alpha P)
    # has an inverse of L1 norm <= 1 / (1 - alpha), and sum(x) - 1 = -sum(r)
    certify = tol * max(1.0 - alpha, 1e-3) / 4
    exact = operator(p.double(), exact_step)
    x = torch.zeros_like(p, dtype=torch.float64) if x0 is None else x0.double()
    r = p.double() if x0 is None else p.double() - exact(x)
    spent, converged = 0, False
    while spent < max_iter:  # each round: a float32 GMRES solve for the float64 residual
        d, used = gmres(subset, r.to(A.dtype), rtol=1e-5, atol=0.1 * certify / n ** 0.5,
                        max_matvecs=max_iter - spent)
        spent += used
        x = x + d.double()
        r = p.double() - exact(x)
        ok, converged = torch.stack([torch.isfinite(r).all(),
                                     (r.abs().sum(-1) <= certify).all()]).tolist()  # one read
        if not ok:
            raise not_finite("tokenrank")
        if converged or used == 0:  # used == 0: float32 GMRES cannot shrink this residual
            break
    if not converged:
        warnings.warn(f"tokenrank did not reach tol={tol} within max_iter={max_iter} bounces "
                      "(alpha = 1 on a chain without a unique steady state?); returning the "
                      "last iterate", RuntimeWarning, stacklevel=3)
    return normalize(x.clamp_min(0)).to(A.dtype)


def auto_steady_state(A, p, alpha, direction, tol, max_iter, rows=None):
    """Steady states of ``B`` chains ``(B, n, n)``: power steps first, GMRES for the slow chains.

    Chains that mix fast settle in a dozen power steps, fewer bounces than GMRES spends with its
    float64 residuals; slowly mixing ones would take hundreds. So every chain starts with power
    steps whose products are nearly float64-accurate at float32 cost (``chunked_times``). From
    the step sizes ``d_k = |v_k - v_{k-1}|_1`` the contraction rate ``r`` (the largest ratio of
    successive steps, those at rounding noise left out) predicts how many more steps a chain
    needs. A chain needs GMRES if it needs more than ``_POWER_LEFT`` more steps or the rounding
    floor of the products, ``_PROBE_FLOOR / (1 - r)`` in L1, is not 4x below ``tol``; it is done
    once its estimated error ``4 d_k r / (1 - r)`` (``r`` over the last ``_WINDOW`` steps) plus
    the floor is below ``tol``. Both verdicts are taken on the device at every step and freeze
    the chain; the host reads them after ``SYNC_MIN`` steps and then where the fewest
    predicted steps left end (``next_read``; at most ``2 SYNC_MIN`` steps apart while no chain
    has left). At a read where no chain has finished, if any
    needs GMRES every chain goes to GMRES (``krylov_steady_state``) as if it had been chosen at
    the start: GMRES pays its float64 residuals for that chain anyway, and fast chains leave it
    within a restart. Otherwise finished chains leave, and those that need GMRES go to it from
    their last iterate once the power steps end.
    ``(B, n, n)``, ``(B, n)`` -> ``(B, n)``; dense incoming chains only (others go to GMRES).
    ``rows``: the row sums ``(B, n)`` of ``A`` if known.
    """
    if is_lazy(A) or direction != "incoming":
        return krylov_steady_state(A, p, alpha, direction, tol, max_iter)
    p = p.double()
    B, device = A.shape[0], A.device
    out = p.clone()
    todo = list(range(B))  # chains still in power steps (on the host: no read needed)
    slow, starts = [], []  # chains handed to GMRES, and their last iterates
    p_ = p
    rows = A.sum(-1).double() if rows is None else rows
    times = chunked_times(A, rows)
    v = p_.unsqueeze(-2)  # (B, 1, n)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    handed = torch.zeros_like(finished)  # to GMRES
    steps_left = torch.zeros(B, dtype=torch.float64, device=device)
    diffs = []
    max_rate = min(alpha, 0.999)
    read_at, k = max(_FIRST_LOOK, SYNC_MIN), 0
    for k in range(1, max_iter + 1):
        v_new = normalize(alpha * times(v) + (1.0 - alpha) * p_.unsqueeze(-2))
        diffs = (diffs + [(v_new - v).abs().sum((-2, -1))])[-(_WINDOW + 1):]
        gone = finished | handed
        v = torch.where(gone[:, None, None], v, v_new)  # a chain that left keeps its iterate
        if len(diffs) >= _FIRST_LOOK:
            done, hand_over, steps_left = _power_verdict(diffs, tol, max_rate)
            finished = finished | (done & ~gone)
            handed = handed | (hand_over & ~gone)
        if k < read_at and k < max_iter:
            continue
        (is_done, is_slow), fewest = read_flags([finished, handed], steps_left, finished | handed)
        if any(is_slow) and len(todo) == B and not any(is_done):
            # GMRES pays its float64 residuals for a slow chain anyway, and chains that mix
            # fast leave it within a restart: all go, as if GMRES had been the choice (and A
            # is not copied)
            return krylov_steady_state(A, p.to(A.dtype), alpha, direction, tol, max(1, max_iter - k))
        # while every chain may still go to GMRES together, read again soon: a hand-over shows
        # in the rate after a few steps, and until it is read the batch steps in vain
        soon = 2 * SYNC_MIN if len(todo) == B else SYNC_MAX
        read_at = next_read(k, min(max(fewest, _WINDOW + 1 - len(diffs)), soon))
        if not any(is_done) and not any(is_slow):
            continue
        done_at = [i for i, f in enumerate(is_done) if f]
        slow_at = [i for i, f in enumerate(is_slow) if f]
        if done_at:
            out[index([todo[i] for i in done_at], device)] = v[index(done_at, device), 0]
        if slow_at:
            slow.append([todo[i] for i in slow_at])
            starts.append(v[index(slow_at, device), 0])
        keep = [i for i in range(len(todo)) if not (is_done[i] or is_slow[i])]
        if not keep:
            break
        sel = index(keep, device)
        todo = [todo[i] for i in keep]
        p_, v = p_[sel], v[sel]
        finished, handed, steps_left = finished[sel], handed[sel], steps_left[sel]
        diffs = [d[sel] for d in diffs]
        times = by_runs(todo, lambda s: chunked_times(A[s], rows[s]), device)
    else:  # max_iter power steps: GMRES gets no bounces left, and warns
        slow.append(todo)
        starts.append(v[:, 0])
    slow = [i for ids in slow for i in ids]
    if slow:  # GMRES for the slow chains (by_runs: on the CPU on views of A, no copies)
        order = sorted(range(len(slow)), key=slow.__getitem__)
        ids, starts = [slow[i] for i in order], torch.cat(starts)[index(order, device)]
        solve = by_runs(ids, lambda s: lambda x0: krylov_steady_state(
            A[s], p[s].to(A.dtype), alpha, direction, tol, max(1, max_iter - k), x0), device)
        out[index(ids, device)] = solve(starts).double()
    return finite(out, "tokenrank").to(A.dtype)


def _power_verdict(diffs, tol, max_rate):
    """From the last step sizes ``diffs`` (each ``(B,)``): which chains are done, which need GMRES,
    and the steps each still needs ``(B,)`` (see ``auto_steady_state``); on the device."""
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
    return done, hand_over, steps_left


_FIRST_LOOK = 3  # power steps before the first choice between power steps and GMRES
_PROBE_FLOOR = 1e-7  # L1 rounding floor times (1 - r) of power steps on chunked_times (6e-8 measured)
_STEP_NOISE = 1e-7  # L1 step size below which the power steps on chunked_times are rounding noise
_POWER_LEFT = 32  # power steps a chain may still need before it goes to GMRES instead
_CHUNK = 64  # terms per float32 partial sum in chunked_times


def chunked_times(A: torch.Tensor, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
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
    """Which sequences have converged ``(B,)``, and the steps each still needs ``(B,)``, from their
    last ``_WINDOW + 1`` step sizes ``(B,)`` each; on the device.

    For geometric convergence at rate ``r`` the error left after a step of size ``d`` is
    about ``d * r / (1 - r)``. ``r`` is the largest step-to-step ratio in the window (steps
    oscillate when a complex pair dominates), capped by ``max_rate``, and the estimate must
    be 4x below ``tol`` (with several slow modes the single-mode estimate runs low, about 2x
    measured). A sequence whose steps stopped shrinking at rounding ``noise`` is done too.
    """
    if len(steps) <= _WINDOW:
        return (torch.zeros_like(steps[-1], dtype=torch.bool),
                torch.full_like(steps[-1], _WINDOW + 1 - len(steps), dtype=torch.float64))
    D = torch.stack(steps)  # (W+1, B)
    ratio = (D[-1] / D[0].clamp_min(1e-30)) ** (1.0 / _WINDOW)  # mean rate over the window
    rate = (D[1:] / D[:-1].clamp_min(1e-30)).amax(0).clamp(0.0, max_rate)
    left = 4 * D[1:].amax(0) * rate / (1 - rate)
    done = left <= tol
    steps_left = torch.log(tol / left.clamp_min(1e-300)) / torch.log(rate.clamp_min(1e-3))
    # a NaN step (a lazy chain's products overflowed) ends the sequence: the caller checks
    return done | ((ratio >= 1) & (D.amax(0) <= noise)) | D[-1].isnan(), steps_left.double()


def power_steady_state(A, p, alpha, direction, tol, max_iter):
    """Steady states of ``B`` teleported chains: ``A`` ``(B, n, n)``, ``p`` ``(B, n)`` -> ``(B, n)``.

    Chains that have converged are frozen at once and leave the batch at the next host read
    (``next_read``), so slowly mixing heads do not make the fast ones iterate on. The iterates
    are float64: the fixed point of a float32 iteration is
    off by about eps32 / (1 - alpha |lambda_2|), 1e-5 in L1 at alpha = 0.99 on slow heads. Each
    bounce is ``v P = x P + (v - x) P`` around an anchor ``x`` whose ``x P`` is a float64 product
    (renewed every ``_ANCHOR`` steps); ``(v - x) P`` is small and goes in float32, so its rounding
    is far below ``tol`` at the cost of one float64 product per ``_ANCHOR`` float32 ones.
    """
    p = p.double()
    out = p.clone()
    device = A.device
    todo = list(range(A.shape[0]))  # chains still iterating (on the host: no read needed)
    rows = row_sums(A)  # once for both products: summing A costs about a bounce
    exact = stepper(A, direction, True, rows)
    dangling = exact.dangling
    step = stepper(A, direction, False, rows, dangling)
    v = p.unsqueeze(-2)  # (B, 1, n): the uniform start when p is uniform
    diffs = []  # the last _WINDOW + 1 step sizes |v_k - v_{k-1}|_1, each (B,)
    done = torch.zeros(A.shape[0], dtype=torch.bool, device=device)
    max_rate = min(alpha, 0.999)  # the teleported chain contracts L1 distances by alpha
    noise = 2 * torch.finfo(torch.float64).eps  # where float64 steps stall
    read_at = _WINDOW + 1  # no chain can be done before its window is full
    for k in range(max_iter):
        if k % _ANCHOR == 0:
            x, xP = v, exact(v)
        vP = xP + step((v - x).to(A.dtype)).double()
        v_new = normalize(alpha * vP + (1.0 - alpha) * p.unsqueeze(-2))
        diffs = (diffs + [(v_new - v).abs().sum((-2, -1))])[-(_WINDOW + 1):]
        v = torch.where(done[:, None, None], v, v_new)  # a converged chain keeps its iterate
        now, steps_left = _geometric_converged(diffs, tol, max_rate, noise)
        done = done | now
        if k + 1 < read_at and k + 1 < max_iter:
            continue
        (is_done,), fewest = read_flags([done], steps_left, done)
        read_at = next_read(k + 1, fewest)
        if not any(is_done):
            continue
        done_at = [i for i, f in enumerate(is_done) if f]
        out[index([todo[i] for i in done_at], device)] = v[index(done_at, device), 0]
        keep = [i for i, f in enumerate(is_done) if not f]
        if not keep:
            return finite(out, "tokenrank").to(A.dtype)
        sel = index(keep, device)
        todo = [todo[i] for i in keep]
        p, v, x, xP, done = p[sel], v[sel], x[sel], xP[sel], done[sel]
        diffs = [d[sel] for d in diffs]
        step = by_runs(todo, lambda s: stepper(A[s], direction, False, rows[s], dangling), device)
        exact = by_runs(todo, lambda s: stepper(A[s], direction, True, rows[s], dangling), device)
    warnings.warn(f"tokenrank did not reach tol={tol} in max_iter={max_iter} iterations for "
                  f"{len(todo)} chain(s) (alpha close to 1 on a slowly mixing chain?); "
                  "returning the last iterate", RuntimeWarning, stacklevel=3)
    out[index(todo, device)] = v[:, 0]
    return finite(out, "tokenrank").to(A.dtype)


_ANCHOR = 16  # float32 bounces per float64 one in the power method


def arnoldi_lambda2(A, direction, tol, max_iter, krylov_dim, near_one: bool = False, rows=None):
    """|lambda_2| ``(B,)`` of ``B`` chains ``(B, n, n)``, ``n >= 2`` (see ``lambda2``).

    The iterations run in ``torch.inference_mode`` (lambda2 is never differentiated; it saves
    about a tenth of the per-step overhead at small ``n``); the results are ordinary tensors.
    """
    with torch.inference_mode():
        lam, near = _arnoldi(A, direction, tol, max_iter, krylov_dim, rows)
    out = torch.from_numpy(lam).to(device=A.device, dtype=A.dtype)
    return (out, torch.from_numpy(near).to(A.device)) if near_one else out


def _arnoldi(A, direction, tol, max_iter, krylov_dim, rows=None):
    """``arnoldi_lambda2``'s iterations: |lambda_2| and the distance from 1 to the nearest Ritz
    value, ``(B,)`` numpy arrays each.

    One batched Arnoldi process; a chain whose top Ritz pair has converged leaves the batch at
    the check that finds it, so fast-mixing heads stop bouncing after a dozen steps while slow
    ones go on. A check copies the small projected matrices ``H`` to the host (its one read)
    and takes their Ritz values there (``_top_ritz``); checks come ``_check_every`` steps
    apart. A bounce is one product with ``P - J / n`` formed once (``_DeflatedBounce``, a copy
    of ``A``) up to ``_DEFLATE_MAX_N`` states, and ``stepper``'s product less its mean above
    (``_ZeroSumBounce``; lazy chains always). Chains left when the basis is full
    (``krylov_dim`` steps) restart from its leading Schur vectors (``_thick_restart``); ``H``
    then has a full row under its first ``p`` columns, but each row below the steps taken since
    holds one entry, ``h_{k+1,k}``, as ``_top_ritz``'s residual needs.

    The distance to 1 is 0 when the eigenvalue 1 is repeated (a reducible chain with several
    closed classes). ``rows``: the row sums ``(B, n)`` of ``A`` if known."""
    B, n, device = A.shape[0], A.shape[-1], A.device
    # float32 row sums (a third of the float64 ones' cost): their rounding, ~1e-7 relative,
    # is far below lambda2's float32 floor
    if rows is None:
        rows = row_sums(A) if is_lazy(A) else A.sum(-1).double()
    lam = np.zeros(B)
    near = np.zeros(B)
    todo = list(range(B))  # chains still iterating (on the host)
    # fixed seed: the answer must not depend on global RNG state
    g = torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=g, dtype=A.dtype).to(device)
    v = (v - v.mean()).expand(B, n)
    m = max(1, min(krylov_dim, n - 1))
    spent = 0
    if is_lazy(A) or n > _DEFLATE_MAX_N:
        step = _ZeroSumBounce(A, direction, rows)
    else:
        step = _DeflatedBounce(A, direction, rows)

    V = v.new_zeros(B, m + 1, n)
    H = v.new_zeros(B, m + 1, m)
    V[:, 0] = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    k = start = 0  # k: the basis's size; start: where this cycle's bounces began
    check = _FIRST_CHECK
    while True:
        while k < m and spent + k - start < max_iter:
            extend(V, H, k, step(V[:, k : k + 1]))
            k += 1
            if k < min(check, m, start + max_iter - spent):
                continue
            check = k + _check_every(k, n)
            Hk = H[:, : k + 1, :k].cpu().numpy().astype(np.float64)  # the check's one read
            if not np.isfinite(Hk).all():  # a lazy chain's overflowing products
                raise not_finite("lambda2")
            top, residual, dist = _top_ritz(Hk)
            # k = n - 1 steps span the whole zero-sum space: the Ritz values are exact
            done = (residual <= tol * np.maximum(top, _RELATIVE_FLOOR)) | (k == n - 1)
            if not done.any():
                continue
            ids = np.asarray(todo)
            lam[ids[done]], near[ids[done]] = top[done], dist[done]
            keep = ~done
            if not keep.any():
                return lam, near
            todo = ids[keep].tolist()
            stay = np.flatnonzero(keep).tolist()
            V, H, step = _to_front(V, stay), _to_front(H, stay), step.subset(stay)
            top, dist, Hk = top[keep], dist[keep], Hk[keep]
        spent += k - start
        if spent >= max_iter:
            warnings.warn(f"lambda2 did not converge to tol={tol} in max_iter={max_iter} bounces; "
                          "increase max_iter or krylov_dim", RuntimeWarning, stacklevel=4)
            lam[todo], near[todo] = top, dist
            return lam, near
        V, H, k = _thick_restart(Hk, V, H)
        start, check = k, k + _check_every(k, n)


# Arnoldi steps before lambda2's first convergence check (16 against 8: 7 % less a call at
# 12 x 197, where a check of all heads costs as much as five batched steps; 1 x 4096, 4 x 4096
# and 12 x 1024 within 2 %, the last one faster)
_FIRST_CHECK = 16

# lambda2's criterion is relative, residual <= tol * |theta|, down to |theta| = _RELATIVE_FLOOR
# and absolute below (a chain with lambda_2 = 0 converges too)
_RELATIVE_FLOOR = 0.01

# up to this many states lambda2 bounces through P - J / n formed once: a copy of A, at most
# 512^2 entries per head, buys one operation per step in place of four (about 12 % of a call at
# 12 x 197)
_DEFLATE_MAX_N = 512


class _ZeroSumBounce:
    """``V -> V P`` less its mean, ``(B, 1, n)`` zero-sum row vectors in and out (the mean is the
    component along the eigenvalue 1, which rounding leaks into), through ``stepper``: no copy
    of ``A``. ``subset(keep)``: the same for the chains at the positions ``keep`` (a host list,
    increasing) only, on the CPU on views of ``A`` (``by_runs``). ``ids``: the chains of ``A`` in
    the batch."""

    def __init__(self, A, direction, rows, dangling=None, ids=None):
        self.A, self.direction, self.rows = A, direction, rows
        self.ids = list(range(A.shape[0])) if ids is None else ids
        self.step = by_runs(self.ids, lambda s: stepper(A[s], direction, rows=rows[s],
                                                        dangling=dangling), A.device)

    def __call__(self, V):
        y = self.step(V)
        return y - y.mean(-1, keepdim=True)

    def subset(self, keep):
        return _ZeroSumBounce(self.A, self.direction, self.rows, self.step.dangling,
                              [self.ids[i] for i in keep])


class _DeflatedBounce:
    """``V -> V (P - J / n)`` ``(B, 1, n)``, the ``(B, n, n)`` matrix formed once (a copy of
    ``A``): for zero-sum ``V`` it is the bounce ``V P`` less its mean, in one product, as at
    small ``n`` a step costs its number of operations. ``P 1 = 1``, so the eigenvalues of
    ``P - J / n`` are those of ``P`` with the eigenvalue 1 replaced by 0, and every product is
    zero-sum up to rounding. ``subset(keep)``: the same for the chains at the positions ``keep``
    (a host list, increasing) only; their matrices move to the front of the same memory (fresh
    memory would cost its page faults)."""

    def __init__(self, A, direction, rows):
        R = A / rows.to(A.dtype).unsqueeze(-1)  # row-stochastic: the incoming chain
        if direction == "outgoing":  # the transposed chain, made contiguous by the subtraction
            self.D = outgoing_matrix(R) - 1.0 / A.shape[-1]
        else:
            self.D = R.sub_(1.0 / A.shape[-1])

    def __call__(self, V):
        return torch.bmm(V, self.D)

    def subset(self, keep):
        out = copy.copy(self)
        out.D = _to_front(self.D, keep)
        return out


def _to_front(T: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """``T[keep]`` for positions ``keep`` (a host list, increasing) along the first dim, made by
    moving those entries to the front of ``T`` itself: a view of ``T``, whose memory it changes.
    For the solvers' own buffers, where fresh memory would cost its page faults."""
    for j, i in enumerate(keep):  # i >= j: no entry is overwritten before it is read
        if i != j:
            T[j].copy_(T[i])
    return T[: len(keep)]


def _check_every(k: int, n: int) -> int:
    """Arnoldi steps between lambda2's checks at step ``k`` for chains of ``n`` states.

    A check (``eigvals`` of the ``k x k`` projected matrices, ~``k^3``, and one solve, on the
    host) takes about 0.2 ms per chain at ``k = 48`` on a CPU core, about one bounce of a
    1024-token head. Checks come ``50 k^3 / n^2`` steps apart (five at ``k = 48`` for 1024
    tokens: the constant balances the checks against the steps a chain bounces past its
    convergence, tuned with ``benchmarks/bench_core.py``), but at least every
    ``max(4, k // 3)`` steps (this cap sets the schedule below about 600 tokens, where a check
    costs as much as ten batched steps; its divisor is tuned at 12 x 197), and never closer than
    ``SYNC_MIN`` (each is a host read). The schedule depends on ``k`` and ``n`` only: a chain
    stops at the same step whatever batch it is in, so its answer does not depend on the batch.
    """
    return max(SYNC_MIN, min(max(4, k // _CHECK_SHARE), round(50 * k ** 3 / n ** 2)))


_CHECK_SHARE = 3  # checks at least every k / _CHECK_SHARE Arnoldi steps


def _thick_restart(Hk: np.ndarray, V: torch.Tensor, H: torch.Tensor):
    """A Krylov-Schur restart of a full Arnoldi basis: ``(V, H, p)`` to go on from step ``p``.

    ``Hk`` ``(B, m+1, m)``: the projected matrices (host, float64); ``V`` ``(B, m+1, n)`` and
    ``H`` ``(B, m+1, m)`` the basis and projected matrix on the device. With the real Schur
    form ``H_m = Z T Z^T`` ordered so that the ``m // 2`` largest Ritz values lead (a complex
    pair kept whole, ``s`` of them), the rows ``Z[:, :s]^T V_m`` span their invariant subspace
    and ``P`` maps them to ``T[:s, :s]`` on themselves plus ``h_{m+1,m} Z[m-1, :s]`` times the
    last Arnoldi vector. So the new basis is those ``s`` rows and the last vector, the new
    projected matrix ``T[:s, :s]`` over the row ``h_{m+1,m} Z[m-1, :s]``, and Arnoldi goes on
    from there keeping what the basis knew of the leading eigenvalues (Stewart, 2001). Chains
    whose ``s`` is below the batch's largest, ``p``, get zero rows (eigenvalue 0 in ``H``).
    """
    B, m = Hk.shape[0], Hk.shape[-1]
    keep = max(1, m // 2)
    Z = np.zeros((B, m, m))
    T = np.zeros((B, m, m))
    last = np.zeros((B, m))  # the row below T: h_{m+1,m} Z[m-1, :s]
    sizes = []
    for b in range(B):
        square = Hk[b, :m, :m]
        modulus = np.sort(np.abs(np.linalg.eigvals(square)))[-keep]
        s = 0  # if no ordering succeeds: this chain goes on from the last vector alone
        # LAPACK refuses an ordering whose eigenvalues, reordered, fall on the other side of
        # the cut (moduli that close): a cut further below the boundary then
        for margin in (1e-9, 1e-6, 1e-3):
            cut = modulus * (1 - margin)
            try:
                Tb, Zb, s = scipy.linalg.schur(square, output="real",
                                               sort=lambda re, im: math.hypot(re, im) >= cut)
            except np.linalg.LinAlgError:
                continue
            Z[b, :, :s], T[b, :s, :s] = Zb[:, :s], Tb[:s, :s]
            last[b, :s] = Hk[b, m, m - 1] * Zb[m - 1, :s]
            break
        sizes.append(s)
    # a kept complex pair can fill a basis of 2 (krylov_dim=2): go on from the last vector alone
    p = max(sizes) if max(sizes) < m else 0
    V_new, H_new = torch.zeros_like(V), torch.zeros_like(H)
    V_new[:, p] = V[:, m]
    if p:
        V_new[:, :p] = torch.from_numpy(Z[:, :, :p]).to(V).mT @ V[:, :m]
        H_new[:, :p, :p] = torch.from_numpy(T[:, :p, :p]).to(H)
        H_new[:, p, :p] = torch.from_numpy(last[:, :p]).to(H)
    return V_new, H_new, p


_START = np.random.default_rng(0).standard_normal(1024)  # inverse iteration's start


def _last_component(Hk: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``|s_k|`` ``(B,)`` for the unit vector ``s`` from one step of inverse iteration on
    ``Hk`` ``(B, k, k)`` with ``shift`` ``(B,)`` (complex), an eigenvalue of ``Hk``: its
    eigenvector.

    The shift is moved a relative ``1e-10`` off, so that an eigenvalue computed to rounding
    does not make the solve singular; one that still is raises ``LinAlgError``."""
    k = Hk.shape[-1]
    shift = shift * (1 + 1e-10) + 1e-30
    s = np.linalg.solve(Hk - shift[:, None, None] * np.eye(k), np.resize(_START, (k, 1)))[..., 0]
    return np.abs(s[:, -1]) / np.linalg.norm(s, axis=-1)


def _top_ritz(H: np.ndarray):
    """``(top, residual, dist)`` on the host for ``H`` ``(B, k+1, k)`` float64 from Arnoldi:
    the largest Ritz value modulus ``(B,)``, the residual ``(B,)`` of its Ritz pair and the
    distance ``(B,)`` from 1 to the nearest Ritz value.

    The residual of the Ritz pair ``(theta, V_k^T s)`` is ``|h_{k+1,k}| |s_k|`` for a unit
    eigenvector ``s`` of the square part ``H_k`` of ``H``. Only the Ritz values come from
    ``eigvals``; ``s`` comes from one step of inverse iteration (``_last_component``: the
    vectors of a full ``eig`` cost as much again as its values).
    """
    B, k = H.shape[0], H.shape[-1]
    Hk = H[:, :k, :k]
    values = np.linalg.eigvals(Hk)  # (B, k)
    theta = values[np.arange(B), np.abs(values).argmax(-1)]
    try:
        last = _last_component(Hk, theta)
    except np.linalg.LinAlgError:  # an exactly singular shifted H_k: the vectors of eig
        values, S = np.linalg.eig(Hk)
        last = np.abs(S[np.arange(B), k - 1, np.abs(values).argmax(-1)])
    residual = np.abs(H[:, k, k - 1]) * last
    return np.abs(theta), residual, np.abs(values - 1).min(-1)
