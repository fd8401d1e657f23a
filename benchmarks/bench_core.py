"""Speed of lambda2 and TokenRank against the solvers a user would reach for, at equal accuracy.

    python benchmarks/bench_core.py [--device cpu|cuda] [--sizes 12x197,12x1024,1x4096,1x4096@4]
                                    [--repeats 3] [--out r.json]

Matrices are attention-like (``chains_lite.core.synthetic.attention_like``, seed 0: softmax of correlated
q.k, float32, |lambda2| spread from ~0.05 to ~0.99 over the heads). ``HxN@T`` fixes every head's
temperature at ``T`` (``1x4096@4``: one slowly mixing head; ``1x4096`` alone mixes fast).

Every method, ours included, is run at the loosest tolerance of a ladder whose measured error meets
the target, so rows compare equal accuracy; each entry states that tolerance and its error:

* lambda2, target |error| <= 1e-6 against float64 ``eigvals`` of the row-normalised float64 matrix
  (for n > 1024, ARPACK at ``tol=0`` with ``k=6``: a full ``eigvals`` takes minutes there).
  Peers: ARPACK (``scipy.sparse.linalg.eigs(k=3)``, one head at a time) in float64 and in float32.
  Ours: ``chains_lite.lambda2(tol=...)``.
* TokenRank (alpha = 0.99, uniform teleport), target L1 error <= 1e-6 against the float64 solution
  of ``pi (I - P') = 0, sum(pi) = 1``. Peers: the power iteration ``v <- alpha v A + (1 - alpha) p``
  until the L1 change is below its tolerance, in float32 and in float64; the float64 dense solve
  (``torch.linalg.solve_ex`` through ``chains_lite.core.numerics.batched_solve``: on the CPU on one
  thread, as torch 2.14.1's threaded batched LU hangs here for n above ~130); ARPACK ``k=1`` on ``P'^T`` (float64, one head at a time). Ours:
  ``chains_lite.tokenrank(tol=1e-6)`` (its tolerance is the target itself).

A peer that reaches no tolerance of its ladder is shown with its best error and left out of the
race. Times are min-max over ``--repeats`` runs after the ladder run (which is the warm-up); the
speed-up is best peer / ours and slowest peer / ours, from the minimum times. Conversions a user
needs (float32 to float64, to numpy) are timed with the method that needs them.

Entries note the work done: matvecs of ARPACK (counted in an extra, untimed run), head-bounces of
our lambda2 (heads in the batch summed over Arnoldi steps), steps of the power iteration.

Measured on the 2-core CPU with the other core's jobs stopped, one thread pinned to one core
(``OMP_NUM_THREADS=1 taskset -c 1``, torch 2.14.1, ``--repeats 5``, 2026-12-06); seconds (min), speed-up
of ours against the best peer at equal accuracy:

lambda2 (|error| <= 1e-6; tolerance used, head-bounces or matvecs):

=============  =====================  =====================  =====================  ============
heads x n      ours                   ARPACK fp64            ARPACK fp32            ours vs best
=============  =====================  =====================  =====================  ============
12 x 197       0.0073 (3e-5, 336)     0.0081 (1e-3, 395)     not reached            1.11x
12 x 1024      0.067 (3e-5, 293)      0.181 (1e-4, 454)      0.099 (1e-4, 454)      1.48x
1 x 4096       0.060 (3e-4, 20)       0.327 (1e-4, 36)       0.103 (1e-4, 36)       1.71x
1 x 4096 @4    0.074 (1e-3, 24)       0.459 (1e-2, 52)       0.147 (1e-2, 52)       1.99x
=============  =====================  =====================  =====================  ============

TokenRank (alpha = 0.99, L1 error <= 1e-6; ours at tol 1e-6 gave L1 error <= 2.4e-8 on every row):

=============  ======  ===================================  ============
heads x n      ours    best peer                            ours vs best
=============  ======  ===================================  ============
12 x 197       0.0038  dense fp64 0.0041                    1.08x
12 x 1024      0.137   ARPACK k=1 fp64 0.164 (282 matvecs)  1.19x
1 x 4096       0.047   power fp32 0.054 (8 steps)           1.14x
1 x 4096 @4    0.214   ARPACK k=1 fp64 0.335 (31 matvecs)   1.57x
=============  ======  ===================================  ============

ARPACK starts from a seeded vector (``arpack_start``), so its timed runs repeat the ladder run that
measured their accuracy. With scipy's random start they would not: at 1 x 4096 @4 one random start
met the target in fp32 at tol 1e-2 (36 matvecs), others needed tol 1e-5 (69 matvecs). Which
tolerance a start vector needs varies with the vector: at 12 x 197 this one lets ARPACK fp64 stop
at tol 1e-3.

Where the targets stand (ours at least as fast as the best peer, at equal accuracy, at every size):
both hold at all four sizes in this run.

* TokenRank: at 12 x 197 ``method="auto"`` takes the same float64 dense solve as the dense peer,
  so its ratio there is parity (1.02x to 1.60x between runs).
* lambda2 at 12 x 197 has the thinnest margin: 1.11x here, 1.14x and 1.05x in two more runs of
  that row (``--repeats 15``). Ours does fewer bounces than ARPACK does matvecs (336
  head-bounces against 395); the rest is fixed cost. A batched Arnoldi step costs about 27 us
  plus 6 us per head in the batch (torch dispatch on 197 x 197 pieces), and the convergence
  checks' host ``eigvals`` of the ``k x k`` projected matrices take about 40 % of the call (one
  64 x 64 ``eigvals`` costs as much as 80 head-steps; LAPACK's Hessenberg QR itself,
  ``dhseqr``, took as long as numpy's ``eigvals``). The alternatives, measured one at a time
  on this row: an absolute criterion (``residual <= tol``) needs tol 1e-5 for the target, 10.0
  ms a call against 8.3 ms with the relative one (``tol * |theta|``, as ARPACK's: it holds the
  fast heads, whose eigenvalues crowd at small moduli, to a tighter residual, so tol 3e-5
  meets the target); a first check after 8 steps instead of 16 is 7 % slower; copying the
  matrices of the chains that stay when others leave (``A[index]``) instead of bouncing them
  through views (``solvers.by_runs``, ``_to_front``) is 6 % slower here and at 12 x 1024
  costs a third of the call (90 against 67 ms).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse.linalg as sla
import torch

import chains_lite as cl
from chains_lite.core.numerics import batched_solve
from chains_lite.core.synthetic import attention_like

ALPHA = 0.99
TARGET = 1e-6  # |error| of lambda2, L1 error of TokenRank
ARPACK_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-8, 1e-10, 0.0)
LAMBDA2_TOLS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
MAX_STEPS = 5000  # of the power iteration peer
POWER_TOLS = (1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8, 1e-9, 1e-10)


def sync(device):
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str):
    """Wall times ``(repeats,)`` of ``fn()`` (the caller has warmed it up)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def loosest(make, tols, error):
    """The loosest ``tol`` whose ``make(tol)()`` has ``error <= TARGET``: ``(tol, err, info)``.

    ``make(tol)`` returns a callable giving ``(result, info)``; if no tol reaches the target,
    ``tol`` is None and ``err`` the best error seen (the ladder stops once tightening the
    tolerance three times in a row has not halved the error: a float32 floor. Twice is too
    few: at 12 x 197 one head's error plateaus at 5e-6 from tol 3e-4 to 3e-5, then drops to
    1.5e-7 at 1e-5)."""
    best, stalled = (None, float("inf"), None), 0
    for tol in tols:
        out, info = make(tol)()
        err = error(out)
        if err <= TARGET:
            return tol, err, info
        stalled = stalled + 1 if err > 0.5 * best[1] else 0
        if err < best[1]:
            best = (None, err, info)
        if stalled >= 3:
            break
    return best


