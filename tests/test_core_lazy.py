"""Tests of chains_lite.core.lazy: matrix-free chains against dense references built here.

References: the attention matrix softmax(q k^T * scale) formed in float64 with numpy, and
numpy / scipy for bounces, steady states and eigenvalues. float32 agreement is checked
against the dense path of chains_lite.core.chain on the float32 matrix (the issue's <= 1e-5).
"""
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

import chains_lite as cl
from chains_lite.core import lazy as cl_lazy
from chains_lite.core.synthetic import attention_qk
from references import ref_lambda2, ref_outgoing

# budgets that force each tiling: whole matrices of several heads, blocks of query rows
# against every key, and blocks of keys (normalisers in two passes); the default also
# solves tokenrank / lambda2 on dense chunks, the others matrix-free
BUDGETS = {"default": cl.DEFAULT_MAX_BYTES, "rows": 4096, "keys": 200}


# ----------------------------------------------------------------------------- references
def ref_attention(q, k, scale=None, mask=None):
    """softmax(q k^T * scale) in float64 numpy, masked keys -> 0."""
    q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    S = q @ np.swapaxes(k, -1, -2) * scale
    if mask is not None:
        S = np.where(np.asarray(mask)[..., None, :], S, -np.inf)
    S = S - S.max(-1, keepdims=True)
    E = np.exp(S)
    return E / E.sum(-1, keepdims=True)


def ref_tokenrank(P, alpha):
    """Solve pi (I - P') = 0, sum(pi) = 1 with P' = alpha P + (1 - alpha) e u^T."""
    n = P.shape[-1]
    Pt = alpha * P + (1 - alpha) / n
    M = (np.eye(n) - Pt).T.copy()
    M[-1] = 1.0
    b = np.zeros(n)
    b[-1] = 1.0
    return scipy.linalg.solve(M, b)


