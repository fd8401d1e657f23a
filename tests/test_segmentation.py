"""Per-word maps against hand-computed bounces, word tokens and settings, the ShapeWorld task, and
the lite segmentation path end to end."""
import numpy as np
import pytest
import torch

from chains_lite.segmentation import (METHODS, Setting, class_word_task, start_vectors, word_map,
                                      word_tokens)


def test_word_map_methods_are_the_hand_computed_bounces():
    g = np.random.default_rng(0)
    n_text, grid = 3, (2, 2)
    n = n_text + 4
    A = g.random((n, n)) ** 3
    A /= A.sum(1, keepdims=True)
    j = 1
    A_l = A / A.sum(0, keepdims=True)            # column-normalised: A_l v is the outgoing bounce
    e = np.eye(n)[j]
    want = {"row_select": e @ A, "column_select": A_l @ e, "incoming_2": e @ A @ A,
            "incoming_3": e @ A @ A @ A, "outgoing_2": A_l @ (A_l @ e),
            "outgoing_3": A_l @ (A_l @ (A_l @ e))}
    from chains_lite.capture import TokenLayout
    layout = TokenLayout(None, (), grid, n_text)
    for method in METHODS:
        w = want[method] / want[method].sum()
        got = word_map(torch.tensor(A), layout, torch.tensor(e), method)
        np.testing.assert_allclose(got.numpy(), w[n_text:].reshape(grid), rtol=1e-9)


def test_word_tokens_and_start_vectors():
    caption = "a red star and a blue star on stripes"
    # offsets as a fast tokenizer gives them: [CLS] a red star and a blue star on strip ##es [SEP] pad
    offsets = [(0, 0), (0, 1), (2, 5), (6, 10), (11, 14), (15, 16), (17, 21), (22, 26), (27, 29),
               (30, 35), (35, 37), (0, 0), (0, 0)]
    tokens = {"offset_mapping": [offsets]}
    assert word_tokens(tokens, 0, caption, "star") == [3, 7]
    assert word_tokens(tokens, 0, caption, "Stripes") == [9, 10]
    assert word_tokens(tokens, 0, caption, "a") == [1, 5]          # whole words only
    with pytest.raises(ValueError, match="not a word"):
        word_tokens(tokens, 0, caption, "circle")
    v = start_vectors([[3, 7], [2]], 13)
    assert v[0, 3] == v[0, 7] == 0.5 and v[1, 2] == 1 and torch.allclose(v.sum(1), torch.ones(2))


def test_settings_parse_and_validate():
    assert Setting.parse("outgoing_2") == Setting()
    assert Setting.parse("incoming_3:uniform:single") == Setting("incoming_3", "uniform", "single")
    assert Setting("row_select", blocks="single").name == "row_select:lambda2:single"
    for bad in ("outgoing_9", "outgoing_2:softmax", "outgoing_2:lambda2:triple", "a:b:c:d"):
        with pytest.raises(ValueError):
            Setting.parse(bad)


def shapeworld_task(n, seed):
    from chains_lite.zoo import shapeworld
    return class_word_task(shapeworld(n, seed=seed, split="test", size=32))


def test_class_word_task_masks_every_object_of_the_word():
    batch, masks, words = shapeworld_task(40, seed=0)
    for i in range(40):
        same = [k + 1 for k, s in enumerate(batch.shapes[i]) if s == words[i]]
        assert words[i] == batch.shapes[i][0] and words[i] in batch.captions[i]
        assert torch.equal(masks[i], torch.isin(batch.masks[i], torch.tensor(same)))


def test_lite_segmentation_end_to_end():
    from chains_lite import zoo
    from chains_lite.segmentation import evaluate, segment
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch, masks, words = shapeworld_task(4, seed=3)
    m = segment(loaded, batch.images[0], batch.captions[0], words[0], "column_select")
    assert m.shape == (16, 16) and (m >= 0).all() and m.sum() <= 1 + 1e-5
    res = evaluate(loaded, batch.images, masks, batch.captions, words,
                   ["column_select", "outgoing_2:uniform:single"], progress=False)
    for name in ("column_select:lambda2", "outgoing_2:uniform:single"):
        assert res[name]["n"] == 4 and 0 <= res[name]["acc"] <= 100 and 0 <= res[name]["map"] <= 100