# --------------------------------------------------------------------------- references
def ref_lambda2(A64: torch.Tensor) -> torch.Tensor:
    if A64.shape[-1] <= 1024:
        return torch.linalg.eigvals(A64).abs().sort(dim=-1, descending=True).values[..., 1]
    return torch.tensor([float(np.sort(np.abs(sla.eigs(a, k=6, tol=0, return_eigenvectors=False)))[-2])
                         for a in A64.cpu().numpy()], dtype=torch.float64)


def ref_tokenrank(A64: torch.Tensor) -> torch.Tensor:
    """float64 reference: ``pi (I - P') = 0`` with ``sum(pi) = 1`` (one equation replaced)."""
    P = cl.teleport(A64, ALPHA)
    n = P.shape[-1]
    M = (torch.eye(n, dtype=P.dtype, device=P.device) - P).mT.clone()
    M[..., -1, :] = 1.0
    b = torch.zeros(*P.shape[:-1], 1, dtype=P.dtype, device=P.device)
    b[..., -1, 0] = 1.0
    return batched_solve(M, b)[0][..., 0]


# --------------------------------------------------------------------------- lambda2 peers
def arpack_start(n: int, dtype) -> np.ndarray:
    """ARPACK's start vector ``(n,)``: seeded, so that the timed runs repeat the ladder run that
    measured their accuracy (scipy's default start is random: a timed run could stop less
    accurate than its tolerance's ladder run, or more)."""
    return np.random.default_rng(0).standard_normal(n).astype(dtype)