@st.composite
def qk(draw, max_n=24, max_batch=2, dtype=torch.float64, masked=None):
    """Random q, k ``(*batch, n, d)``, a scale from soft to sharp attention, maybe a key mask."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=max_batch)))
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, 12))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(*batch, n, d, generator=g, dtype=dtype)
    k = torch.randn(*batch, n, d, generator=g, dtype=dtype)
    scale = draw(st.floats(0.05, 3.0))
    mask = None
    if masked if masked is not None else draw(st.booleans()):
        mask = torch.rand(*batch[-1:], n, generator=g) < 0.7  # broadcasts over leading dims
        mask[..., draw(st.integers(0, n - 1))] = True  # every chain keeps a key
    return q, k, scale, mask


def flat(A):
    """Matrices ``(..., n, n)`` as a stack ``(B, n, n)``."""
    A = np.asarray(A)
    return A.reshape(-1, *A.shape[-2:])


# ----------------------------------------------------------------------------- the matrix
@settings(max_examples=40, deadline=None)
@given(qk(), st.sampled_from(list(BUDGETS)))
def test_dense_is_the_softmax(args, budget):
    q, k, scale, mask = args
    L = cl.LazyAttention(q, k, scale=scale, mask=mask, max_bytes=BUDGETS[budget])
    assert L.shape == (*q.shape[:-1], q.shape[-2]) and L.dtype == torch.float64
    np.testing.assert_allclose(L.dense(), ref_attention(q, k, scale, mask), atol=1e-12)


# ----------------------------------------------------------------------------- bounces
@settings(max_examples=60, deadline=None)
@given(qk(), st.sampled_from(list(BUDGETS)), st.integers(1, 3), st.integers(0, 100))
def test_bounces_match_reference(args, budget, steps, i):
    q, k, scale, mask = args
    L = cl.LazyAttention(q, k, scale=scale, mask=mask, max_bytes=BUDGETS[budget])
    A = ref_attention(q, k, scale, mask)
    n = A.shape[-1]
    i = i % n
    for direction, P in (("incoming", A), ("outgoing", ref_outgoing(A))):
        out = cl.bounce(L, i, steps=steps, direction=direction, return_all=True)
        v = np.eye(n)[i]
        for s in range(steps):
            v = np.einsum("...i,...ij->...j", v, P)
            v = v / v.sum(-1, keepdims=True)
            np.testing.assert_allclose(out[..., s, :], v, atol=1e-10)
    np.testing.assert_allclose(cl.row_select(L, i), A[..., i, :], atol=1e-12)
    cols = A[..., :, i].sum(-1, keepdims=True)
    expected = np.where(cols > 0, A[..., :, i] / np.where(cols > 0, cols, 1), 1.0 / n)
    np.testing.assert_allclose(cl.column_select(L, i), expected, atol=1e-10)
    np.testing.assert_allclose(cl.column_sum(L), A.mean(-2), atol=1e-12)


def test_several_vectors_cost_one_pass(monkeypatch):
    """A bounce of k start vectors computes each logit tile once, not k times."""
    q, k = attention_qk(3, 40, d=8)
    L = cl.LazyAttention(q, k, max_bytes=BUDGETS["rows"])
    calls = []
    logits = cl.LazyAttention._logits
    monkeypatch.setattr(cl.LazyAttention, "_logits", lambda *a: calls.append(1) or logits(*a))
    cl.bounce(L, 0)  # first pass: the normalisers come on the way
    one = len(calls)
    calls.clear()
    V = torch.rand(5, 3, 40)  # 5 start vectors for each of the 3 heads
    out = cl.bounce(L, V)
    assert len(calls) == one  # normalisers cached; one pass for all 15 vectors
    times, _, _ = L.products()
    assert times(V.transpose(0, 1)).shape == (3, 5, 40) and len(calls) == 2 * one
    np.testing.assert_allclose(out, torch.stack([cl.bounce(L, v) for v in V]), atol=1e-6)


# ----------------------------------------------------------------------------- TokenRank, lambda2
@settings(max_examples=30, deadline=None)
@given(qk(max_n=16, max_batch=1), st.sampled_from(list(BUDGETS)),
       st.sampled_from(["incoming", "outgoing"]), st.sampled_from(["auto", "krylov", "power"]),
       st.floats(0.5, 0.99))
def test_tokenrank_matches_reference(args, budget, direction, method, alpha):
    q, k, scale, mask = args
    L = cl.LazyAttention(q, k, scale=scale, mask=mask, max_bytes=BUDGETS[budget])
    A = flat(ref_attention(q, k, scale, mask))
    P = A if direction == "incoming" else ref_outgoing(A)
    ref = np.stack([ref_tokenrank(p, alpha) for p in P])
    pi = cl.tokenrank(L, alpha=alpha, direction=direction, method=method, tol=1e-10,
                      max_iter=20000)
    assert pi.shape == L.shape[:-1]
    np.testing.assert_allclose(pi.reshape(-1, pi.shape[-1]), ref, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(qk(max_n=16, max_batch=1), st.sampled_from(list(BUDGETS)),
       st.sampled_from(["incoming", "outgoing"]))
def test_lambda2_matches_eigvals(args, budget, direction):
    q, k, scale, mask = args
    L = cl.LazyAttention(q, k, scale=scale, mask=mask, max_bytes=BUDGETS[budget])
    A = flat(ref_attention(q, k, scale, mask))
    P = A if direction == "incoming" else ref_outgoing(A)
    ref = np.array([ref_lambda2(p) for p in P])
    out = cl.lambda2(L, direction=direction, tol=1e-12)
    assert out.shape == L.shape[:-2]
    np.testing.assert_allclose(out.reshape(-1), ref, atol=1e-8)


def test_dense_method_needs_the_budget():
    q, k = attention_qk(2, 30, d=8)
    A = flat(ref_attention(q, k))
    ref = np.stack([ref_tokenrank(a, 0.9) for a in A])
    big = cl.LazyAttention(q.double(), k.double())
    np.testing.assert_allclose(cl.tokenrank(big, alpha=0.9, method="dense"), ref, atol=1e-12)
    small = cl.LazyAttention(q.double(), k.double(), max_bytes=BUDGETS["rows"])
    with pytest.raises(ValueError, match="max_bytes"):
        cl.tokenrank(small, method="dense")
    # "auto" takes the dense solve only when it fits, krylov otherwise
    np.testing.assert_allclose(cl.tokenrank(small, alpha=0.9, tol=1e-10), ref, atol=1e-9)


# ----------------------------------------------------------------------------- float32, bf16
def structured_and_random(n=300, heads=4, d=32):
    """attention_like q, k (slow and fast heads) and sharp random q, k with a key mask."""
    q, k = attention_qk(heads, n, d=d, seed=1)
    g = torch.Generator().manual_seed(2)
    qr, kr = torch.randn(2, heads, n, d, generator=g) * 1.5, torch.randn(2, heads, n, d, generator=g)
    mask = torch.rand(2, 1, n, generator=g) < 0.8
    return [(q, k, None), (qr, kr, mask)]


def dense32(q, k, mask=None):
    """The float32 attention matrix, as a user would form it."""
    S = (q.float() @ k.float().mT) / math.sqrt(q.shape[-1])
    if mask is not None:
        S = S.masked_fill(~mask[..., None, :], float("-inf"))
    return torch.softmax(S, -1)


@pytest.mark.parametrize("budget", ["default", "stream"])
def test_float32_agrees_with_dense(budget):
    """The issue's bar: <= 1e-5 against the dense float32 path, on dense chunks and streamed."""
    for q, k, mask in structured_and_random():
        A = dense32(q, k, mask)
        L = cl.LazyAttention(q, k, mask=mask, max_bytes=cl.DEFAULT_MAX_BYTES if budget == "default"
                             else 512 * 2**10)
        assert (L.chunk_size() > 0) == (budget == "default")
        calls = [lambda a: cl.bounce(a, 7, steps=3),
                 lambda a: cl.bounce(a, "uniform", steps=2, direction="outgoing"),
                 lambda a: cl.row_select(a, 5), lambda a: cl.column_select(a, 11), cl.column_sum,
                 cl.tokenrank, lambda a: cl.tokenrank(a, direction="outgoing"),
                 lambda a: cl.lambda2(a, tol=1e-6), lambda a: cl.lambda2(a, "outgoing", tol=1e-6)]
        for f in calls:
            out = f(L)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, f(A), atol=1e-5, rtol=0)
        # the power method on float32 chains reaches its tol (1e-6 in L1) against float64, dense
        # or lazy (a float32 iteration stopped 1e-5 away on these slow heads)
        exact = cl.tokenrank(torch.tensor(ref_attention(q, k, None, mask)), tol=1e-10)
        for a in (A, L):
            power = cl.tokenrank(a, method="power")
            assert (power.double() - exact).abs().sum(-1).max() <= 1e-6


