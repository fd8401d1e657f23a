"""DiffSeg: aggregation, anchors, merging and NMS against hand-built chains and brute force."""

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from chains_lite.methods import diffseg as ds
from references import block_chain, halves


# ----------------------------------------------------------------------------- aggregation
def test_aggregate_rows_sum_to_one_and_single_resolution_is_the_head_mean():
    g = torch.Generator().manual_seed(0)
    fine = torch.softmax(torch.randn(2, 3, 16, 16, generator=g), -1)
    coarse = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), -1)
    A = ds.aggregate([fine, coarse], [(4, 4), (2, 2)])
    assert A.shape == (2, 16, 16)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 16))
    torch.testing.assert_close(ds.aggregate([fine], [(4, 4)]), fine.mean(1))


def test_aggregate_weights_resolutions_by_side():
    # A uniform coarse layer stays uniform after upsampling: the aggregate is a known mixture.
    g = torch.Generator().manual_seed(1)
    fine = torch.softmax(torch.randn(1, 64, 64, generator=g), -1)
    coarse = torch.full((1, 16, 16), 1 / 16)
    A = ds.aggregate([fine, coarse, coarse], [(8, 8), (4, 4), (4, 4)])
    torch.testing.assert_close(A, 8 / 12 * fine + 4 / 12 * torch.full((1, 64, 64), 1 / 64))