def arpack_lambda2(A, dtype, tol):
    """|lambda2| per head by ARPACK (``eigs(k=3)``: 1, then lambda2 or a complex pair)."""
    def run():
        out = []
        for a in A.cpu().numpy().astype(dtype):
            w = sla.eigs(a, k=3, tol=tol, v0=arpack_start(len(a), dtype), return_eigenvectors=False)
            out.append(np.sort(np.abs(w))[-2])
        return torch.tensor(out, dtype=torch.float64), ""
    return run


def arpack_lambda2_matvecs(A, dtype, tol) -> int:
    """The matvecs ``arpack_lambda2`` spends over all heads (an untimed run: counting through a
    ``LinearOperator`` would slow the timed one)."""
    count = 0
    for a in A.cpu().numpy().astype(dtype):
        calls = [0]

        def matvec(x, a=a):
            calls[0] += 1
            return a @ x
        sla.eigs(sla.LinearOperator(a.shape, matvec=matvec, dtype=dtype), k=3, tol=tol,
                 v0=arpack_start(len(a), dtype), return_eigenvectors=False)
        count += calls[0]
    return count


def ours_lambda2_bounces(A, tol) -> int:
    """Head-bounces ``chains_lite.lambda2`` spends (heads in the batch, summed over its Arnoldi
    steps; an untimed run)."""
    from chains_lite.core import solvers
    extend, sizes = solvers.extend, []

    def counting(V, H, j, w):
        sizes.append(V.shape[0])
        return extend(V, H, j, w)
    solvers.extend = counting
    try:
        cl.lambda2(A, tol=tol)
    finally:
        solvers.extend = extend
    return sum(sizes)


# --------------------------------------------------------------------------- TokenRank peers
def power_tokenrank(A, dtype, tol):
    """``v <- alpha v A + (1 - alpha) p`` on every head until the largest L1 change is below tol."""
    def run():
        P = A.to(dtype)
        P = P / P.sum(-1, keepdim=True)  # as the reference: float32 rows sum to 1 only to ~1e-7
        n = P.shape[-1]
        v = torch.full((*P.shape[:-2], 1, n), 1.0 / n, dtype=dtype, device=P.device)
        for k in range(1, MAX_STEPS + 1):
            v_new = ALPHA * (v @ P) + (1 - ALPHA) / n
            v_new = v_new / v_new.sum(-1, keepdim=True)
            change = (v_new - v).abs().sum(-1).max()
            v = v_new
            if change < tol:
                break
        return v[..., 0, :], f"{k} steps"
    return run


def dense_tokenrank(A):
    """The float64 linear solve ``pi (I - alpha A) = (1 - alpha) p`` (exact up to rounding)."""
    def run():
        A64 = A.double()
        A64 = A64 / A64.sum(-1, keepdim=True)
        n = A64.shape[-1]
        M = torch.eye(n, dtype=A64.dtype, device=A64.device) - ALPHA * A64
        b = torch.full((*A64.shape[:-2], n, 1), (1 - ALPHA) / n, dtype=A64.dtype, device=A64.device)
        pi = batched_solve(M.mT, b)[0][..., 0]
        return pi / pi.sum(-1, keepdim=True), ""
    return run


def arpack_tokenrank(A, tol):
    """The leading eigenvector of ``P'^T`` by ARPACK (``k=1``), ``P'`` never formed."""
    def run():
        out, count = [], [0]
        for a in A.cpu().double().numpy():
            a = a / a.sum(-1, keepdims=True)
            n = a.shape[-1]

            def matvec(x, a=a):
                count[0] += 1
                x = x.ravel()
                return ALPHA * (a.T @ x) + (1 - ALPHA) / n * x.sum()
            op = sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
            _, vec = sla.eigs(op, k=1, tol=tol, v0=np.full(n, 1.0 / n))
            v = np.abs(vec[:, 0].real)
            out.append(v / v.sum())
        return torch.tensor(np.stack(out)), f"{count[0]} matvecs"
    return run


# --------------------------------------------------------------------------- one row
def race(entries, repeats, device):
    """Time each reached entry ``{name: (fn, tol, err, info)}``; min-max per entry."""
    rows = {}
    for name, (fn, tol, err, info) in entries.items():
        times = timed(fn, repeats, device) if tol is not None else None
        rows[name] = {"tol": tol, "err": err, "info": info,
                      "t_min": min(times) if times else None, "t_max": max(times) if times else None}
    return rows


