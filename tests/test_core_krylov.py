"""Tests of chains_lite.core.krylov against dense linear algebra."""
import numpy as np
import torch

from chains_lite.core.krylov import arnoldi, gmres


def random_system(B=4, n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(B, n, n, generator=g, dtype=torch.float64) / n ** 0.5
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    return M, b


def test_arnoldi_relation_and_orthonormality():
    M, b = random_system()
    V, H = arnoldi(lambda x: (x.unsqueeze(-2) @ M).squeeze(-2), b, 10)
    assert V.shape == (4, 11, 30) and H.shape == (4, 11, 10)
    torch.testing.assert_close(V @ V.mT, torch.eye(11, dtype=torch.float64).expand(4, 11, 11))
    torch.testing.assert_close(V[:, :10] @ M, H.mT @ V)  # row form of M V_k = V_{k+1} H
    assert (H.tril(-2) == 0).all()  # upper Hessenberg


def test_arnoldi_ritz_values_find_the_largest_eigenvalues():
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))[0]
    eig = torch.cat([torch.tensor([0.95, -0.9, 0.85]), 0.3 * torch.rand(47, generator=g)]).double()
    M = (Q * eig) @ Q.T  # symmetric, known spectrum
    V, H = arnoldi(lambda x: x @ M, torch.ones(1, 50, dtype=torch.float64), 30)
    ritz = torch.linalg.eigvals(H[0, :30, :30]).real.sort().values
    np.testing.assert_allclose(ritz[[0, -2, -1]], [-0.9, 0.85, 0.95], atol=1e-8)


def test_arnoldi_breakdown_leaves_zero_directions():
    n = 6  # the Krylov space of a 6-dim problem is exhausted after 6 steps
    M, b = random_system(B=1, n=n)
    V, H = arnoldi(lambda x: (x.unsqueeze(-2) @ M).squeeze(-2), b, 8)
    assert torch.isfinite(V).all() and torch.isfinite(H).all()
    assert H[0, 6, 5].abs() < 1e-10


def test_gmres_matches_dense_solve():
    M, b = random_system(B=5, n=40, seed=2)
    x, spent = gmres(lambda idx: (lambda v: (v.unsqueeze(-2) @ M[idx]).squeeze(-2)), b,
                     rtol=1e-12, restart=10)
    ref = torch.linalg.solve(M.mT, b.unsqueeze(-1)).squeeze(-1)  # x M = b  <=>  M^T x^T = b^T
    torch.testing.assert_close(x, ref, atol=1e-9, rtol=0)
    assert 0 < spent <= 400


def test_gmres_solves_easy_systems_first():
    """Systems that converge leave the batch: an identity system costs nothing extra."""
    M, b = random_system(B=2, n=40, seed=3)
    M[0] = torch.eye(40, dtype=torch.float64)
    seen = []

    def operator(ids):
        seen.append(list(ids))
        return lambda v: (v.unsqueeze(-2) @ M[ids]).squeeze(-2)

    x, _ = gmres(operator, b, rtol=1e-12, restart=5)
    torch.testing.assert_close(x[0], b[0])
    assert [1] in seen  # the identity system left after its first cycle


def test_extend_takes_row_vectors_with_or_without_their_middle_axis():
    """extend(V, H, j, w) gives the same step for w (B, n) and w (B, 1, n)."""
    from chains_lite.core.krylov import extend
    g = torch.Generator().manual_seed(0)
    V = torch.zeros(3, 5, 40)
    V[:, 0] = torch.nn.functional.normalize(torch.randn(3, 40, generator=g), dim=-1)
    w = torch.randn(3, 40, generator=g)
    out = []
    for shape in ((3, 40), (3, 1, 40)):
        V_, H_ = V.clone(), torch.zeros(3, 5, 4)
        extend(V_, H_, 0, w.reshape(shape))
        out.append((V_, H_))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=0)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=0)
    assert abs(float(out[0][0][:, 1].norm(dim=-1).mean()) - 1) < 1e-6
