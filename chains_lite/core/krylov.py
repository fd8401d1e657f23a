"""Batched Krylov methods on row vectors: Arnoldi and restarted GMRES.

A chain is only ever touched through products ``x -> x M`` (a bounce), so everything here
takes a ``matvec`` that maps row vectors ``(B, n)`` to ``(B, n)``. The Krylov space
``span(v, v M, v M^2, ...)`` is the space of multi-bounces of ``v``; Arnoldi builds an
orthonormal basis of it, and

* GMRES picks the combination that best solves ``x M = b`` (TokenRank as a linear system),
* the eigenvalues of the small projected matrix ``H`` approximate the largest eigenvalues
  of ``M`` (|lambda_2|).

Both need far fewer bounces than the power method when the chain mixes slowly, because
they combine all bounces instead of keeping only the last one.

Host reads: ``arnoldi`` reads ``stop`` once every ``every`` steps; ``gmres`` reads which systems
are solved only at those checks (every 4 steps), so a solve of ``S`` matvecs waits for the
device about ``S / 4`` times (see ``chains_lite.core.solvers``).
"""
from __future__ import annotations

from typing import Callable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


def arnoldi(matvec: Matvec, v0: torch.Tensor, m: int,
            stop: Callable[[torch.Tensor, torch.Tensor], bool] | None = None, every: int = 4):
    """Up to ``m`` Arnoldi steps from the row vectors ``v0`` ``(B, n)``.

    Returns ``V`` ``(B, k+1, n)`` with orthonormal rows spanning the Krylov space and the
    upper-Hessenberg ``H`` ``(B, k+1, k)`` with ``V[:, :k] M = H^T V`` (row form of
    ``M V_k = V_{k+1} H``), where ``k <= m`` is the number of steps taken: every ``every``
    steps ``stop(V, H)`` (on the first k steps) may end the process early. Classical
    Gram-Schmidt done twice (stable, and batched as matrix products). A direction that
    vanishes (the space is exhausted) stays zero.
    """
    B, n = v0.shape
    V = v0.new_zeros(B, m + 1, n)
    H = v0.new_zeros(B, m + 1, m)
    V[:, 0] = v0 / v0.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    k = m
    for j in range(m):
        extend(V, H, j, matvec(V[:, j]))
        checkpoint = stop is not None and (j + 1) % every == 0 and j + 1 < m
        if checkpoint and stop(V[:, : j + 2], H[:, : j + 2, : j + 1]):
            k = j + 1
            break
    return V[:, : k + 1], H[:, : k + 1, :k]


def extend(V: torch.Tensor, H: torch.Tensor, j: int, w: torch.Tensor) -> None:
    """Arnoldi step ``j`` in place: orthonormalise ``w = V[:, j] M`` ``(B, n)`` or ``(B, 1, n)``
    against ``V[:, :j+1]``.

    Writes column ``j`` of ``H`` ``(B, m+1, m)`` and the new direction ``V[:, j+1]`` of ``V``
    ``(B, m+1, n)``. Classical Gram-Schmidt done twice (stable, and batched as matrix products);
    a direction that vanishes (the space is exhausted) stays zero. Every operation is batched
    and few, as at small ``n`` a step's cost is the number of operations, not their size.
    """
    basis = V[:, : j + 1]
    w = w.reshape(w.shape[0], 1, w.shape[-1])  # (B, 1, n)
    h = torch.bmm(w, basis.mT)  # (B, 1, j+1)
    w = torch.baddbmm(w, h, basis, alpha=-1)
    again = torch.bmm(w, basis.mT)
    w = torch.baddbmm(w, again, basis, alpha=-1)
    norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True)  # (B, 1, 1)
    column = H.mT[:, j : j + 1]  # (B, 1, m+1): column j of H, as a row
    column[..., : j + 1] = h + again
    column[..., j + 1 : j + 2] = norm
    # a vanishing direction (norm 0) divides to zeros
    torch.div(w, norm.clamp_min(1e-30), out=V[:, j + 1 : j + 2])


