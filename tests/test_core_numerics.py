"""Tests of chains_lite.core.numerics against independent references (numpy float64, hand-built vectors),
and of the LazyChain interface: conforming objects pass, others are rejected by name."""
import numpy as np
import pytest
import torch

import chains_lite as cl
from chains_lite.core import numerics as nm
from chains_lite.core.synthetic import attention_qk


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64])
def test_work_dtype_keeps_float64_and_computes_everything_else_in_float32(dtype):
    assert nm.work_dtype(dtype) == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("shape", [(5, 7), (3, 300, 20), (2, 2, 129, 4)])
def test_rowsum_float64_matches_numpy(shape):
    A = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ref = np.asarray(A, dtype=np.float64).sum(-1)
    out = nm.rowsum_float64(A)
    assert out.dtype == torch.float64 and out.shape == shape[:-1]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-14)


@pytest.mark.parametrize("m, block", [(5, 128), (300, 128), (300, 7)])
@pytest.mark.parametrize("vdtype", [torch.float32, torch.float64])
def test_matmul_rows_matches_numpy(m, block, vdtype):
    g = torch.Generator().manual_seed(1)
    V, A = torch.rand(2, 3, m, generator=g, dtype=vdtype), torch.rand(2, m, 11, generator=g)
    out = nm.matmul_rows(V, A, block)
    ref = np.asarray(V, dtype=np.float64) @ np.asarray(A, dtype=np.float64)
    assert out.dtype == vdtype and out.shape == (2, 3, 11)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5 if vdtype == torch.float32 else 1e-12)
    assert nm.matmul_float64(V.float(), A, block).dtype == torch.float64


def test_check_index_wraps_negatives_and_names_the_problem():
    assert nm.check_index(-1, 5) == 4 and nm.check_index(torch.tensor(2), 5) == 2
    with pytest.raises(ValueError, match="token index 5 is out of range for n = 5"):
        nm.check_index(5, 5)
    with pytest.raises(ValueError, match="query must be an int, got float"):
        nm.check_index(1.0, 5, "query")
    with pytest.raises(ValueError, match="must be an int, got bool"):
        nm.check_index(True, 5)


def test_start_vector_uniform_one_hot_and_normalised_tensor():
    A = torch.eye(4, dtype=torch.float64)
    assert torch.equal(nm.start_vector("uniform", A), torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.equal(nm.start_vector(-1, A), torch.tensor([0.0, 0, 0, 1], dtype=torch.float64))
    v = nm.start_vector(torch.tensor([[1.0, 3, 0, 0]]), A)
    assert v.dtype == torch.float64 and torch.equal(v, torch.tensor([[0.25, 0.75, 0, 0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown start 'hub'"):
        nm.start_vector("hub", A)
    with pytest.raises(ValueError, match="v0 has negative entries"):
        nm.start_vector(torch.tensor([1.0, -1, 1, 1]), A)
    with pytest.raises(ValueError, match=r"v0 must have shape \(\.\.\., 4\)"):
        nm.start_vector(torch.ones(3), A)


def test_lazy_chains_conform_and_tensors_do_not():
    q, k = attention_qk(3, 8, 4, seed=0)  # 3 heads, n = 8
    lazy = cl.LazyAttention(q, k)
    mixed = cl.mix_heads(lazy, torch.full((3,), 1 / 3))
    assert nm.is_lazy(lazy) and nm.is_lazy(mixed)
    assert nm.missing_members(lazy) == [] and nm.missing_members(mixed) == []
    assert not nm.is_lazy(lazy.dense()) and not nm.is_lazy(np.eye(3))


class _ProductsOnly:
    """Has the product seam but not the rest of a lazy chain."""
    shape = torch.Size((4, 4))

    def products(self, float64=False):
        raise AssertionError("never called")


def test_a_non_conforming_object_is_rejected_by_name():
    obj = _ProductsOnly()
    assert not nm.is_lazy(obj)
    assert "row" in nm.missing_members(obj) and "products" not in nm.missing_members(obj)
    with pytest.raises(TypeError, match=r"lazy chain \(chains_lite.core.numerics.LazyChain\); "
                                        r"_ProductsOnly lacks .*row"):
        cl.bounce(obj, 0)
    with pytest.raises(TypeError, match="object lacks"):
        cl.check_stochastic(object())


_SOLVE_SCRIPT = """
import numpy as np, torch
from chains_lite import tokenrank
from chains_lite.core.numerics import batched_solve
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
M = torch.eye(197, dtype=torch.float64) + 0.01 * torch.rand(16, 197, 197, dtype=torch.float64, generator=g)
b = torch.rand(16, 197, 1, dtype=torch.float64, generator=g)
x, info = batched_solve(M.mT, b)
assert (info == 0).all()
assert np.abs(x.numpy() - np.linalg.solve(M.mT.numpy(), b.numpy())).max() < 1e-10
A = torch.softmax(torch.randn(16, 197, 197, generator=g), -1)
pi = tokenrank(A, method="dense")
P = 0.99 * A.double().numpy() + 0.01 / 197
w, v = np.linalg.eig(np.swapaxes(P, 1, 2))
ref = np.stack([np.real(v[i][:, np.argmax(np.real(w[i]))]) for i in range(16)])
ref /= ref.sum(1, keepdims=True)
assert np.abs(pi.double().numpy() - ref).max() < 1e-6
print("ok")
"""


def test_batched_solve_with_two_threads_matches_numpy():
    # two threads on a batch of 197 x 197 systems: torch 2.14.1's threaded batched LU fails there
    # (MKL error, then a hang), so this runs in a child process with a timeout
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _SOLVE_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert "MKL ERROR" not in out.stderr
