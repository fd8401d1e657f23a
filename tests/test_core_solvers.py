"""The solvers behind tokenrank and lambda2 (chains_lite.core.solvers): auto's choice between power
steps and GMRES, converged heads leaving the batch, the chunked float32 products, against scipy."""

import numpy as np
import pytest
import torch

import chains_lite as cl
from chains_lite.core.synthetic import attention_like
from references import ref_lambda2, ref_outgoing, ref_steady_state, ref_teleport

TOY = np.array([[0.01, 0.04, 0.02, 0.85, 0.08],
                [0.82, 0.04, 0.07, 0.01, 0.06],
                [0.80, 0.07, 0.03, 0.05, 0.05],
                [0.06, 0.06, 0.03, 0.04, 0.81],
                [0.53, 0.03, 0.03, 0.06, 0.35]])


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("temperature, gmres", [((0.5, 1.0), False), ((0.5, 4.0), True)])
def test_auto_tokenrank_power_first_then_gmres(monkeypatch, temperature, gmres):
    """auto on n > 256: fast-mixing chains finish in power steps (GMRES never called), a batch
    with a slowly mixing chain goes to GMRES; both meet tol against scipy's float64 eigenvector."""
    from chains_lite.core import solvers
    A = attention_like(4, 300, seed=8, temperature=temperature)
    A64 = (A.double() / A.double().sum(-1, keepdim=True)).numpy()
    ref = np.stack([ref_steady_state(ref_teleport(a, 0.99)) for a in A64])
    calls, krylov = [], solvers.krylov_steady_state
    monkeypatch.setattr(solvers, "krylov_steady_state", lambda *a, **k: calls.append(1) or krylov(*a, **k))
    for tol in (1e-5, 1e-6):
        calls.clear()
        pi = cl.tokenrank(A, alpha=0.99, tol=tol)
        assert np.abs(pi.double().numpy() - ref).sum(-1).max() <= tol
        assert bool(calls) == gmres
    calls.clear()  # below the float32 pieces' rounding floor: GMRES with float64 residuals
    pi = cl.tokenrank(A, alpha=0.99, tol=1e-9)
    assert calls and np.abs(pi.double().numpy() - ref).sum(-1).max() <= 1e-7  # float32 output


@pytest.mark.parametrize("direction", ["incoming", "outgoing"])
def test_lambda2_bounces_through_p_minus_j_over_n_or_stepper_alike(monkeypatch, direction):
    """Small chains bounce through an explicit ``P - J / n``, large ones through ``stepper`` less
    the mean: both give float64 eigvals' |lambda_2|, a column nobody attends to included."""
    from chains_lite.core import solvers
    A = attention_like(6, 90, seed=4).double()
    A[2, :, 7] = 0.0  # state 7 of head 2 dangles in the outgoing chain
    A = A / A.sum(-1, keepdim=True)
    P = A.numpy()
    if direction == "outgoing":
        P = np.stack([ref_outgoing(p) for p in P])
    ref = np.array([ref_lambda2(p) for p in P])
    deflated = cl.lambda2(A, direction=direction, tol=1e-10)
    monkeypatch.setattr(solvers, "_DEFLATE_MAX_N", 1)
    projected = cl.lambda2(A, direction=direction, tol=1e-10)
    np.testing.assert_allclose(deflated, ref, atol=1e-9)
    np.testing.assert_allclose(projected, ref, atol=1e-9)


def test_lambda2_fast_heads_leave_the_batch(monkeypatch):
    """A fast-mixing head stops bouncing once its Ritz pair converges; the slow one goes on."""
    from chains_lite.core import solvers
    A = torch.stack([attention_like(1, 120, seed=1, temperature=(0.5, 0.5))[0],
                     attention_like(1, 120, seed=1, temperature=(4.0, 4.0))[0]]).double()
    sizes, extend = [], solvers.extend

    def counting(V, H, j, w):
        sizes.append(V.shape[0])
        return extend(V, H, j, w)

    monkeypatch.setattr(solvers, "extend", counting)
    lam = cl.lambda2(A, tol=1e-8)
    np.testing.assert_allclose(lam, [ref_lambda2(a) for a in A.numpy()], atol=1e-8)
    assert sizes[0] == 2 and sizes[-1] == 1  # the batch shrank to the slow head
    assert sizes.count(2) < sizes.count(1)   # which needed more bounces than the fast one


