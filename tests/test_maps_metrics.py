"""Localisation metrics against brute force and hand cases; global maps against the chain
functions they are built from."""
import itertools

import numpy as np
import pytest
import torch

from chains_lite import column_sum, tokenrank
from chains_lite.capture import TokenLayout
from chains_lite.maps import center_token, global_map, localisation, mix, patch_map
from chains_lite.metrics import auroc, iou_at_mean, resize_maps


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


def test_resize_maps():
    m = torch.arange(4.0).reshape(1, 2, 2)
    assert torch.equal(resize_maps(m, (4, 4), "nearest")[0, :2, :2], torch.zeros(2, 2))
    assert resize_maps(m, (8, 6)).shape == (1, 8, 6)
    with pytest.raises(ValueError, match="mode"):
        resize_maps(m, (4, 4), "cubic")


LAYOUT = TokenLayout(cls_index=0, register_indices=(1,), grid=(2, 3), patch_start=2)


def test_global_maps_are_the_chain_quantities():
    A = torch.rand(3, 8, 8).softmax(-1)
    assert center_token(LAYOUT) == 2 + 1 * 3 + 1
    torch.testing.assert_close(global_map(A, "center_row", LAYOUT), A[:, 6])
    torch.testing.assert_close(global_map(A, "cls_row", LAYOUT), A[:, 0])
    torch.testing.assert_close(global_map(A, "column_sum", LAYOUT), column_sum(A))
    pi = global_map(A, "tokenrank", LAYOUT)
    torch.testing.assert_close(pi, tokenrank(A))
    grid = patch_map(A, "tokenrank", LAYOUT)
    assert grid.shape == (3, 2, 3) and torch.equal(grid[1, 1], pi[1, 5:8])
    torch.testing.assert_close(mix(A[None]), A.mean(0, keepdim=True)[0][None])
    with pytest.raises(ValueError, match="unknown method"):
        global_map(A, "rollout", LAYOUT)
    with pytest.raises(ValueError, match="CLS"):
        global_map(A, "cls_row", TokenLayout(None, (), (2, 4), 0))
    with pytest.raises(ValueError, match="heads"):
        mix(A[None], "max")


def test_localisation_scores_each_layer_and_image(tiny_vit):
    vit = tiny_vit()
    x = torch.rand(5, 3, 16, 16)
    masks = torch.zeros(5, 16, 16, dtype=torch.long)
    masks[:, 4:12, 2:9] = 1
    r = localisation(vit, x, masks, layers=[1], methods=("column_sum", "cls_row"), batch_size=2,
                     progress=False)
    assert r["layers"] == [1] and r["column_sum"]["auroc"].shape == (1, 5)
    # reference for one image: the map by hand, upsampled, scored
    from chains_lite.capture import capture
    with torch.no_grad(), capture(vit, layers=1) as rec:
        vit(x[3:4])
    grid = rec.attentions[0].mean(1)[:, 0, 1:].reshape(1, 4, 4)
    up = resize_maps(grid, (16, 16))
    assert r["cls_row"]["auroc"][0, 3].item() == pytest.approx(auroc(up, masks[3:4] > 0).item(), abs=1e-6)
    assert r["cls_row"]["iou"][0, 3].item() == pytest.approx(iou_at_mean(up, masks[3:4] > 0).item(), abs=1e-6)


def test_explore_map_matches_its_parts():
    from chains_lite import bounce
    from chains_lite.maps import explore_map
    A = torch.rand(3, 8, 8).softmax(-1)
    torch.testing.assert_close(explore_map(A, LAYOUT, 1, "cls_row"), A[1, 0, 2:].reshape(2, 3))
    torch.testing.assert_close(explore_map(A, LAYOUT, "uniform", "bounce_center", bounces=3),
                               bounce(A.mean(0), 6, 3)[2:].reshape(2, 3))
    with pytest.raises(ValueError, match="one image"):
        explore_map(A[None], LAYOUT)


def test_summary_table_and_paired_comparison():
    from chains_lite.maps import paired_comparison, summary_table
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 40, generator=g)
    r = {"layers": [0, 3], "tokenrank": {"auroc": base + 0.1, "iou": base},
         "column_sum": {"auroc": base, "iou": base}}
    table = summary_table(r).splitlines()
    assert len(table) == 3 and table[2].split()[0] == "3" and "*" in table[2].split()[1]
    rows = paired_comparison(r)
    assert rows[0]["wins"] == 1.0 and rows[0]["mean_diff"] == pytest.approx(0.1)
    assert rows[0]["p_value"] < 1e-6            # 40 positive differences out of 40
    assert paired_comparison(r, "column_sum", "tokenrank")[1]["p_value"] > 0.99


def test_model_input_resizes_and_normalises_like_the_library():
    pytest.importorskip("timm")
    from chains_lite.zoo import load_full
    from chains_lite.zoo.inputs import input_size, model_input
    from chains_lite.zoo.load import Loaded
    loaded = load_full("dino-vits16", device="cpu", pretrained=False, depth=1, embed_dim=32, num_heads=2)
    x = torch.rand(2, 3, 50, 50)
    y = model_input(loaded, x)
    assert y.shape == (2, 3, 224, 224) and input_size(loaded.model) == 224
    cfg = loaded.model.pretrained_cfg
    flat = model_input(loaded, torch.full((1, 3, 8, 8), 0.5))
    torch.testing.assert_close(flat[0, :, 0, 0], (0.5 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"]))
    lite = Loaded(loaded.model, "x", "lite", "")
    assert torch.equal(model_input(lite, x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model_input(lite, x * 2)


def test_imagenet_folder_draws_seeded_images_with_sorted_wnid_labels(tmp_path):
    pytest.importorskip("timm")
    from PIL import Image
    from chains_lite.zoo import load_full
    from chains_lite.zoo.inputs import imagenet_folder
    for i in range(1000):
        d = tmp_path / f"n{i:08d}"
        d.mkdir()
        Image.new("RGB", (20, 30), (i % 256, 0, 0)).save(d / "a.png")
    loaded = load_full("vit-b16", device="cpu", pretrained=False, depth=1, embed_dim=32, num_heads=2)
    x, y, wnids = imagenet_folder(tmp_path, 4, seed=1, loaded=loaded)
    x2, y2, _ = imagenet_folder(tmp_path, 4, seed=1, loaded=loaded)
    assert x.shape == (4, 3, 224, 224) and torch.equal(y, y2) and wnids[7] == "n00000007"
    assert len(set(y.tolist())) == 4
    (tmp_path / "n00000000" / "a.png").unlink()
    (tmp_path / "n00000000").rmdir()
    with pytest.raises(ValueError, match="1000 class folders, found 999"):
        imagenet_folder(tmp_path, 4, seed=1, loaded=loaded)