def _least_squares(H: torch.Tensor, beta: torch.Tensor):
    """``y = argmin |beta e_1 - H y|`` and that minimum, for ``H`` ``(B, k+1, k)``.

    Normal equations in float64 on the tiny ``k x k`` system (fast on CPU and GPU); the
    ridge of 1e-14 * trace only matters after a breakdown, where it zeroes the dead column.
    """
    H64 = H.double()
    G = H64.mT @ H64
    ridge = (1e-14 * G.diagonal(dim1=-2, dim2=-1).sum(-1)).clamp_min(1e-300)  # > 0 for H = 0 too
    G = G + ridge[:, None, None] * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    rhs = H64[:, 0, :] * beta.double()[:, None]  # H^T (beta e_1)
    y = torch.linalg.solve_ex(G, rhs)[0]  # no error check: it would wait for the device
    res = (H64 @ y.unsqueeze(-1)).squeeze(-1)
    res[:, 0] -= beta.double()
    return y.to(H.dtype), res.norm(dim=-1).to(H.dtype)


def gmres(operator: Callable[[list[int]], Matvec], b: torch.Tensor, rtol: float = 1e-5,
          atol: torch.Tensor | float = 0.0, restart: int = 24, max_matvecs: int = 400,
          every: int = 4):
    """Solve ``x M = b`` for a batch of row vectors by restarted GMRES.

    b: ``(B, n)``. ``operator(ids)`` returns the matvec ``x -> x M`` for the systems ``ids`` (a
    host list of their indices in ``b``, increasing); it is called again only when systems that
    have converged leave the batch (at a restart). A system is done when
    ``|b - x M|_2 <= max(rtol * |b|_2, atol)``; ``atol`` may be a ``(B,)`` tensor. A cycle ends early once half its systems are solved,
    checked every ``every`` steps (each check is a host read; the residuals at a cycle's start
    are read on the host only where the last check found systems solved, which then leave at
    once; otherwise the systems they find solved stay, as zeros, until the cycle's first check). Returns ``x`` ``(B, n)`` and the number of (batched) matvecs spent.
    """
    B, n = b.shape
    x = torch.zeros_like(b)
    limit = torch.maximum(rtol * b.norm(dim=-1), torch.as_tensor(atol, dtype=b.dtype, device=b.device))
    todo = list(range(B))  # on the host: which systems are still in the batch
    idx = torch.arange(B, device=b.device)
    matvec = operator(todo)
    m = max(1, min(restart, n))
    spent, expect_leave = 0, False
    while todo and spent < max_matvecs:
        r = b[idx] - matvec(x[idx])
        beta = r.norm(dim=-1)
        lim = limit[idx]
        # no host read here: systems already solved ride along as zeros (y = 0 leaves them be)
        # and leave at the end of the cycle, from the flags its checks read
        solved = beta <= lim
        if expect_leave:  # the last check found systems solved: read which, and drop them now
            keep = [not f for f in solved.tolist()]
            if not all(keep):
                stay = [i for i, f in enumerate(keep) if f]
                todo = [todo[i] for i in stay]
                if not todo:
                    break
                sel = torch.tensor(stay, dtype=torch.long, device=b.device)
                idx, r, beta, lim, solved = idx[sel], r[sel], beta[sel], lim[sel], solved[sel]
                matvec = operator(todo)
        r = torch.where(solved[:, None], 0.0, r)
        beta = torch.where(solved, 0.0, beta)
        flags = []

        def stop(V, H):  # the check's one host read: solved at the start, solved by now
            host = torch.cat([solved, _least_squares(H, beta)[1] <= lim]).tolist()
            flags[:] = [host[: len(todo)], host[len(todo):]]
            live = [now for start, now in zip(*flags) if not start]
            # end the cycle once half the systems are solved: they leave at the restart, so the
            # slow ones do not keep the fast ones bouncing (a restart costs the slow ones little)
            return not live or sum(live) >= 0.5 * len(live)

        V, H = arnoldi(matvec, r, min(m, max_matvecs - spent), stop=stop, every=every)
        spent += H.shape[-1] + 1
        y, _ = _least_squares(H, beta)
        x[idx] = x[idx] + (y.unsqueeze(-2) @ V[:, :-1]).squeeze(-2)
        start = flags[0] if flags else solved.tolist()  # a cycle too short for a check reads here
        expect_leave = any(now for first, now in zip(*flags) if not first) if flags else False
        if any(start):
            stay = [i for i, f in enumerate(start) if not f]
            todo = [todo[i] for i in stay]
            if not todo:
                break
            idx = idx[torch.tensor(stay, dtype=torch.long, device=b.device)]
            matvec = operator(todo)
    return x, spent
