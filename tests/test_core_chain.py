"""Tests of chains_lite.core.chain against independent references (numpy / scipy, hand-computed cases)."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import chains_lite as cl
from chains_lite.core.synthetic import attention_like
from references import ref_lambda2, ref_outgoing, ref_steady_state, ref_teleport

TOY = np.array([[0.01, 0.04, 0.02, 0.85, 0.08],
                [0.82, 0.04, 0.07, 0.01, 0.06],
                [0.80, 0.07, 0.03, 0.05, 0.05],
                [0.06, 0.06, 0.03, 0.04, 0.81],
                [0.53, 0.03, 0.03, 0.06, 0.35]])


# ----------------------------------------------------------------------------- references


@st.composite
def stochastic(draw, max_n=12, batch=(), max_scale=6.0):
    """Positive right-stochastic matrices: softmax of bounded logits (irreducible, aperiodic)."""
    n = draw(st.integers(2, max_n))
    scale = draw(st.floats(0.1, max_scale))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, n, n, generator=g, dtype=torch.float64) * scale
    return torch.softmax(logits, -1)


# ----------------------------------------------------------------------------- the toy chain
def test_toy_chain_paper_figure_2():
    A = torch.tensor(TOY)
    assert cl.row_select(A, 4).argmax() == 0
    assert cl.bounce(A, 4, steps=2).argmax() == 3
    assert cl.column_sum(A).argmax() == 0
    assert cl.bounce(A, "uniform", steps=2).argmax() == 3
    ss = cl.tokenrank(A, alpha=1.0, tol=1e-12)
    assert ss.argmax() == 4
    np.testing.assert_allclose(ss, [0.278, 0.043, 0.029, 0.272, 0.379], atol=1e-3)
    np.testing.assert_allclose(ss, ref_steady_state(TOY), atol=1e-10)


def test_toy_lambda2_is_a_complex_pair():
    w = np.linalg.eigvals(TOY)
    second = w[np.argsort(-np.abs(w))[1]]
    assert abs(second.imag) > 1e-3  # the reference itself says: complex pair
    l2 = cl.lambda2(torch.tensor(TOY))
    assert abs(float(l2) - 0.6261) < 1e-4
    assert abs(float(l2) - abs(second)) < 1e-10


# ----------------------------------------------------------------------------- selections
def test_selections_hand_computed():
    A = torch.tensor(TOY)
    np.testing.assert_allclose(cl.row_select(A, 1), TOY[1])
    np.testing.assert_allclose(cl.row_select(A, -1), TOY[4])
    np.testing.assert_allclose(cl.column_select(A, 3), TOY[:, 3] / TOY[:, 3].sum())
    np.testing.assert_allclose(cl.column_sum(A), TOY.sum(0) / 5)


@settings(max_examples=40, deadline=None)
@given(stochastic(), st.integers(0, 100), st.integers(1, 5))
def test_bounce_equals_matrix_powers(A, i, steps):
    n = A.shape[-1]
    i = i % n
    P = A.numpy()
    out = cl.bounce(A, i, steps=steps, return_all=True)
    assert out.shape == (steps, n)
    v = np.eye(n)[i]
    for k in range(steps):
        v = v @ P
        np.testing.assert_allclose(out[k], v / v.sum(), atol=1e-12)
    # outgoing: v_{k+1} = A_l v_k with the column-normalised A_l
    out = cl.bounce(A, i, steps=steps, direction="outgoing", return_all=True)
    A_l = P / P.sum(0, keepdims=True)
    v = np.eye(n)[i]
    for k in range(steps):
        v = A_l @ v
        np.testing.assert_allclose(out[k], v / v.sum(), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(stochastic(), st.integers(1, 4))
def test_multi_bounce_is_repeated_selection(A, steps):
    """Bouncing from e_i is a mixture of row-selects weighted by the previous bounce."""
    n = A.shape[-1]
    rows = torch.stack([cl.row_select(A, j) for j in range(n)])
    seq = cl.bounce(A, 0, steps=steps, return_all=True)
    prev = torch.eye(n, dtype=A.dtype)[0]
    for k in range(steps):
        np.testing.assert_allclose(seq[k], prev @ rows, atol=1e-12)
        prev = seq[k]


def test_single_bounces_match_selections():
    A = attention_like(3, 20, seed=1)
    for j in (0, 7, 19):
        torch.testing.assert_close(cl.bounce(A, j, direction="incoming"), cl.row_select(A, j))
        torch.testing.assert_close(cl.bounce(A, j, direction="outgoing"), cl.column_select(A, j))
    torch.testing.assert_close(cl.bounce(A, "uniform"), cl.column_sum(A))


@settings(max_examples=30, deadline=None)
@given(stochastic(batch=(3,)), st.sampled_from(["incoming", "outgoing"]), st.integers(1, 6))
def test_outputs_are_distributions(A, direction, steps):
    for v in (cl.bounce(A, "uniform", steps, direction), cl.bounce(A, 1, steps, direction),
              cl.tokenrank(A, direction=direction), cl.column_sum(A), cl.column_select(A, 0)):
        assert (v >= 0).all()
        torch.testing.assert_close(v.sum(-1), torch.ones(3, dtype=v.dtype))


def test_bounce_tensor_start_broadcasts():
    A = attention_like(4, 16, seed=2)  # (4, 16, 16)
    v0 = torch.rand(16)
    out = cl.bounce(A, v0, steps=3)
    assert out.shape == (4, 16)
    expected = torch.stack([cl.bounce(A[h], v0, steps=3) for h in range(4)])
    torch.testing.assert_close(out, expected)
    v0b = torch.rand(2, 1, 16)  # extra leading dim broadcasts against the heads
    assert cl.bounce(A, v0b, steps=2).shape == (2, 4, 16)


# ----------------------------------------------------------------------------- teleport, TokenRank
@settings(max_examples=40, deadline=None)
@given(stochastic(), st.floats(0.05, 1.0))
def test_teleport_stochastic_and_scales_lambda2(A, alpha):
    T = cl.teleport(A, alpha)
    np.testing.assert_allclose(T, ref_teleport(A.numpy(), alpha), atol=1e-12)
    np.testing.assert_allclose(T.sum(-1), 1.0, atol=1e-12)
    assert (T >= 0).all()
    np.testing.assert_allclose(cl.lambda2(T, tol=1e-12), alpha * ref_lambda2(A.numpy()), atol=1e-8)


@settings(max_examples=60, deadline=None)
@given(stochastic(), st.floats(0.5, 1.0), st.sampled_from(["incoming", "outgoing"]),
       st.sampled_from(["dense", "krylov", "power"]))
def test_tokenrank_matches_eigenvector(A, alpha, direction, method):
    P = A.numpy() if direction == "incoming" else ref_outgoing(A.numpy())
    ref = ref_steady_state(ref_teleport(P, alpha))
    pi = cl.tokenrank(A, alpha=alpha, direction=direction, tol=1e-10, max_iter=20000,
                      method=method)
    np.testing.assert_allclose(pi, ref, atol=1e-8)
    # the fixed point: pi P' = pi
    Pp = cl.teleport(cl.transition_matrix(A, direction), alpha)
    np.testing.assert_allclose(pi @ Pp, pi, atol=1e-9)


def test_tokenrank_reaches_requested_accuracy_on_slow_chains():
    """Stopping on tolerance means the error, not just the last step, is below tol."""
    A = attention_like(12, 100, seed=3).double()  # |lambda2| up to ~0.98
    A = A / A.sum(-1, keepdim=True)  # float32 rows are stochastic only up to ~1e-7
    ref = np.stack([ref_steady_state(ref_teleport(a, 0.99)) for a in A.numpy()])
    for method in ("dense", "krylov", "power"):
        for tol in (1e-4, 1e-6, 1e-8):
            pi = cl.tokenrank(A, alpha=0.99, tol=tol, max_iter=10000, method=method)
            assert np.abs(pi.numpy() - ref).sum(-1).max() <= tol


@pytest.mark.parametrize("direction", ["incoming", "outgoing"])
def test_power_tokenrank_float32_reaches_tol_on_slow_chains(direction):
    """float32 attention at alpha = 0.99: a float32 iteration's fixed point sat ~1e-5 (L1) from the
    float64 answer whatever tol; the power method now meets tol like the other solvers."""
    A = attention_like(12, 100, seed=3)                       # |lambda2| up to ~0.998
    A64 = (A.double() / A.double().sum(-1, keepdim=True)).numpy()
    P = A64 if direction == "incoming" else np.stack([ref_outgoing(a) for a in A64])
    ref = np.stack([ref_steady_state(ref_teleport(a, 0.99)) for a in P])
    for tol in (1e-6, 1e-7):
        pi = cl.tokenrank(A, alpha=0.99, direction=direction, tol=tol, method="power")
        assert pi.dtype == torch.float32
        assert np.abs(pi.double().numpy() - ref).sum(-1).max() <= tol


def test_krylov_tokenrank_float32_reaches_float64_accuracy():
    """float32 attention, float64-grade answer: GMRES in float32, residuals in float64."""
    A = attention_like(12, 150, seed=11)
    A64 = A.double() / A.double().sum(-1, keepdim=True)
    ref = np.stack([ref_steady_state(ref_teleport(a, 0.99)) for a in A64.numpy()])
    pi = cl.tokenrank(A, alpha=0.99, tol=1e-6)
    assert pi.dtype == torch.float32
    assert np.abs(pi.double().numpy() - ref).sum(-1).max() <= 1e-6


@pytest.mark.parametrize("method", ["auto", "dense", "krylov", "power"])
def test_tokenrank_leaves_float64_input_untouched(method):
    A = attention_like(2, 40, seed=9).double()
    before = A.clone()
    cl.tokenrank(A, method=method)
    assert torch.equal(A, before)


def test_tokenrank_personalization():
    A = attention_like(1, 30, seed=4)[0].double()
    p = torch.rand(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pi = cl.tokenrank(A, alpha=0.7, personalization=p, tol=1e-12)
    np.testing.assert_allclose(pi, ref_steady_state(ref_teleport(A.numpy(), 0.7, p.numpy())),
                               atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(stochastic(max_scale=3.0))  # not nearly reducible: alpha=1 power iteration must finish
def test_lazy_chain_keeps_steady_state(A):
    """Paper Sec. 4.1: A' = 0.5 (I + A) has the same steady state."""
    lazy = 0.5 * (torch.eye(A.shape[-1], dtype=A.dtype) + A)
    a = cl.tokenrank(A, alpha=1.0, tol=1e-9, max_iter=100000)
    b = cl.tokenrank(lazy, alpha=1.0, tol=1e-9, max_iter=100000)
    np.testing.assert_allclose(a, b, atol=2e-9)
    np.testing.assert_allclose(b, ref_steady_state(A.numpy()), atol=1e-9)