def test_head_weights_and_mixtures_agree_with_dense():
    q, k = attention_qk(6, 300, d=32, seed=3)
    q, k = q.reshape(2, 3, 300, 32), k.reshape(2, 3, 300, 32)  # (layers, heads, n, d)
    A = dense32(q, k)
    for max_bytes in (cl.DEFAULT_MAX_BYTES, 64 * 2**10):
        L = cl.LazyAttention(q, k, max_bytes=max_bytes)
        w = cl.head_weights(A)
        # lambda2 at its default tol=1e-3 is accurate to a few 1e-5 (chain.lambda2), so the
        # weights of dense and lazy agree to that, not to rounding
        torch.testing.assert_close(cl.head_weights(L), w, atol=1e-4, rtol=0)
        M, ML = cl.mix_heads(A, w), cl.mix_heads(L, w)
        assert isinstance(ML, cl.LazyMixture) and ML.shape == M.shape == (2, 300, 300)
        torch.testing.assert_close(ML.dense(), M, atol=1e-6, rtol=0)
        # layers mixed too: a mixture of mixtures, over dim 0
        u = torch.tensor([0.3, 0.7])
        MM, MML = cl.mix_heads(M, u, dim=0), cl.mix_heads(ML, u, dim=0)
        for f in (lambda a: cl.bounce(a, 4, steps=2, direction="outgoing"), cl.tokenrank,
                  lambda a: cl.lambda2(a, tol=1e-6), lambda a: cl.row_select(a, 9)):
            torch.testing.assert_close(f(ML), f(M), atol=1e-5, rtol=0)
            torch.testing.assert_close(f(MML), f(MM), atol=1e-5, rtol=0)
    # heads on another dim
    Lh = cl.LazyAttention(q.transpose(0, 1), k.transpose(0, 1))
    wh = cl.head_weights(Lh, "uniform", dim=0)
    torch.testing.assert_close(cl.mix_heads(Lh, wh, dim=0).dense(),
                               cl.mix_heads(A, torch.full((3,), 1 / 3)), atol=1e-6, rtol=0)


def test_bf16_inputs():
    """bf16 q, k are upcast: the chain is that of the bf16-rounded q, k."""
    q, k = attention_qk(4, 300, d=32, seed=4)
    qb, kb = q.bfloat16(), k.bfloat16()
    for max_bytes in (cl.DEFAULT_MAX_BYTES, 512 * 2**10):
        L = cl.LazyAttention(qb, kb, max_bytes=max_bytes)
        assert L.dtype == torch.float32
        np.testing.assert_allclose(L.dense(), ref_attention(qb.float(), kb.float()), atol=1e-5)
        A = dense32(qb, kb)
        for f in (cl.tokenrank, lambda a: cl.lambda2(a, tol=1e-6, max_iter=2000),
                  lambda a: cl.bounce(a, 0, 2)):
            torch.testing.assert_close(f(L), f(A), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the budget
def test_budget_switching_gives_the_same_numbers():
    q, k, mask = structured_and_random(n=60, heads=2, d=16)[1]
    out = {}
    for name, max_bytes in [("dense chunks", cl.DEFAULT_MAX_BYTES), ("one head", 60 * 60 * 12),
                            ("rows", 60 * 12 * 7), ("keys", 12 * 30)]:
        L = cl.LazyAttention(q, k, mask=mask, max_bytes=max_bytes)
        out[name] = [cl.bounce(L, 3, 2, "outgoing"), cl.column_sum(L),
                     cl.tokenrank(L, method="krylov", tol=1e-9),
                     cl.lambda2(L, tol=1e-8, max_iter=2000)]
    for name, values in out.items():
        for a, b in zip(values, out["dense chunks"]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 30), st.integers(50, 10**9))
