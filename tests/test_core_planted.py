"""Planted chains (chains_lite.core.planted): the ground truth is what was planted, the heads are
chains, and the mechanisms chapter 1 measures on them hold on the planted case and fail where the
planted structure is taken away."""
import numpy as np
import pytest
import torch

import chains_lite as cl
from chains_lite.core.planted import object_labels, planted_chains


def pairwise_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties one half, by counting every pair."""
    p, q = scores[positive].double()[:, None], scores[~positive].double()[None, :]
    return ((p > q).double() + 0.5 * (p == q).double()).mean().item()


def object_auc(P, M: torch.Tensor, steps: int) -> float:
    """Mean AUC over every object token of the row of M^steps against the token's own object."""
    Mk = torch.linalg.matrix_power(M.double(), steps)
    tokens = torch.nonzero(P.objects > 0).flatten().tolist()
    return float(np.mean([pairwise_auc(Mk[i], P.objects == P.objects[i]) for i in tokens]))


@pytest.fixture(scope="module")
def P():
    return planted_chains(seed=0)


def test_object_labels_are_the_rectangles_by_hand():
    labels = object_labels(4, ((0, 0, 2, 2), (2, 1, 1, 3)))
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 2, 2, 2], [0, 0, 0, 0]]).flatten()
    assert torch.equal(labels, expected)
    with pytest.raises(ValueError, match="overlaps"):
        object_labels(4, ((0, 0, 2, 2), (1, 1, 2, 2)))
    with pytest.raises(ValueError, match="leaves"):
        object_labels(4, ((3, 3, 2, 1),))


def test_heads_are_seeded_chains_with_the_planted_ground_truth(P):
    n, leak, hub_mass = P.n, 0.04, 0.04
    A = P.A.double()
    assert P.A.shape == (8, n, n) and (A > 0).all()
    torch.testing.assert_close(A.sum(-1), torch.ones(8, n, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(P.A, planted_chains(seed=0).A) and not torch.equal(P.A, planted_chains(seed=1).A)
    assert torch.equal(P.planted, torch.tensor([True] * 4 + [False] * 4))
    assert (P.objects[P.hubs] == 0).all() and len(P.hubs.unique()) == 3
    assert [int(P.mask(k).sum()) for k in (1, 2, 3)] == [20, 16, 24]
    for i in torch.nonzero(P.objects > 0).flatten().tolist():
        own = P.objects == P.objects[i]
        row = A[0, i]
        # sparse: exactly 3 tokens of its own object, never itself, above the uniform leak
        assert int((row[own] > leak / n + 1e-9).sum()) == 3 and abs(row[i] - leak / n) < 1e-9
        assert abs(row[own].sum() - (1 - leak - hub_mass) - leak * own.sum() / n) < 1e-6
    assert A[4:].amax() < 10 / n                     # noise heads: nearly uniform rows


def test_lambda2_separates_planted_from_noise_heads(P):
    moduli = [np.sort(np.abs(np.linalg.eigvals(a)))[-2] for a in P.A.double().numpy()]
    # a planted head keeps 1 - leak - hub_mass of an object token's mass in its object: the
    # difference between two objects' shares decays by exactly that factor per bounce
    assert np.allclose(moduli[:4], 1 - 0.04 - 0.04, atol=1e-8) and max(moduli[4:]) < 0.1
    assert np.allclose(cl.lambda2(P.A[:4]).numpy(), 0.92, atol=1e-4)
    w = cl.head_weights(P.A, "lambda2")
    assert w[:4].min() > 10 * w[4:].max()
    # noise heads replaced by planted ones: nothing to down-weight, the weights are nearly uniform
    same = cl.head_weights(planted_chains(seed=0, planted_heads=8, noise_heads=0).A, "lambda2")
    assert (same - 1 / 8).abs().max() < 0.01


def test_multi_bounce_recovers_the_objects_where_one_step_does_not(P):
    one, four = object_auc(P, P.A[0], 1), object_auc(P, P.A[0], 4)
    assert one < 0.65 and four > 0.9
    # against objects the chain does not hold (labels permuted), four bounces score at chance
    g = torch.Generator().manual_seed(0)
    shuffled = type(P)(P.A, P.side, P.objects[torch.randperm(P.n, generator=g)], P.hubs, P.planted)
    assert abs(object_auc(shuffled, P.A[0], 4) - 0.5) < 0.1
    # the explanation: with dense attention inside each object, one step already finds it
    dense = planted_chains(seed=0, within=15)
    assert object_auc(dense, dense.A[0], 1) > max(0.85, one + 0.25)


def test_tokenrank_ranks_the_planted_hubs(P):
    for M in (P.A[0], cl.mix(P.A, "uniform"), cl.mix(P.A, "lambda2")):
        assert set(cl.tokenrank(M).topk(3).indices.tolist()) == set(P.hubs.tolist())
    flat = planted_chains(seed=0, hub_mass=0.0, background_hub_mass=0.0)
    found = set(cl.tokenrank(flat.A[0]).topk(3).indices.tolist()) & set(flat.hubs.tolist())
    assert len(found) <= 1


def test_lambda2_weighting_keeps_the_objects_that_noise_heads_blur(P):
    uniform, weighted = cl.mix(P.A, "uniform"), cl.mix(P.A, "lambda2")
    assert object_auc(P, weighted, 6) > object_auc(P, uniform, 6) + 0.1
    # the mixtures see more of each object in one step than one planted head
    assert min(object_auc(P, uniform, 1), object_auc(P, weighted, 1)) > object_auc(P, P.A[0], 1) + 0.1
    # uniform weights: the map blurs soon after its peak; lambda2 weights keep it
    peak = max(object_auc(P, uniform, k) for k in (1, 2, 3, 4))
    assert object_auc(P, uniform, 8) < peak - 0.2 and object_auc(P, weighted, 8) > peak - 0.05


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="within"):
        planted_chains(within=15, objects=((0, 0, 2, 2),))
    with pytest.raises(ValueError, match="hubs"):
        planted_chains(hubs=200)
    with pytest.raises(ValueError, match="leak"):
        planted_chains(leak=0.8, background_hub_mass=0.3)
    with pytest.raises(ValueError, match="object 4"):
        planted_chains(seed=0).mask(4)


def test_seed_maps_are_the_bounces_from_each_object_token(P):
    maps, truth = P.seed_maps(P.A[1], 3)
    tokens = torch.nonzero(P.objects > 0).flatten()
    assert maps.shape == (3, len(tokens), 12, 12) and truth.shape == (len(tokens), 12, 12)
    powers = [torch.linalg.matrix_power(P.A[1].double(), k) for k in (1, 2, 3)]
    for s in range(0, len(tokens), 7):
        i = int(tokens[s])
        for k in range(3):                     # row i of A^(k+1), by matrix powers
            torch.testing.assert_close(maps[k, s].flatten().double(), powers[k][i], atol=1e-5, rtol=0)
        assert torch.equal(truth[s].flatten(), P.mask(int(P.objects[i])))
    with pytest.raises(ValueError, match="steps"):
        P.seed_maps(P.A[0], 0)
    with pytest.raises(ValueError, match="one chain"):
        P.seed_maps(P.A, 1)
