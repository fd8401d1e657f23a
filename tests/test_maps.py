"""Global maps against the chain functions they are built from; localisation over layers and images."""
import pytest
import torch

from chains_lite import column_sum, tokenrank
from chains_lite.capture import TokenLayout
from chains_lite.maps import center_token, global_map, localisation, mix, patch_map
from chains_lite.metrics import auroc, iou_at_mean, resize_maps

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