def test_tiles_fit_the_budget(n, B, max_bytes):
    # the floor: a pass takes at most MAX_TILES tiles, or tiles of MAX_FLOOR_BYTES
    floor = min(cl_lazy.MAX_FLOOR_BYTES, math.ceil(B * n * n * 12 / cl_lazy.MAX_TILES))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L = cl.LazyAttention(torch.zeros(B, 1, 1).expand(B, n, 1), torch.zeros(1, n, 1),
                             max_bytes=max_bytes)
    assert L.max_bytes == max(max_bytes, floor)
    assert (len(caught) == 1 and "raised" in str(caught[0].message)) == (max_bytes < floor)
    heads, rows, keys = L._plan()
    assert 1 <= heads <= B and 1 <= rows <= n and 1 <= keys <= n
    assert heads * rows * keys * (4 + 8) <= L.max_bytes  # the tile, float64 rows summing it
    assert L.chunk_size() * 3 * 4 * n * n <= L.max_bytes
    # a pass takes at most MAX_TILES tiles (twice that from rounding the blocks), unless the budget
    # is at least MAX_FLOOR_BYTES
    tiles = math.ceil(B / heads) * math.ceil(n / rows) * math.ceil(n / keys)
    assert tiles <= 2 * cl_lazy.MAX_TILES or L.max_bytes >= cl_lazy.MAX_FLOOR_BYTES


def test_a_tiny_budget_is_raised_to_the_floor_and_gives_the_same_answer():
    """max_bytes of 1-100 bytes made one tile per logit (minutes for tokenrank at n = 64)."""
    q, k = attention_qk(2, 64, d=16, seed=0)
    A = torch.tensor(ref_attention(q, k))
    for max_bytes in (1, 100):
        with pytest.warns(RuntimeWarning, match=f"max_bytes={max_bytes} is raised"):
            L = cl.LazyAttention(q, k, max_bytes=max_bytes)
        assert L._plan()[1:] == (1, 16)                 # still one row x 16 keys: chunked, not dense
        np.testing.assert_allclose(cl.tokenrank(L), cl.tokenrank(A), atol=1e-6)


# ----------------------------------------------------------------------------- bad input
Q = torch.randn(2, 8, 4)