def test_word_object_scores_runs_on_multi_object_images():
    from chains_lite import zoo
    from chains_lite.segmentation import word_object_scores
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch = zoo.shapeworld(12, seed=1, split="test", size=32)
    n = sum(len(s) for s in batch.shapes if len(s) >= 2 and len(set(s)) == len(s))
    for kind in ("shape", "color"):
        r = word_object_scores(loaded, batch, kind, progress=False)
        assert r["n"] == n and 0 <= r["map"] <= 100
    with pytest.raises(ValueError, match="kind"):
        word_object_scores(loaded, batch, "size")


def test_imagenet_segmentation_without_h5py_says_how_to_install_it(monkeypatch, tmp_path):
    import sys
    from chains_lite.segmentation import load_imagenet_segmentation
    monkeypatch.setitem(sys.modules, "h5py", None)             # as if not installed
    with pytest.raises(ImportError, match="pip install h5py"):
        load_imagenet_segmentation(tmp_path / "gtsegs_ijcv.mat")


def test_segmentation_records_do_not_depend_on_the_batch_and_merge_to_the_scores():
    """One seed per image: an image's record is the same alone or in a batch, and merged records
    are binary_segmentation of the maps of the whole set."""
    from chains_lite import zoo
    from chains_lite.metrics import binary_segmentation
    from chains_lite.segmentation import merge_records, segmentation_records, word_maps
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch, masks, words = shapeworld_task(3, seed=3)
    kw = dict(settings=["outgoing_2:uniform"], steps=1)
    seeds = [11, 12, 13]
    together = segmentation_records(loaded, batch.images, masks, batch.captions, words, size=32,
                                    seed=seeds, **kw)
    alone = segmentation_records(loaded, batch.images[2:], masks[2:], batch.captions[2:], words[2:],
                                 size=32, seed=seeds[2:], **kw)
    key = "outgoing_2:uniform"
    assert alone[0][key]["correct"] == together[2][key]["correct"]
    assert alone[0][key]["ap"] == pytest.approx(together[2][key]["ap"], abs=1e-6)
    maps = word_maps(loaded, batch.images, batch.captions, words, seed=seeds, **kw)[key]
    assert merge_records(together)[key] == binary_segmentation(maps, masks, size=32)
    # the seed matters: other noise, other maps
    other = word_maps(loaded, batch.images, batch.captions, words, seed=[1, 2, 3], **kw)[key]
    assert not torch.allclose(maps, other)
    with pytest.raises(ValueError, match="one int per image"):
        word_maps(loaded, batch.images, batch.captions, words, seed=[1, 2], **kw)


def test_evaluate_batches_scores_a_stream_as_evaluate_scores_the_whole_set():
    from chains_lite import zoo
    from chains_lite.segmentation import evaluate, evaluate_batches
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch, masks, words = shapeworld_task(4, seed=5)
    kw = dict(settings=["outgoing_2:uniform", "row_select:uniform"], steps=1, size=32, seed=7,
              progress=False)
    whole = evaluate(loaded, batch.images, masks, batch.captions, words, batch_size=2, **kw)
    stream = ((batch.images[i:i + 2], masks[i:i + 2], batch.captions[i:i + 2], words[i:i + 2])
              for i in (0, 2))
    got = evaluate_batches(loaded, stream, total=2, **kw)
    for k in ("outgoing_2:uniform", "row_select:uniform"):
        assert got[k]["n"] == 4
        for m in ("acc", "miou", "map"):
            assert got[k][m] == pytest.approx(whole[k][m], abs=1e-9)
    assert got["time_s"] > 0
