"""The solvers behind tokenrank and lambda2 (chains_lite.core.solvers): auto's choice between power
steps and GMRES, converged heads leaving the batch, the chunked float32 products, against scipy."""

import numpy as np
import pytest
import torch

import chains_lite as cl
from chains_lite.core.synthetic import attention_like
from references import ref_lambda2, ref_steady_state, ref_teleport

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