def test_tokenrank_warns_at_max_iter():
    eps = 1e-4
    A = torch.tensor([[1 - eps, eps], [eps, 1 - eps]])
    with pytest.warns(RuntimeWarning, match="max_iter"):
        cl.tokenrank(A, alpha=1.0, personalization=torch.tensor([1.0, 0.0]), max_iter=10,
                     method="power")
    with pytest.warns(RuntimeWarning, match="max_iter"):
        cl.tokenrank(attention_like(12, 100, seed=3), max_iter=3, method="krylov")
    with pytest.warns(RuntimeWarning, match="max_iter"):
        cl.lambda2(attention_like(12, 100, seed=3), tol=1e-12, max_iter=10)


# ----------------------------------------------------------------------------- lambda2
@settings(max_examples=40, deadline=None)
@given(stochastic(max_n=30), st.sampled_from(["incoming", "outgoing"]))
def test_lambda2_matches_eigvals(A, direction):
    P = A.numpy() if direction == "incoming" else ref_outgoing(A.numpy())
    assert abs(float(cl.lambda2(A, direction=direction, tol=1e-12)) - ref_lambda2(P)) < 1e-8


def test_lambda2_on_attention_like_heads():
    A = attention_like(12, 197, seed=5)
    ref = np.array([ref_lambda2(a) for a in A.double().numpy()])
    assert ref.min() < 0.2 and ref.max() > 0.9  # the generator spans slow and fast heads
    np.testing.assert_allclose(cl.lambda2(A), ref, atol=1e-3)


