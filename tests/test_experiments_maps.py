"""Chapter 2's tables (chains_lite.experiments.maps): localisation scores, the summary table, paired tests."""
import pytest
import torch

from chains_lite.core.layout import TokenLayout
from chains_lite.experiments.maps import localisation
from chains_lite.eval.metrics import auroc, iou_at_mean, resize_maps

LAYOUT = TokenLayout(cls_index=0, register_indices=(1,), grid=(2, 3), patch_start=2)


def test_summary_table_and_paired_comparison():
    from chains_lite.experiments.maps import paired_comparison, summary_table
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