def test_chunked_products_are_nearly_float64():
    """float32 pieces summed in float64: 10x closer to the float64 product than one float32 product."""
    from chains_lite.core.solvers import chunked_times
    A = attention_like(2, 2100, seed=7)  # n not a multiple of the piece length
    V = torch.rand(2, 1, 2100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A64 = A.double().numpy()
    ref = np.einsum("bki,bij->bkj", V.numpy() / A64.sum(-1)[:, None, :], A64)
    chunked = np.abs(chunked_times(A, A.sum(-1).double())(V).numpy() - ref).sum(-1).max()
    plain = ((V / A.double().sum(-1, keepdim=True).mT).float() @ A).double().numpy()
    plain = np.abs(plain - ref).sum(-1).max()
    assert chunked < 0.1 * plain and chunked < 3e-7 * np.abs(ref).sum(-1).max()


# ----------------------------------------------------------------------------- host reads
class HostReads:
    """Counts the calls that make the host wait for a CUDA device, made on the CPU: reading a
    tensor's values (``item``, ``tolist``, ``bool``, ``int``, ``float``, ``cpu``, ``numpy``),
    ``nonzero`` and boolean-mask indexing (their output size depends on the data), and the
    ``torch.linalg`` calls that check errors or compute on the host (``solve``, ``inv``,
    ``cholesky``, ``eig``, ``eigvals``). ``x.cpu().numpy()`` counts once."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy",
               "nonzero", "masked_select")
    LINALG = ("solve", "inv", "cholesky", "eig", "eigvals")

    def __init__(self, monkeypatch):
        self.count, self.host = 0, set()
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name), name))
        for name in self.LINALG:
            monkeypatch.setattr(torch.linalg, name, self._counting(getattr(torch.linalg, name), name))
        monkeypatch.setattr(torch, "nonzero", self._counting(torch.nonzero, "nonzero"))
        for name in ("__getitem__", "__setitem__"):
            monkeypatch.setattr(torch.Tensor, name, self._masking(getattr(torch.Tensor, name)))

    def _counting(self, fn, name):
        def wrapped(*args, **kwargs):
            first = args[0] if args else None
            if not (name == "numpy" and id(first) in self.host):
                self.count += 1
            out = fn(*args, **kwargs)
            if name == "cpu":
                self.host.add(id(out))
            return out
        return wrapped

    def _masking(self, fn):
        def wrapped(self_, idx, *rest):
            parts = idx if isinstance(idx, tuple) else (idx,)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts):
                self.count += 1
            return fn(self_, idx, *rest)
        return wrapped


def count_bounces(monkeypatch):
    """Patches the solvers' float32 products to count their calls (batched bounces)."""
    from chains_lite.core import solvers
    calls = [0]

    def counted(make, float32_only):
        def build(*args, **kwargs):
            fn = make(*args, **kwargs)
            if float32_only and (len(args) > 2 and args[2] or kwargs.get("float64")):
                return fn

            def step(V):
                calls[0] += 1
                return fn(V)
            step.dangling = getattr(fn, "dangling", False)
            return step
        return build

    monkeypatch.setattr(solvers, "stepper", counted(solvers.stepper, True))
    monkeypatch.setattr(solvers, "chunked_times", counted(solvers.chunked_times, False))
    bounce = solvers._DeflatedBounce.__call__  # lambda2's products at small n

    def deflated(self, V):
        calls[0] += 1
        return bounce(self, V)
    monkeypatch.setattr(solvers._DeflatedBounce, "__call__", deflated)
    return calls


# a constant allowance: validating A (chain.py: finite, non-negative, row sums) and checking
# the result (finite), a few reads in all
READS_PER_SOLVE = 8


@pytest.mark.parametrize("temperature, solve", [
    ((1.0, 3.0), lambda A: cl.tokenrank(A, alpha=0.99, method="power")),
    ((1.0, 4.0), lambda A: cl.tokenrank(A, alpha=0.99, method="power", direction="outgoing")),
    ((1.0, 4.0), lambda A: cl.tokenrank(A, alpha=0.99, method="auto")),      # slow chains: GMRES
    ((1.0, 4.0), lambda A: cl.tokenrank(A, alpha=0.99, method="krylov", direction="outgoing", tol=1e-8)),
    ((1.0, 4.0), lambda A: cl.lambda2(A, tol=1e-6)),
], ids=["power", "power-outgoing", "auto", "krylov-outgoing", "lambda2"])
def test_solvers_read_the_host_once_per_block_of_steps(monkeypatch, temperature, solve):
    """A solve of S batched bounces waits for the device at most ceil(S / k) + a constant times
    (k = SYNC_MIN): convergence is tested on the device and read only every k steps or more."""
    from chains_lite.core.solvers import SYNC_MIN
    A = attention_like(4, 300, seed=3, temperature=temperature)  # heads that mix slowly
    bounces = count_bounces(monkeypatch)
    reads = HostReads(monkeypatch)
    solve(A)
    assert bounces[0] >= 4 * SYNC_MIN  # enough steps for the bound to say something
    assert reads.count <= -(-bounces[0] // SYNC_MIN) + READS_PER_SOLVE, (reads.count, bounces[0])


def test_host_reads_counts_what_waits_for_the_device(monkeypatch):
    """The counter itself: reads of values and data-dependent shapes count, device math does not."""
    x = torch.arange(6.0)
    reads = HostReads(monkeypatch)
    y = (x * 2).sum() + torch.where(x > 2, x, 0.0).amax()  # stays on the device
    assert reads.count == 0
    float(y), bool(x.any()), x.tolist(), x[x > 2], x.nonzero(), x.cpu().numpy()
    assert reads.count == 6
    torch.linalg.eig(torch.eye(2))
    assert reads.count == 7


def test_a_converged_chain_stops_changing(monkeypatch):
    """Between host reads a chain that has converged is frozen: with reads forced SYNC_MAX steps
    apart, the fast chain of a batch with a slowly mixing one ends where it ends alone, not
    after the steps the batch takes until the next read (float64, so nothing is rounded away)."""
    from chains_lite.core import solvers
    fast = attention_like(1, 300, seed=5, temperature=(2.5, 2.5)).double()
    slow = attention_like(1, 300, seed=5, temperature=(4.0, 4.0)).double()
    alone = cl.tokenrank(fast, alpha=0.99, method="power")
    monkeypatch.setattr(solvers, "next_read", lambda step, predicted: step + solvers.SYNC_MAX)
    both = cl.tokenrank(torch.cat([fast, slow]), alpha=0.99, method="power")
    torch.testing.assert_close(both[0], alone[0], atol=1e-13, rtol=0)


def test_by_runs_calls_each_run_of_consecutive_chains_once_in_order():
    """On the CPU by_runs([0, 2, 3, 5], make) builds one function per run (0; 2-3; 5) on slices
    and hands each its rows of the block, in order; elsewhere one function on an index tensor."""
    from chains_lite.core.solvers import by_runs
    built = []

    def make(s):
        built.append((s.start, s.stop) if isinstance(s, slice) else tuple(s.shape))
        return lambda X: X + (s.start if isinstance(s, slice) else 0)  # which run a row took

    out = by_runs([0, 2, 3, 5], make, "cpu")(torch.zeros(4, 3))
    assert built == [(0, 1), (2, 4), (5, 6)]
    assert out[:, 0].tolist() == [0.0, 2.0, 2.0, 5.0]
    assert by_runs([1, 2, 3], make, "cpu")(torch.zeros(3, 1)).flatten().tolist() == [1.0] * 3
    built.clear()
    by_runs([0, 2, 3, 5], make, "meta")
    assert built == [(4,)]  # a device other than the CPU: one gathered batch


def watch_copies(monkeypatch, A):
    """A list that collects the indexings of ``A``'s memory (any view of it) by an index tensor
    or list: the ones that copy its chains."""
    copies, memory = [], A.untyped_storage().data_ptr()
    getitem = torch.Tensor.__getitem__

    def watching(self, idx):
        parts = idx if isinstance(idx, tuple) else (idx,)
        if (self.untyped_storage().data_ptr() == memory
                and any(isinstance(i, (torch.Tensor, list)) for i in parts)):
            copies.append(idx)
        return getitem(self, idx)
    monkeypatch.setattr(torch.Tensor, "__getitem__", watching)
    return copies


def test_auto_hands_its_slow_chains_to_gmres_on_views(monkeypatch):
    """auto's chains that need GMRES after others have finished go to it on views of A (one
    GMRES per run of consecutive chains), each from its last power iterate, and reach tol."""
    from chains_lite.core import solvers
    A = attention_like(5, 300, seed=3, temperature=(1.0, 4.0))
    A64 = (A.double() / A.double().sum(-1, keepdim=True)).numpy()
    ref = np.stack([ref_steady_state(ref_teleport(a, 0.99)) for a in A64])
    verdict = solvers._power_verdict

    def scripted(diffs, tol, max_rate):  # once a window is full: 0, 3 done; 1, 2, 4 to GMRES
        steps_left = verdict(diffs, tol, max_rate)[2]
        full = len(diffs) > solvers._WINDOW
        done = torch.tensor([True, False, False, True, False]) & full
        return done, ~done & full, steps_left
    monkeypatch.setattr(solvers, "_power_verdict", scripted)
    batches, krylov = [], solvers.krylov_steady_state
    monkeypatch.setattr(solvers, "krylov_steady_state",
                        lambda A_, *a: batches.append(A_.shape[0]) or krylov(A_, *a))
    copies = watch_copies(monkeypatch, A)
    pi = cl.tokenrank(A, alpha=0.99, method="auto", tol=1e-6)
    assert sorted(batches) == [1, 2] and not copies
    assert np.abs(pi.double().numpy() - ref).sum(-1)[[1, 2, 4]].max() <= 1e-6


def test_leaving_chains_do_not_copy_the_batch(monkeypatch):
    """When converged chains leave, lambda2, the power method and GMRES bounce the rest through
    views of A (no A[index] copy) and give each chain what it gets alone."""
    A = attention_like(6, 600, seed=2)  # above _DEFLATE_MAX_N: lambda2 bounces through stepper
    alone_l2 = torch.cat([cl.lambda2(A[i : i + 1], tol=1e-6) for i in range(6)])
    alone = {m: torch.cat([cl.tokenrank(A[i : i + 1], alpha=0.99, method=m) for i in range(6)])
             for m in ("power", "krylov", "auto")}
    copies = watch_copies(monkeypatch, A)
    torch.testing.assert_close(cl.lambda2(A, tol=1e-6), alone_l2, atol=1e-6, rtol=0)
    for method, pi in alone.items():
        torch.testing.assert_close(cl.tokenrank(A, alpha=0.99, method=method), pi, atol=1e-6,
                                   rtol=0)
    assert not copies


def test_thick_restart_keeps_a_krylov_schur_relation():
    """After a restart the basis is orthonormal, bounces by the new projected matrix
    (``V_p P = H^T V_{p+1}`` in row form, as Arnoldi's), and that matrix holds the larger half of
    the old Ritz values (complex pairs whole); a chain with fewer kept rows gets zero rows."""
    from chains_lite.core import solvers
    from chains_lite.core.krylov import arnoldi
    A = attention_like(3, 80, seed=6).double()
    P = A / A.sum(-1, keepdim=True)
    v = torch.randn(3, 80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    bounce = lambda x: (x.unsqueeze(-2) @ P).squeeze(-2)  # noqa: E731
    V, H = arnoldi(bounce, v - v.mean(-1, keepdim=True), 12)
    V_new, H_new, p = solvers._thick_restart(H.numpy(), V, H)
    Vp = V_new[:, : p + 1]
    torch.testing.assert_close(Vp @ Vp.mT, torch.eye(p + 1, dtype=torch.float64).expand(3, -1, -1),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(V_new[:, :p] @ P, H_new[:, : p + 1, :p].mT @ Vp, atol=1e-12, rtol=0)
    assert not V_new[:, p + 1 :].any() and not H_new[:, p + 1 :].any()
    for h_old, h_new in zip(H.numpy(), H_new.numpy()):
        old = np.sort(np.abs(np.linalg.eigvals(h_old[:12, :12])))[::-1]
        new = np.sort(np.abs(np.linalg.eigvals(h_new[:p, :p])))[::-1]
        kept = int((new > 1e-12).sum())  # rows padded to the batch's p hold zeros
        assert kept >= 6 and kept <= p
        np.testing.assert_allclose(new[:kept], old[:kept], rtol=1e-10)


def test_thick_restart_when_lapack_refuses_the_ordering(monkeypatch):
    """An ordering LAPACK refuses (moduli at the cut too close) is retried with a lower cut; if
    none succeeds, the chain goes on from the last Arnoldi vector alone."""
    import scipy.linalg
    from chains_lite.core import solvers
    from chains_lite.core.krylov import arnoldi
    A = attention_like(2, 80, seed=6).double()
    P = A / A.sum(-1, keepdim=True)
    v = torch.randn(2, 80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    V, H = arnoldi(lambda x: (x.unsqueeze(-2) @ P).squeeze(-2), v - v.mean(-1, keepdim=True), 12)
    schur, calls = scipy.linalg.schur, []

    def refusing(*args, refuse=1, **kwargs):  # refuses the first ``refuse`` orderings
        calls.append(1)
        if len(calls) <= refuse:
            raise np.linalg.LinAlgError("Leading eigenvalues do not satisfy sort condition.")
        return schur(*args, **kwargs)
    monkeypatch.setattr(scipy.linalg, "schur", refusing)
    _, _, p = solvers._thick_restart(H.numpy(), V, H)
    assert p >= 6 and len(calls) == 3  # chain 0 on its second try, chain 1 on its first
    monkeypatch.setattr(scipy.linalg, "schur", lambda *a, **k: refusing(*a, refuse=99, **k))
    V_new, H_new, p = solvers._thick_restart(H.numpy(), V, H)
    assert p == 0 and torch.equal(V_new[:, 0], V[:, 12]) and not H_new.any()


def test_top_ritz_residuals_match_eig(monkeypatch):
    """lambda2's check takes the top Ritz pair's residual from eigvals and one inverse-iteration
    solve: it equals |h_{k+1,k} s_k| for the unit eigenvector s of numpy's eig, and so does the
    eig fallback used when the shifted matrix is singular."""
    from chains_lite.core import solvers
    from chains_lite.core.krylov import arnoldi
    A = attention_like(6, 150, seed=3).double()
    P = A / A.sum(-1, keepdim=True)
    v = torch.randn(6, 150, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, H = arnoldi(lambda x: (x.unsqueeze(-2) @ P).squeeze(-2), v - v.mean(-1, keepdim=True), 8)
    H = H.numpy()
    k = H.shape[-1]
    values, S = np.linalg.eig(H[:, :k, :k])
    i = np.abs(values).argmax(-1)
    expected = np.abs(H[:, k, k - 1]) * np.abs(S[np.arange(6), k - 1, i])
    top, residual, dist = solvers._top_ritz(H)
    np.testing.assert_allclose(top, np.abs(values).max(-1), rtol=1e-12)
    assert expected.min() > 1e-6  # not yet converged: the residuals are well above rounding
    np.testing.assert_allclose(residual, expected, rtol=1e-6)
    np.testing.assert_allclose(dist, np.abs(values - 1).min(-1), rtol=1e-12)

    def singular(*args):
        raise np.linalg.LinAlgError("Singular matrix")
    monkeypatch.setattr(solvers, "_last_component", singular)
    np.testing.assert_allclose(solvers._top_ritz(H)[1], expected, rtol=1e-10)
