"""The score registry: every method against a float64 numpy reference on a softmax-random chain,
the errors it raises, seeded random scores, lazy chains, and the drivers' method lists."""
import numpy as np
import pytest
import torch

from chains_lite import LazyAttention
from chains_lite.core import scores
from chains_lite.core.layout import TokenLayout
from chains_lite.core.scores import NAMES, SCORES, select, token_scores

LAYOUT = TokenLayout(cls_index=0, register_indices=(1,), grid=(2, 3), patch_start=2)
CENTER = 2 + 1 * 3 + 1          # row 1, column 1 of the 2 x 3 grid
N = 8


def softmax_chain(shape=(2, 3, N, N), seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=shape) * 2
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def steady_state(P: np.ndarray, alpha: float) -> np.ndarray:
    """pi with pi (alpha P + (1 - alpha) e e^T / n) = pi: solve pi (I - alpha P) = (1 - alpha) / n."""
    n = P.shape[-1]
    lhs = np.swapaxes(np.eye(n) - alpha * P, -1, -2)
    return np.linalg.solve(lhs, np.full(P.shape[:-1], (1 - alpha) / n)[..., None])[..., 0]


def incoming(A: np.ndarray, v: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        v = np.einsum("...i,...ij->...j", v, A)
    return v / v.sum(-1, keepdims=True)


def outgoing(A: np.ndarray, v: np.ndarray, steps: int) -> np.ndarray:
    A_l = A / A.sum(-2, keepdims=True)           # column-normalised: v <- A_l v
    for _ in range(steps):
        v = np.einsum("...ij,...j->...i", A_l, v)
    return v / v.sum(-1, keepdims=True)


def close(got: torch.Tensor, want: np.ndarray, atol=1e-6):
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=atol)


A_NP = softmax_chain()
A = torch.tensor(A_NP, dtype=torch.float32)


def test_single_bounce_scores_are_rows_columns_and_means():
    close(token_scores(A, "column_sum", LAYOUT), A_NP.mean(-2))
    close(token_scores(A, "center_row", LAYOUT), A_NP[..., CENTER, :])
    close(token_scores(A, "cls_row", LAYOUT), A_NP[..., 0, :])
    col = A_NP[..., :, CENTER]
    close(token_scores(A, "center_column", LAYOUT), col / col.sum(-1, keepdims=True))


@pytest.mark.parametrize("alpha", [0.99, 0.85])
def test_tokenrank_is_the_teleported_steady_state(alpha):
    got = token_scores(A, "tokenrank", LAYOUT, alpha=alpha)
    close(got, steady_state(A_NP, alpha))
    with pytest.raises(AssertionError):    # alpha reaches the solver: another alpha, another answer
        close(got, steady_state(A_NP, 0.5))


def test_bounce_center_bounces_from_the_center_token():
    e = np.eye(N)[CENTER]
    close(token_scores(A, "bounce_center", LAYOUT), incoming(A_NP, e, 2))
    close(token_scores(A, "bounce_center", LAYOUT, steps=3), incoming(A_NP, e, 3))


@pytest.mark.parametrize("name, direction, steps", [
    ("row_select", incoming, 1), ("incoming_2", incoming, 2), ("incoming_3", incoming, 3),
    ("column_select", outgoing, 1), ("outgoing_2", outgoing, 2), ("outgoing_3", outgoing, 3)])
def test_bounces_from_a_start(name, direction, steps):
    start = np.zeros((2, 1, N))
    start[0, 0, [3, 5]] = 0.5                    # a two-token word in image 0, one token in image 1
    start[1, 0, 4] = 1.0
    close(token_scores(A, name, LAYOUT, start=torch.tensor(start)), direction(A_NP, start, steps))
    close(token_scores(A, name, LAYOUT, start=4), direction(A_NP, np.eye(N)[4], steps))
    with pytest.raises(ValueError, match="need a start"):
        token_scores(A, name, LAYOUT)


def test_random_scores_are_reproducible_under_a_seed():
    def draw(name, seed):
        return token_scores(A, name, LAYOUT, torch.Generator().manual_seed(seed))
    r = draw("random", 3)
    assert r.shape == (2, 3, N) and 0 <= r.min() and r.max() < 1
    assert torch.equal(r, draw("random", 3)) and not torch.equal(r, draw("random", 4))
    rows = draw("random_row", 3)
    assert torch.equal(rows, draw("random_row", 3))
    for b in range(2):                           # one patch row per image, the same for every head
        hits = [t for t in range(LAYOUT.patch_start, N)
                if np.allclose(rows[b].numpy(), A_NP[b, :, t, :], atol=1e-6)]
        assert len(hits) == 1


def test_unknown_names_options_and_cls_less_layouts_raise():
    with pytest.raises(ValueError, match="unknown method 'rollout'") as err:
        token_scores(A, "rollout", LAYOUT)
    assert all(name in str(err.value) for name in NAMES)
    with pytest.raises(ValueError, match="CLS"):
        token_scores(A, "cls_row", TokenLayout(None, (), (2, 4), 0))
    with pytest.raises(TypeError, match="unknown options"):
        token_scores(A, "tokenrank", LAYOUT, alhpa=0.9)
    assert select("cls_row", "tokenrank") == ("cls_row", "tokenrank")
    with pytest.raises(ValueError, match="unknown method"):
        select("tokenrank", "gradcam")


def test_lazy_chains_score_like_their_dense_matrices():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, N, 4, generator=g), torch.randn(2, N, 4, generator=g)
    lazy = LazyAttention(q, k)
    dense = lazy.dense()
    for name in ("tokenrank", "column_sum", "center_row", "cls_row", "center_column", "bounce_center"):
        torch.testing.assert_close(token_scores(lazy, name, LAYOUT), token_scores(dense, name, LAYOUT))
    torch.testing.assert_close(token_scores(lazy, "outgoing_2", LAYOUT, start=3),
                               token_scores(dense, "outgoing_2", LAYOUT, start=3))


def test_every_score_is_a_distribution_over_the_tokens():
    for name in NAMES:
        if name == "random":
            continue
        v = SCORES[name](A, LAYOUT, torch.Generator().manual_seed(0), start=3)
        assert v.shape == (2, 3, N), name
        torch.testing.assert_close(v.sum(-1), torch.ones(2, 3), msg=name)


def test_driver_method_lists_come_from_the_registry():
    from chains_lite.methods import maps
    from chains_lite.methods import masking
    from chains_lite.methods import probing
    from chains_lite.methods import segmentation
    for names in (maps.GLOBAL_METHODS, maps.EXPLORE_METHODS, masking.PER_HEAD, probing.PROBE_METHODS,
                  segmentation.BOUNCE_METHODS):
        assert set(names) <= set(NAMES)
    # chapter 3's other maps: the two steady states and ConceptAttention's two output-space maps
    assert segmentation.METHODS == (segmentation.BOUNCE_METHODS + tuple(segmentation.STEADY)
                                    + (segmentation.OUTPUT_SPACE, segmentation.CONCEPT))
    assert masking.HEAD_WEIGHTING == ("tokenrank_uniform", "tokenrank_random", "tokenrank_lambda2")
    assert masking.STRATEGIES[-1] == "tokenrank_lambda2"
    assert maps.HEAD_MIX == ("uniform", "lambda2") and probing.HEAD_SCHEMES == scores.HEAD_SCHEMES
    assert segmentation.PAPER_METHOD in segmentation.METHODS