def test_aggregate_repeats_each_coarse_query_over_the_fine_tokens_it_covers():
    g = torch.Generator().manual_seed(2)
    coarse = torch.softmax(torch.randn(1, 4, 4, generator=g), -1)
    A = ds.aggregate([coarse], [(2, 2)], size=4)[0].reshape(4, 4, 16)
    for r in range(4):
        for c in range(4):
            torch.testing.assert_close(A[r, c], A[r // 2 * 2, c // 2 * 2])


def test_aggregate_rejects_bad_layers():
    A = torch.softmax(torch.randn(1, 16, 16), -1)
    with pytest.raises(ValueError, match="square"):
        ds.aggregate([A], [(2, 8)])
    with pytest.raises(ValueError, match="tokens"):
        ds.aggregate([A], [(3, 3)])
    with pytest.raises(ValueError, match="divide"):
        ds.aggregate([A, torch.softmax(torch.randn(1, 9, 9), -1)], [(4, 4), (3, 3)])


# ----------------------------------------------------------------------------- anchors
def test_uniform_grid_is_diffsegs_grid():
    pts = ds.uniform_grid(64, 16)
    assert pts.shape == (256, 2)
    assert sorted(set(pts[:, 0].tolist())) == list(range(1, 62, 4))  # DiffSeg: 1, 5, ..., 61


def test_spaced_top_hand_case_and_fill_by_rank():
    score = -torch.arange(16.0)  # row-major order is the rank order on a 4 x 4 grid
    pts = ds.spaced_top(score, 4, 6, min_distance=2)
    assert pts.tolist() == [[0, 0], [0, 2], [2, 0], [2, 2], [0, 1], [0, 3]]


@pytest.mark.parametrize("metric", ds.DISTANCES)
def test_spaced_top_respects_the_spacing_rule(metric):
    g = torch.Generator().manual_seed(3)
    pts = ds.spaced_top(torch.rand(256, generator=g), 16, 9, min_distance=4, metric=metric)
    d = (pts[:, None] - pts[None]).abs().float()
    d = d.max(-1).values if metric == "chebyshev" else d.pow(2).sum(-1).sqrt()
    assert d[~torch.eye(9, dtype=torch.bool)].min() >= 4
    assert len({tuple(p) for p in pts.tolist()}) == 9


def test_euclidean_and_chebyshev_spacing_differ():
    g = torch.Generator().manual_seed(4)
    score = torch.rand(256, generator=g)
    e = ds.spaced_top(score, 16, 16, 2.2, "euclidean")
    c = ds.spaced_top(score, 16, 16, 2.2, "chebyshev")
    assert e.tolist() != c.tolist()


def test_tokenrank_anchors_have_the_uniform_count():
    A = block_chain(8, halves(8))
    for strategy in ("uniform", "tokenrank", "column_sum"):
        assert ds.anchors(A, 8, strategy).shape == (4, 2)
        assert ds.anchors(A, 8, strategy, per_side=3).shape == (9, 2)
    with pytest.raises(ValueError, match="strategy"):
        ds.anchors(A, 8, "nope")


# ----------------------------------------------------------------------------- merging
def test_symmetric_kl_matches_scipy():
    g = torch.Generator().manual_seed(5)
    X = torch.softmax(torch.randn(3, 10, generator=g, dtype=torch.float64), -1)
    Y = torch.softmax(torch.randn(4, 10, generator=g, dtype=torch.float64), -1)
    ref = [[(entropy(x, y) + entropy(y, x)) / 2 for y in Y.numpy()] for x in X.numpy()]
    np.testing.assert_allclose(ds.symmetric_kl(X, Y).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_two_disjoint_blocks_give_two_segments():
    size = 8
    seg = ds.segment(block_chain(size, halves(size)), 16, "uniform", threshold=1.1)
    assert seg.n_segments == 2
    left, right = seg.labels[:, :6], seg.labels[:, 10:]
    assert left.unique().numel() == 1 and right.unique().numel() == 1 and left[0, 0] != right[0, 0]


def test_first_merge_round_does_not_depend_on_anchor_order():
    g = torch.Generator().manual_seed(6)
    A = torch.softmax(3 * torch.randn(64, 64, generator=g), -1)
    pts = ds.uniform_grid(8, 4)
    perm = torch.randperm(len(pts), generator=g)
    a = ds.merge(A, pts, 8, threshold=1.0, iterations=1)[0]
    b = ds.merge(A, pts[perm], 8, threshold=1.0, iterations=1)[0]
    torch.testing.assert_close(b, a[perm])


def test_segments_of_separated_blocks_do_not_depend_on_anchor_order():
    blocks = torch.zeros(8, 8, dtype=torch.long)
    blocks[:4, 4:], blocks[4:, :4], blocks[4:, 4:] = 1, 2, 3
    A = block_chain(8, blocks)
    pts = ds.uniform_grid(8, 4)
    perm = torch.randperm(len(pts), generator=torch.Generator().manual_seed(7))
    a, b = (ds.nms(ds.merge(A, p, 8)[-1], 8, 8).flatten() for p in (pts, pts[perm]))
    # the same partition of the pixels (segment ids may be renumbered)
    assert torch.equal(a[:, None] == a[None], b[:, None] == b[None])
    assert a.unique().numel() == 4


def test_later_rounds_only_reduce_the_number_of_maps():
    g = torch.Generator().manual_seed(8)
    A = torch.softmax(2 * torch.randn(256, 256, generator=g), -1)
    hist = ds.merge(A, ds.uniform_grid(16, 4), 16, threshold=0.5)
    sizes = [len(h) for h in hist]
    assert sizes[0] == 16 and sizes == sorted(sizes, reverse=True)
    for h in hist:
        torch.testing.assert_close(h.sum(-1), torch.ones(len(h)))


def test_segment_checks_its_chain():
    with pytest.raises(ValueError, match="square token grid"):
        ds.segment(torch.full((5, 5), 0.2), 8)
    with pytest.raises(ValueError, match="sum to 1"):
        ds.segment(torch.full((4, 4), 0.5), 8)
    with pytest.raises(ValueError, match="threshold"):
        ds.segment(block_chain(4, halves(4)), 8, threshold=0)


# ----------------------------------------------------------------------------- capture and evaluation
def _tiny_unet(size=16):
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"), layers_per_block=1,
                       attention_head_dim=8, norm_num_groups=8).eval()


def _what_the_unet_sees(unet, run):
    """(sample, timestep) of every UNet call made by ``run()``."""
    seen = []
    hook = unet.register_forward_pre_hook(lambda m, a: seen.append((a[0].clone(), a[1].clone())))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_diffsegs_protocol_feeds_the_clean_input_at_timestep_300():
    from diffusers import DDPMScheduler
    unet = _tiny_unet()
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen = _what_the_unet_sees(unet, lambda: ds.self_attention(unet, x0, DDPMScheduler()))
    assert len(seen) == 1
    sample, t = seen[0]
    assert torch.equal(sample, x0)                       # no noise added: the UNet sees x0 itself
    assert t.tolist() == [300, 300] and ds.TIMESTEP == 300
    seen = _what_the_unet_sees(unet, lambda: ds.image_chains(unet, None, x0, [0, 1], seed=3))
    assert torch.equal(seen[0][0], x0)                   # no scheduler needed, none used


def test_the_noised_protocol_adds_the_schedulers_noise_at_the_timestep():
    from diffusers import DDPMScheduler
    unet, sched = _tiny_unet(), DDPMScheduler()
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    seen = _what_the_unet_sees(unet, lambda: ds.self_attention(unet, x0, sched, 250, noise=noise, protocol="noised"))
    sample, t = seen[0]
    a = sched.alphas_cumprod[250]                        # q(x_t | x_0) by hand
    torch.testing.assert_close(sample, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    assert t.tolist() == [250, 250] and not torch.allclose(sample, x0, atol=1e-2)
    with pytest.raises(ValueError, match="protocol"):
        ds.self_attention(unet, x0, sched, protocol="noisy")
    with pytest.raises(ValueError, match="scheduler"):
        ds.self_attention(unet, x0, None, protocol="noised")


def test_self_attention_records_every_resolution_of_a_unet():
    from diffusers import DDPMScheduler
    unet = _tiny_unet()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    run = lambda: ds.self_attention(unet, x0, DDPMScheduler(), generator=torch.Generator().manual_seed(0),  # noqa: E731
                                    protocol="noised")
    (attns, grids), (again, _) = run(), run()
    assert sorted(set(grids)) == [(8, 8), (16, 16)]
    for a, b, grid in zip(attns, again, grids):
        assert a.shape == (2, grid[0] * grid[1], grid[0] * grid[1])
        torch.testing.assert_close(a, b)
    A = ds.aggregate(attns, grids)
    assert A.shape == (2, 256, 256)
    lazy, lgrids = ds.self_attention(unet, x0, DDPMScheduler(), generator=torch.Generator().manual_seed(0),
                                     store="qk", protocol="noised")
    torch.testing.assert_close(ds.aggregate(lazy, lgrids), A, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the runner


def test_image_chains_do_not_depend_on_the_batch():
    from diffusers import DDPMScheduler
    unet = _tiny_unet(8)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    for protocol in ds.PROTOCOLS:
        together, grids = ds.image_chains(unet, DDPMScheduler(), x0, [4, 5, 6], seed=1, protocol=protocol)
        alone, _ = ds.image_chains(unet, DDPMScheduler(), x0[2:], [6], seed=1, protocol=protocol)
        torch.testing.assert_close(alone[0], together[2], atol=1e-5, rtol=1e-4)
        other, _ = ds.image_chains(unet, DDPMScheduler(), x0[2:], [7], seed=1, protocol=protocol)
        if protocol == "noised":    # another index, other noise
            assert not torch.allclose(other[0], together[2], atol=1e-4)
        else:                       # no noise: the index does not matter
            torch.testing.assert_close(other[0], alone[0])
        assert together.shape == (3, 64, 64) and sorted(set(grids)) == [(4, 4), (8, 8)]
