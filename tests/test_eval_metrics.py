"""Metrics against brute force and hand cases: per-image AUROC and IoU at the mean, resizing,
binary_segmentation and average_precision (Chefer et al. protocol)."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chains_lite.eval.metrics import auroc, average_precision, binary_segmentation, iou_at_mean, merge_segmentation_counts, resize_maps, segmentation_counts


def brute_auroc(s, y):
    pos, neg = s[y], s[~y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_pairwise_count_with_ties():
    g = np.random.default_rng(0)
    s = torch.from_numpy(g.integers(0, 4, (5, 3, 4)).astype(np.float32))   # many ties
    y = torch.from_numpy(g.random((5, 3, 4)) < 0.4)
    y[:, 0, 0], y[:, 0, 1] = True, False
    got = auroc(s, y)
    for i in range(5):
        assert got[i].item() == pytest.approx(brute_auroc(s[i].flatten().numpy(), y[i].flatten().numpy()))


def test_auroc_hand_cases():
    y = torch.tensor([[[True, True, False, False]]])
    assert auroc(torch.tensor([[[3.0, 2.0, 1.0, 0.0]]]), y).item() == 1.0
    assert auroc(torch.tensor([[[0.0, 1.0, 2.0, 3.0]]]), y).item() == 0.0
    assert auroc(torch.ones(1, 1, 4), y).item() == 0.5
    assert torch.isnan(auroc(torch.rand(1, 1, 4), torch.ones(1, 1, 4, dtype=torch.bool))).all()
    with pytest.raises(ValueError, match="same shape"):
        auroc(torch.rand(1, 2, 2), torch.ones(1, 4, 4, dtype=torch.bool))


def test_iou_at_mean_hand_case():
    s = torch.tensor([[[4.0, 3.0], [0.0, 1.0]]])           # mean 2: predicts the top row
    y = torch.tensor([[[True, False], [False, False]]])
    assert iou_at_mean(s, y).item() == pytest.approx(0.5)
    assert iou_at_mean(s, torch.tensor([[[True, True], [False, False]]])).item() == 1.0
    assert iou_at_mean(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("scale", [1e300, 1e307])
def test_float64_scores_beyond_float32_keep_their_order(scale):
    """float64 maps above float32's range used to become inf in auroc / iou_at_mean: every pixel
    tied (AUROC 0.5, IoU 0); the answers must equal those of the same maps scaled down."""
    g = np.random.default_rng(1)
    small = torch.from_numpy(g.random((3, 6, 6)))
    y = torch.from_numpy(g.random((3, 6, 6)) < 0.4)
    y[:, 0, 0], y[:, 0, 1] = True, False
    big = small * scale
    assert not torch.isfinite(big.float()).all()                  # the premise: beyond float32
    for i in range(3):
        assert auroc(big, y)[i].item() == pytest.approx(brute_auroc(small[i].flatten().numpy(),
                                                                    y[i].flatten().numpy()))
    pred = small > small.flatten(1).mean(1)[:, None, None]          # the threshold by hand
    want = (pred & y).flatten(1).sum(1) / (pred | y).flatten(1).sum(1)
    np.testing.assert_allclose(iou_at_mean(big, y), want, rtol=1e-6)


def test_resize_maps():
    m = torch.arange(4.0).reshape(1, 2, 2)
    assert torch.equal(resize_maps(m, (4, 4), "nearest")[0, :2, :2], torch.zeros(2, 2))
    assert resize_maps(m, (8, 6)).shape == (1, 8, 6)
    with pytest.raises(ValueError, match="mode"):
        resize_maps(m, (4, 4), "cubic")


def brute_ap(s, y):
    """AP from its definition: each distinct threshold t, high to low, adds (R_t - R_prev) P_t."""
    s, y = np.asarray(s, float), np.asarray(y, bool)
    total, prev_r = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        p, r = (pred & y).sum() / pred.sum(), (pred & y).sum() / y.sum()
        total += (r - prev_r) * p
        prev_r = r
    return total


def test_average_precision_hand_case():
    # scikit-learn's documented example: 0.8333...
    assert average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]),
                             torch.tensor([0, 0, 1, 1])) == pytest.approx(5 / 6)
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0])) == 1.0
    # all tied: precision is the positive rate at the single threshold
    assert average_precision(torch.ones(4), torch.tensor([1, 0, 0, 0])) == pytest.approx(0.25)
    assert np.isnan(average_precision(torch.rand(3), torch.zeros(3)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=30))
def test_average_precision_matches_brute_force_with_ties(pairs):
    s = [float(a) for a, _ in pairs]
    y = [b for _, b in pairs]
    if not any(y):
        return
    assert average_precision(torch.tensor(s), torch.tensor(y)) == pytest.approx(brute_ap(s, y))


def test_binary_segmentation_perfect_map():
    scores = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    masks = torch.tensor([[[0, 0], [1, 1]]])
    out = binary_segmentation(scores, masks, size=2)
    assert out["acc"] == pytest.approx(100) and out["miou"] == pytest.approx(100)
    assert out["map"] == pytest.approx(100) and out["n"] == 1


def test_binary_segmentation_hand_case_sums_over_the_dataset():
    # image A: predicts 1 of 2 foreground pixels; image B: no foreground, one false positive
    scores = torch.tensor([[[3.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 5.0]]])
    masks = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    out = binary_segmentation(scores, masks, size=2)
    assert out["acc"] == pytest.approx(75.0)
    # foreground: 1 / 3 (intersections and unions summed over images); background: 5 / 7
    assert out["miou"] == pytest.approx(100 * (1 / 3 + 5 / 7) / 2)
    # both images: AP = 3/4 * 3/4 + 1/4 * 1/2 = 11/16 (worked out in the two-channel ranking)
    assert out["map"] == pytest.approx(100 * 11 / 16)
    assert out["miou_acc_2_minus_acc"] == pytest.approx(100 * 0.75 / 1.25)


def test_binary_segmentation_resizes_maps_and_masks():
    scores = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])              # 2x2: right half high
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[:, :, 4:] = 2                                             # any nonzero label is foreground
    for resize in ("nearest", "bilinear"):
        out = binary_segmentation(scores, masks, size=4, resize=resize)
        assert out["acc"] == pytest.approx(100) and out["miou"] == pytest.approx(100)


def test_binary_segmentation_ignores_affine_rescaling_and_constant_maps():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 5, 5, generator=g)
    masks = torch.rand(3, 10, 10, generator=g) > 0.6
    a = binary_segmentation(scores, masks, size=10)
    b = binary_segmentation(7 * scores - 3, masks, size=10)
    for k in ("acc", "miou", "map"):
        assert a[k] == pytest.approx(b[k], abs=1e-9)
    flat = binary_segmentation(torch.ones(1, 3, 3), torch.ones(1, 3, 3), size=3)
    assert flat["acc"] == pytest.approx(0.0)                      # nothing predicted > mean


def test_binary_segmentation_errors():
    with pytest.raises(ValueError, match="same N"):
        binary_segmentation(torch.rand(2, 3, 3), torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        binary_segmentation(torch.full((1, 3, 3), float("nan")), torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="resize"):
        binary_segmentation(torch.rand(1, 3, 3), torch.ones(1, 3, 3), resize="cubic")


def test_binary_segmentation_refuses_a_dataset_without_foreground():
    # all background and a constant map would otherwise score 100 / 100 / 100
    with pytest.raises(ValueError, match="no foreground"):
        binary_segmentation(torch.ones(2, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long), size=3)
    # one image without foreground is fine when the dataset has some
    out = binary_segmentation(torch.rand(2, 3, 3), torch.stack([torch.zeros(3, 3), torch.ones(3, 3)]), size=3)
    assert 0 <= out["acc"] <= 100


@pytest.mark.parametrize("bad", [-1.0, 0.5, float("nan")])
def test_binary_segmentation_refuses_soft_or_negative_masks(bad):
    masks = torch.zeros(1, 3, 3)
    masks[0, 0, 0], masks[0, 1, 1] = 1.0, bad
    with pytest.raises(ValueError, match="non-negative integers"):
        binary_segmentation(torch.rand(1, 3, 3), masks, size=3)


def test_binary_segmentation_takes_float64_scores_beyond_float32_range():
    scores = torch.tensor([[[0.0, 1e300], [0.0, 1e300]]], dtype=torch.float64)
    masks = torch.tensor([[[0, 1], [0, 1]]])
    out = binary_segmentation(scores, masks, size=2)
    assert out["acc"] == pytest.approx(100) and out["map"] == pytest.approx(100)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2 ** 16), st.sampled_from([5, 12]),
       st.sampled_from(["nearest", "bilinear"]), st.integers(1, 5))
def test_merged_per_image_counts_are_the_whole_dataset_scores(n, seed, size, resize, cut):
    """Any split of a dataset into parts (processes, resumed runs), merged in image order, scores
    exactly as the dataset in one call: counts are summed, not averages averaged."""
    g = torch.Generator().manual_seed(seed)
    # some maps constant (all zero)
    scores = torch.rand(n, 7, 9, generator=g) * torch.randint(0, 2, (n, 1, 1), generator=g)
    masks = torch.rand(n, 13, 11, generator=g) > 0.6
    masks[0, 4:9, 3:8] = True                    # some foreground after resizing
    whole = binary_segmentation(scores, masks, size, resize)
    cut = min(cut, n)
    parts = segmentation_counts(scores[:cut], masks[:cut], size, resize) + \
        segmentation_counts(scores[cut:], masks[cut:], size, resize) if cut < n else \
        segmentation_counts(scores, masks, size, resize)
    assert merge_segmentation_counts(parts) == whole
    assert [c["pixels"] for c in parts] == [size * size] * n


def test_per_image_counts_are_the_confusion_counts_by_hand():
    s = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])   # second map constant
    m = torch.tensor([[[False, True], [False, False]], [[True, False], [False, False]]])
    a, b = segmentation_counts(s, m, size=2)
    # image 0: pred = s > 0.5 = [[0, 1], [1, 0]] against gt [[0, 1], [0, 0]]
    assert (a["correct"], a["inter_fg"], a["union_fg"], a["inter_bg"], a["union_bg"], a["foreground"]) == \
        (3, 1, 2, 2, 3, 1)
    # image 1: a constant map predicts nothing
    assert (b["correct"], b["inter_fg"], b["union_fg"], b["inter_bg"], b["union_bg"]) == (3, 0, 1, 3, 4)
    # two channels [1 - s, s] against [1 - gt, gt]: score 1 holds 3 of the 4 positives among 4
    # pixels (P = 3/4 at R = 3/4), score 0 the last (P = 4/8 at R = 1)
    assert a["ap"] == pytest.approx(0.75 * 0.75 + 0.25 * 0.5)
    with pytest.raises(ValueError, match="no foreground"):
        merge_segmentation_counts([dict(b, foreground=0)])
    with pytest.raises(ValueError, match="empty"):
        merge_segmentation_counts([])


# ----------------------------------------------------------------------------- Hungarian segmentation
def _brute_force_best(pred, gt, n_classes):
    """Every one-to-one class -> segment assignment of one image: the max matched pixels and the
    (tp, fp, fn) of every assignment reaching it."""
    import itertools
    valid = (gt >= 0) & (gt < n_classes)
    cols = max(n_classes, int(pred.max()) + 1)
    hist = np.zeros((n_classes, cols))
    for g, p in zip(gt[valid].tolist(), pred[valid].tolist()):
        hist[g, p] += 1
    best, outs = -1, []
    for perm in itertools.permutations(range(cols), n_classes):
        tp = hist[np.arange(n_classes), perm]
        if tp.sum() > best:
            best, outs = tp.sum(), []
        if tp.sum() == best:
            outs.append((tp, hist[:, perm].sum(0) - tp, hist.sum(1) - tp))
    return best, outs, valid.sum()


def test_hungarian_counts_match_brute_force():
    from chains_lite.eval.metrics import hungarian_counts
    rng = np.random.default_rng(0)
    for _ in range(20):
        gt = rng.integers(-1, 3, size=(1, 6, 6))          # -1 = unlabelled
        pred = rng.integers(0, rng.integers(2, 5), size=(1, 6, 6))
        c = hungarian_counts(torch.as_tensor(pred), torch.as_tensor(gt), 3)
        best, outs, pixels = _brute_force_best(pred[0], gt[0], 3)
        assert c["tp"].sum() == best and c["pixels"][0] == pixels
        assert any(np.array_equal(c["tp"][0], tp) and np.array_equal(c["fp"][0], fp)
                   and np.array_equal(c["fn"][0], fn) for tp, fp, fn in outs)


def test_hungarian_segmentation_of_a_relabelled_perfect_segmentation_is_one():
    from chains_lite.eval.metrics import hungarian_segmentation
    gt = torch.randint(0, 4, (3, 10, 10), generator=torch.Generator().manual_seed(1))
    pred = torch.tensor([3, 0, 2, 1])[gt] + 5  # segment ids permuted and shifted
    r = hungarian_segmentation(pred, gt, 4)
    assert r["acc"] == 1.0 and r["miou"] == 1.0


def test_hungarian_segmentation_hand_case():
    from chains_lite.eval.metrics import hungarian_segmentation
    gt = torch.tensor([[[0, 0, 1, 1, 255]]])
    pred = torch.tensor([[[1, 1, 1, 0, 0]]])   # segment 1 -> class 0, segment 0 -> class 1
    r = hungarian_segmentation(pred, gt, 2)
    # class 0: tp 2, fp 1 (a class-1 pixel in segment 1), fn 0; class 1: tp 1, fp 0, fn 1
    assert r["acc"] == pytest.approx(3 / 4)
    assert r["iou"] == pytest.approx([2 / 3, 1 / 2])


def test_hungarian_segmentation_rejects_bad_input():
    from chains_lite.eval.metrics import hungarian_segmentation
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="one shape"):
        hungarian_segmentation(torch.zeros(1, 4, 5, dtype=torch.long), gt, 2)
    with pytest.raises(ValueError, match="integer"):
        hungarian_segmentation(torch.zeros(1, 4, 4), gt, 2)
    with pytest.raises(ValueError, match="n_classes"):
        hungarian_segmentation(gt, gt, 0)
    with pytest.raises(ValueError, match="no labelled pixel"):
        hungarian_segmentation(gt, gt - 1, 2)


def test_average_precision_refuses_nan_scores_and_unequal_lengths():
    from chains_lite.eval.metrics import average_precision
    with pytest.raises(ValueError, match="scores contain NaN"):
        average_precision(torch.tensor([0.9, float("nan"), 0.1]), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="one entry each, got 3 and 2"):
        average_precision(torch.tensor([0.9, 0.5, 0.1]), torch.tensor([1, 0]))
    assert average_precision(torch.tensor([0.9, 0.5, 0.1]), torch.tensor([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