@pytest.mark.parametrize("call, match", [
    (lambda: cl.LazyAttention(Q, torch.randn(2, 8, 5)), "same"),
    (lambda: cl.LazyAttention(Q, torch.randn(2, 9, 4)), "same"),
    (lambda: cl.LazyAttention(Q, torch.randn(3, 8, 4)), "broadcast"),
    (lambda: cl.LazyAttention(torch.randn(4), torch.randn(4)), "shape"),
    (lambda: cl.LazyAttention(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4)), "empty"),
    (lambda: cl.LazyAttention(Q.clone().index_fill_(1, torch.tensor([3]), float("nan")), Q), "NaN"),
    (lambda: cl.LazyAttention(Q, Q * float("inf")), "NaN or inf"),
    # the finiteness check goes a slice at a time: a non-finite entry in the last rows of a
    # non-contiguous (transposed) q is still found
    (lambda: cl.LazyAttention(torch.randn(2, 9, 3, 4).index_fill_(1, torch.tensor([8]), float("inf"))
                              .transpose(1, 2), torch.randn(2, 3, 9, 4)), "NaN or inf"),
    (lambda: cl.LazyAttention(Q.int(), Q.int()), "floating"),
    (lambda: cl.LazyAttention(Q, Q, mask=torch.ones(2, 7, dtype=torch.bool)), "mask"),
    (lambda: cl.LazyAttention(Q, Q, mask=torch.ones(3, 8, dtype=torch.bool)), "mask"),
    (lambda: cl.LazyAttention(Q, Q, mask=torch.ones(2, 8)), "boolean"),
    (lambda: cl.LazyAttention(Q, Q, mask=torch.zeros(8, dtype=torch.bool)), "every key"),
    (lambda: cl.LazyAttention(Q, Q, scale=-1.0), "scale"),
    (lambda: cl.LazyAttention(Q, Q, max_bytes=0), "max_bytes"),
    (lambda: cl.teleport(cl.LazyAttention(Q, Q), 0.5), "dense"),
    (lambda: cl.transition_matrix(cl.LazyAttention(Q, Q)), "dense"),
    (lambda: cl.row_select(cl.LazyAttention(Q, Q), 8), "out of range"),
    (lambda: cl.bounce(cl.LazyAttention(Q, Q), torch.ones(3, 8)), "broadcast"),
    (lambda: cl.mix_heads(cl.LazyAttention(Q, Q), torch.ones(3) / 3, dim=0), "do not fit"),
    (lambda: cl.LazyAttention(Q, Q).reshape(16, 8), "last two dims"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    q, k = attention_qk(4, 300, d=32, seed=5)
    for max_bytes in (cl.DEFAULT_MAX_BYTES, 64 * 2**10):
        L, Lc = (cl.LazyAttention(q, k, max_bytes=max_bytes),
                 cl.LazyAttention(q.cuda(), k.cuda(), max_bytes=max_bytes))
        for f in (cl.tokenrank, lambda a: cl.lambda2(a, tol=1e-6), lambda a: cl.bounce(a, 3, 2)):
            out = f(Lc)
            assert out.is_cuda
            torch.testing.assert_close(out.cpu(), f(L), atol=1e-5, rtol=0)


def test_tokenrank_of_overflowing_logits_fails_fast_instead_of_looping():
    """Finite q, k whose logits overflow float32 give NaN products: a clear error, in bounded time."""
    import signal

    def too_slow(*_):
        raise TimeoutError("tokenrank did not return")
    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    try:
        q = k = torch.randn(1, 2, 64, 16, generator=torch.Generator().manual_seed(0)) * 1e20
        with pytest.raises(ValueError, match="not finite"):
            cl.tokenrank(cl.LazyAttention(q, k, max_bytes=4096), max_iter=10)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_BIG = torch.randn(1, 2, 64, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("inputs", [dict(q=_BIG * 1e20, k=_BIG * 1e20), dict(q=_BIG, k=-_BIG, scale=1e38)],
                         ids=["q,k~1e20", "scale=1e38"])
@pytest.mark.parametrize("budget", ["default", "rows", "keys"])
@pytest.mark.parametrize("name", ["tokenrank", "tokenrank power", "bounce", "bounce outgoing", "column_sum",
                                  "column_select", "row_select", "lambda2", "dense"])
def test_overflowing_logits_raise_instead_of_nan(inputs, budget, name):
    """Finite q, k whose logits q k^T * scale overflow float32: every path used to return NaN
    (lambda2: an obscure linalg.eig error); now each names the overflow."""
    q, k = inputs["q"], inputs["k"]
    S = q.double() @ k.double().mT * inputs.get("scale", 1 / 4)
    assert torch.isfinite(q).all() and not (S.abs() < torch.finfo(torch.float32).max).all()  # the premise
    calls = {"tokenrank": cl.tokenrank, "tokenrank power": lambda a: cl.tokenrank(a, method="power"),
             "bounce": lambda a: cl.bounce(a, 0, 3), "bounce outgoing": lambda a: cl.bounce(a, 0, 1, "outgoing"),
             "column_sum": cl.column_sum, "column_select": lambda a: cl.column_select(a, 3),
             "row_select": lambda a: cl.row_select(a, 3), "lambda2": cl.lambda2, "dense": lambda a: a.dense()}
    L = cl.LazyAttention(q, k, scale=inputs.get("scale"), max_bytes=BUDGETS[budget])
    with pytest.raises(ValueError, match="logits q k\\^T \\* scale are not finite"):
        calls[name](L)


def test_logits_beyond_float32_are_fine_in_float64():
    """The remedy the error names: float64 q, k hold logits of 1e40, and the softmax is the argmax."""
    q, k = (_BIG * 1e20).double(), (_BIG * 1e20).double()
    ref = ref_attention(q, k)                                 # numpy float64
    assert np.isfinite(ref).all()
    L = cl.LazyAttention(q, k)
    np.testing.assert_allclose(cl.row_select(L, 3), ref[..., 3, :], atol=1e-12)
    np.testing.assert_allclose(cl.column_sum(L), ref.mean(-2), atol=1e-12)