def run(heads: int, n: int, temperature, device: str, repeats: int) -> dict:
    kw = {} if temperature is None else {"temperature": (temperature, temperature)}
    A = attention_like(heads, n, seed=0, **kw).to(device)
    A64 = A.double() / A.double().sum(-1, keepdim=True)
    row = {"heads": heads, "n": n, "temperature": temperature, "device": device}
    l2_ref = ref_lambda2(A64).to(device)
    row["lambda2_range"] = [float(l2_ref.min()), float(l2_ref.max())]
    l2_err = lambda l: float((l.double().to(device) - l2_ref).abs().max())
    lam = {}
    for name, make, tols in [
        ("ours", lambda t: lambda: (cl.lambda2(A, tol=t), ""), LAMBDA2_TOLS),
        ("ARPACK fp64", lambda t: arpack_lambda2(A, np.float64, t), ARPACK_TOLS),
        ("ARPACK fp32", lambda t: arpack_lambda2(A, np.float32, t), ARPACK_TOLS),
    ]:
        tol, err, info = loosest(make, tols, l2_err)
        if tol is not None:
            info = (f"{ours_lambda2_bounces(A, tol)} head-bounces" if name == "ours" else
                    f"{arpack_lambda2_matvecs(A, np.float64 if '64' in name else np.float32, tol)} matvecs")
        lam[name] = (make(tol) if tol is not None else None, tol, err, info)
    row["lambda2"] = race(lam, repeats, device)

    pi = ref_tokenrank(A64)
    tr_err = lambda v: float((v.double().to(device) - pi).abs().sum(-1).max())
    tr = {}
    for name, make, tols in [
        ("ours", lambda t: lambda: (cl.tokenrank(A, alpha=ALPHA, tol=t), ""), (TARGET,)),
        ("power fp32", lambda t: power_tokenrank(A, torch.float32, t), POWER_TOLS),
        ("power fp64", lambda t: power_tokenrank(A, torch.float64, t), POWER_TOLS),
        ("dense fp64", lambda t: dense_tokenrank(A), (0.0,)),
        ("ARPACK k=1 fp64", lambda t: arpack_tokenrank(A, t), ARPACK_TOLS),
    ]:
        tol, err, info = loosest(make, tols, tr_err)
        tr[name] = (make(tol) if tol is not None else None, tol, err, info)
    row["tokenrank"] = race(tr, repeats, device)
    return row


# --------------------------------------------------------------------------- table
def _label(r):
    t = "" if r["temperature"] is None else f" @{r['temperature']:g}"
    return f"{r['heads']} x {r['n']}{t}"


def _cell(e):
    if e["tol"] is None:
        return f"not reached (best err {e['err']:.1e})"
    info = f", {e['info']}" if e["info"] else ""
    return f"{e['t_min']:.3f}-{e['t_max']:.3f} s (tol {e['tol']:g}, err {e['err']:.1e}{info})"


def _speedups(entries):
    peers = {k: e for k, e in entries.items() if k != "ours" and e["tol"] is not None}
    ours = entries["ours"]
    if not peers or ours["tol"] is None:
        return "n/a", "n/a", "n/a"
    best = min(peers, key=lambda k: peers[k]["t_min"])
    slow = max(peers, key=lambda k: peers[k]["t_min"])
    return (best, f"{peers[best]['t_min'] / ours['t_min']:.2f}x",
            f"{peers[slow]['t_min'] / ours['t_min']:.1f}x")


def print_table(rows):
    for what, title in [("lambda2", f"lambda2, target |error| <= {TARGET:g}"),
                        ("tokenrank", f"TokenRank, alpha = {ALPHA}, target L1 error <= {TARGET:g}")]:
        names = list(rows[0][what])
        print(f"\n{title}; seconds min-max over repeats (tolerance used, measured error)")
        print("| heads x n | lambda2 range | " + " | ".join(names)
              + " | best peer | ours vs best peer | ours vs slowest peer |")
        print("|---" * (len(names) + 5) + "|")
        for r in rows:
            best, vs_best, vs_slow = _speedups(r[what])
            print(f"| {_label(r)} | {r['lambda2_range'][0]:.2f}-{r['lambda2_range'][1]:.3f} | "
                  + " | ".join(_cell(r[what][k]) for k in names)
                  + f" | {best} | {vs_best} | {vs_slow} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="12x197,12x1024,1x4096,1x4096@4",
                    help="comma list of HEADSxN or HEADSxN@TEMPERATURE")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    sizes = []
    for s in args.sizes.split(","):
        shape, _, temp = s.partition("@")
        heads, n = (int(x) for x in shape.split("x"))
        sizes.append((heads, n, float(temp) if temp else None))
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"repeats={args.repeats}")
    rows = []
    for heads, n, temp in sizes:
        print(f"running {heads} x {n}{'' if temp is None else f' @{temp:g}'} ...", flush=True)
        rows.append(run(heads, n, temp, args.device, args.repeats))
    print_table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