@pytest.mark.parametrize("tol, bound", [(1e-4, 3e-6), (1e-5, 2e-7)])
def test_lambda2_accuracy_matches_the_docstring(tol, bound):
    """The measured errors ``lambda2``'s docstring states, against float64 numpy eigvals, on
    float32 attention-like heads with slow, fast and nearly degenerate spectra."""
    for heads, n, seed in [(12, 197, 0), (12, 256, 1), (8, 300, 2)]:
        A = attention_like(heads, n, seed=seed)
        A64 = (A.double() / A.double().sum(-1, keepdim=True)).numpy()
        ref = np.array([ref_lambda2(a) for a in A64])
        err = np.abs(cl.lambda2(A, tol=tol).double().numpy() - ref).max()
        assert err <= bound, (heads, n, seed, err)


@pytest.mark.parametrize("tol, bound", [(1e-3, 1e-3), (1e-5, 1e-6)])
def test_lambda2_with_restarts(tol, bound):
    """A small Krylov space forces restarts; they must keep the leading directions, down to
    the float32 floor of the tolerance."""
    A = attention_like(8, 60, seed=12)
    ref = np.array([ref_lambda2(a) for a in A.double().numpy()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # must converge, not just stop at max_iter
        np.testing.assert_allclose(cl.lambda2(A, tol=tol, krylov_dim=12, max_iter=3000), ref,
                                   atol=bound)


def test_lambda2_converges_past_krylov_dim_on_nearly_reducible_heads():
    """Heads whose leading eigenvalues crowd near 1 (|lambda_2| 0.9997 to 0.99999) need more
    than ``krylov_dim`` bounces: after the restarts lambda2 still meets its default tol."""
    A = attention_like(4, 197, seed=3, temperature=(6.0, 6.0))
    ref = np.array([ref_lambda2(a) for a in (A.double() / A.double().sum(-1, keepdim=True)).numpy()])
    assert ref.min() > 0.9995
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(cl.lambda2(A), ref, atol=2e-5)


def test_lambda2_special_chains():
    blocks = torch.block_diag(torch.full((2, 2), 0.5), torch.full((3, 3), 1 / 3))
    assert cl.lambda2(blocks) == pytest.approx(1.0, abs=1e-6)  # reducible: two steady states
    cycle = torch.roll(torch.eye(4), 1, dims=1)
    assert cl.lambda2(cycle) == pytest.approx(1.0, abs=1e-6)  # periodic
    assert cl.lambda2(torch.full((6, 6), 1 / 6)) == pytest.approx(0.0, abs=1e-6)  # mixes in one step
    assert float(cl.lambda2(torch.ones(1, 1))) == 0.0
    two = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    assert cl.lambda2(two) == pytest.approx(0.6, abs=1e-6)  # trace - 1


# ----------------------------------------------------------------------------- batching, dtypes
def test_batched_equals_looped():
    A = attention_like(6, 40, seed=6).reshape(2, 3, 40, 40)
    looped = lambda f: torch.stack([torch.stack([f(A[b, h]) for h in range(3)]) for b in range(2)])
    torch.testing.assert_close(cl.tokenrank(A), looped(cl.tokenrank), atol=1e-6, rtol=0)
    torch.testing.assert_close(cl.lambda2(A), looped(cl.lambda2), atol=1e-3, rtol=0)
    f = lambda a: cl.bounce(a, 3, steps=3, direction="outgoing")
    torch.testing.assert_close(f(A), looped(f))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_float32_out(dtype):
    A = attention_like(4, 50, seed=7)
    Ah = A.to(dtype)
    for f in (cl.tokenrank, cl.lambda2, cl.column_sum, lambda a: cl.bounce(a, 0, 2)):
        out = f(Ah)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, f(A), atol=5e-2, rtol=0)
    assert cl.head_weights(Ah).dtype == torch.float32


# ----------------------------------------------------------------------------- heads
def test_head_weights_and_mixture():
    A = attention_like(5, 30, seed=8).reshape(1, 5, 30, 30)
    w = cl.head_weights(A, "lambda2")
    assert w.shape == (1, 5)
    l2 = np.array([ref_lambda2(a) for a in A[0].double().numpy()])
    np.testing.assert_allclose(w[0], l2 / l2.sum(), atol=1e-4)
    np.testing.assert_allclose(cl.head_weights(A, "uniform")[0], np.full(5, 0.2), atol=1e-7)
    r1 = cl.head_weights(A, "random", generator=torch.Generator().manual_seed(1))
    r2 = cl.head_weights(A, "random", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(r1.sum(-1), torch.ones(1))
    M = cl.mix_heads(A, w)
    assert M.shape == (1, 30, 30)
    manual = sum(w[0, h] * A[0, h] for h in range(5))
    torch.testing.assert_close(M[0], manual)
    torch.testing.assert_close(M.sum(-1), torch.ones(1, 30))
    # a 1-D weight vector over the head dim, and head dims other than -3
    torch.testing.assert_close(cl.mix_heads(A, w[0]), M)
    Ah = A.permute(1, 0, 2, 3)  # heads first
    torch.testing.assert_close(cl.mix_heads(Ah, cl.head_weights(Ah, "lambda2", dim=0), dim=0), M)


def test_lambda2_weights_favour_structured_head():
    noise = torch.softmax(torch.randn(50, 50, generator=torch.Generator().manual_seed(0)), -1)
    structured = attention_like(12, 50, seed=9)[-1]
    w = cl.head_weights(torch.stack([noise, structured]), "lambda2")
    assert w[1] > 3 * w[0]


# ----------------------------------------------------------------------------- bad input
A5 = torch.tensor(TOY, dtype=torch.float32)


@pytest.mark.parametrize("call, match", [
    (lambda: cl.tokenrank(torch.rand(3, 4)), "square"),
    (lambda: cl.tokenrank(torch.rand(4)), "square"),
    (lambda: cl.lambda2(A5 - 0.02), "negative|sum to 1"),
    (lambda: cl.lambda2(torch.tensor([[1.5, -0.5], [0.5, 0.5]])), "negative"),
    (lambda: cl.column_sum(A5 * 1.2), "sum to 1"),
    (lambda: cl.bounce(A5.clone().fill_(float("nan")), 0), "NaN"),
    (lambda: cl.bounce(torch.where(torch.eye(5) > 0, float("inf"), A5), 0), "NaN or inf"),
    (lambda: cl.row_select(A5, 5), "out of range"),
    (lambda: cl.column_select(A5, -6), "out of range"),
    (lambda: cl.bounce(A5, 7), "out of range"),
    (lambda: cl.bounce(A5, 0.5), "shape"),
    (lambda: cl.teleport(A5, 0.0), "alpha"),
    (lambda: cl.tokenrank(A5, alpha=1.5), "alpha"),
    (lambda: cl.tokenrank(A5, alpha="0.9"), "alpha must be a number"),
    (lambda: cl.tokenrank(A5, alpha=True), "alpha must be a number"),
    (lambda: cl.bounce(A5, 0, direction="sideways"), "direction"),
    (lambda: cl.tokenrank(A5, direction="up"), "direction"),
    (lambda: cl.tokenrank(A5, method="eig"), "method"),
    (lambda: cl.tokenrank(torch.eye(3), alpha=1.0), "not unique"),
    (lambda: cl.head_weights(A5[None], "softmax"), "scheme"),
    (lambda: cl.bounce(A5, "random"), "start"),
    (lambda: cl.bounce(A5, torch.ones(4)), "shape"),
    (lambda: cl.bounce(A5, -torch.ones(5)), "negative"),
    (lambda: cl.bounce(A5, 0, steps=0), "steps"),
    (lambda: cl.bounce(A5.expand(3, 5, 5), torch.ones(2, 5)), "broadcast"),
    (lambda: cl.teleport(A5, 0.5, personalization=torch.ones(3)), "shape"),
    (lambda: cl.mix_heads(A5.expand(3, 5, 5), torch.ones(4) / 4), "do not fit"),
    (lambda: cl.mix_heads(A5.expand(3, 5, 5), torch.ones(3)), "sum to 1"),
    (lambda: cl.head_weights(A5, "uniform"), "dim"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_matches_cpu():
    A = attention_like(8, 197, seed=10)
    Ac = A.cuda()
    for f in (cl.tokenrank, lambda a: cl.tokenrank(a, method="krylov"),
              lambda a: cl.tokenrank(a, method="power"), lambda a: cl.lambda2(a, tol=1e-6), cl.column_sum,
              lambda a: cl.bounce(a, 5, 3, "outgoing"),
              lambda a: cl.mix_heads(a, cl.head_weights(a, "lambda2", dim=0), dim=0)):
        out = f(Ac)
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), f(A), atol=1e-4, rtol=0)
    assert cl.tokenrank(Ac.half()).dtype == torch.float32


def test_mix_is_mix_heads_of_head_weights():
    A = torch.softmax(torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1)), -1)
    for scheme in ("lambda2", "uniform"):
        by_hand = (A * cl.head_weights(A, scheme)[..., None, None]).sum(1)
        torch.testing.assert_close(cl.mix(A, scheme), by_hand)
    assert torch.allclose(cl.mix(A, "uniform"), A.mean(1))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(cl.mix(A, "random", generator=g1),
                               cl.mix_heads(A, cl.head_weights(A, "random", generator=g2)))
    with pytest.raises(ValueError, match="unknown scheme"):
        cl.mix(A, "median")


@pytest.mark.parametrize("kw, msg", [(dict(krylov_dim=0), "krylov_dim"), (dict(krylov_dim=True), "krylov_dim"),
                                     (dict(tol=0), "tol"), (dict(tol=float("nan")), "tol"), (dict(tol="0.1"), "tol"),
                                     (dict(max_iter=0), "max_iter")])
def test_lambda2_rejects_bad_solver_options(kw, msg):
    A = torch.softmax(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)), -1)
    with pytest.raises(ValueError, match=msg):
        cl.lambda2(A, **kw)


def _two_closed_blocks():
    g = torch.Generator().manual_seed(0)
    B = torch.zeros(8, 8)
    B[:4, :4] = torch.softmax(torch.randn(4, 4, generator=g) * 2, -1)
    B[4:, 4:] = torch.softmax(torch.randn(4, 4, generator=g) * 2, -1)
    return B


@pytest.mark.parametrize("method", ["dense", "krylov", "power"])
@pytest.mark.parametrize("chain", ["two closed blocks", "identity"])
def test_tokenrank_without_teleport_refuses_a_chain_without_unique_steady_state(method, chain):
    # every mixture of the closed classes' steady states is a steady state: the solvers used to
    # pick different ones (block masses 0/1, 0.51/0.49, 0.5/0.5; on the identity dense raised
    # and the others returned the uniform vector); every method now refuses the same way
    A = _two_closed_blocks() if chain == "two closed blocks" else torch.eye(5)
    A64 = A.double().numpy() / A.double().numpy().sum(-1, keepdims=True)
    ones = np.sum(np.abs(np.linalg.eigvals(A64) - 1) < 1e-9)
    assert ones >= 2                                      # the premise: eigenvalue 1 is repeated
    with pytest.raises(ValueError, match="not unique"):
        cl.tokenrank(A, alpha=1.0, method=method)
    with pytest.raises(ValueError, match="not unique"):   # matrix-free too
        cl.tokenrank(cl.LazyAttention(torch.eye(6), torch.eye(6), scale=1e3), alpha=1.0, method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # teleport makes it unique: no warning
        pi = cl.tokenrank(A, alpha=0.99, method=method, tol=1e-9)
    np.testing.assert_allclose(pi, ref_steady_state(ref_teleport(A64, 0.99)), atol=1e-7)


@pytest.mark.parametrize("method", ["dense", "krylov", "power"])
def test_tokenrank_without_teleport_warns_on_a_periodic_chain(method):
    # a cycle: a unique steady state (uniform) that bouncing never settles on from a one-hot start
    P = torch.roll(torch.eye(5, dtype=torch.float64), 1, 1)
    with pytest.warns(RuntimeWarning, match="periodic"):
        pi = cl.tokenrank(P, alpha=1.0, method=method, max_iter=50)
    np.testing.assert_allclose(pi, ref_steady_state(P.numpy()), atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # an irreducible aperiodic chain: no warning
        g = torch.Generator().manual_seed(0)
        cl.tokenrank(torch.softmax(torch.randn(3, 9, 9, generator=g), -1), alpha=1.0, method=method)


def test_krylov_paths_refuse_a_chain_that_requires_grad_and_auto_takes_dense():
    A = attention_like(2, 300, seed=0).requires_grad_()
    for call in (lambda: cl.lambda2(A), lambda: cl.head_weights(A[None], "lambda2"),
                 lambda: cl.tokenrank(A, method="krylov")):
        with pytest.raises(ValueError, match="do not support autograd, and A requires grad"):
            call()
    pi = cl.tokenrank(A)                                     # n > 256: dense, with gradients
    pi[:, 0].sum().backward()
    assert A.grad is not None and torch.isfinite(A.grad).all() and A.grad.abs().sum() > 0
    torch.testing.assert_close(pi.detach(), cl.tokenrank(A.detach()), atol=1e-5, rtol=1e-4)
    with torch.no_grad():                                    # no autograd: Krylov runs
        assert cl.lambda2(A).shape == (2,)
