"""Chapter 2's tables (chains_lite.experiments.maps): localisation scores, the summary table, paired tests."""
import pytest
import torch

from chains_lite.core.layout import TokenLayout
from chains_lite.experiments.maps import localisation
from chains_lite.eval.metrics import auroc, iou_at_mean, resize_maps

LAYOUT = TokenLayout(cls_index=0, register_indices=(1,), grid=(2, 3), patch_start=2)


def test_over_layers_paired_over_layers_and_paired_comparison():
    from chains_lite.experiments.maps import over_layers, paired_comparison, paired_over_layers
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 40, generator=g)
    r = {"layers": [0, 3], "tokenrank": {"auroc": base + 0.1, "iou": base},
         "column_sum": {"auroc": base.clone(), "iou": base}}
    r["column_sum"]["auroc"][:, 5] = float("nan")              # an image left out
    s = over_layers(r)
    assert s["tokenrank"]["mean"] == pytest.approx(base.double().mean().item() + 0.1)
    assert s["column_sum"]["n"] == 39
    assert s["tokenrank"]["low"] < s["tokenrank"]["mean"] < s["tokenrank"]["high"]
    d = paired_over_layers(r)
    assert d["mean"] == pytest.approx(0.1) and d["wins"] == 1.0 and d["n"] == 39
    assert d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1)
    assert d["p_value"] < 1e-6
    with pytest.raises(ValueError, match="metric"):
        over_layers(r, "ap")
    from chains_lite.experiments.maps import mean_interval
    m = mean_interval([[1.0, 2.0], [3.0, float("nan")]], n_boot=300)
    assert m["mean"] == 2.0 and m["n"] == 3 and 1.0 <= m["low"] < 2.0 < m["high"] <= 3.0
    r["column_sum"]["auroc"][:, 5] = base[:, 5]
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


def test_per_head_against_a_hand_computed_head(tiny_vit):
    import numpy as np
    from chains_lite.capture import capture
    from chains_lite.experiments.maps import per_head
    vit = tiny_vit()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(3, 16, 16, dtype=torch.long)
    masks[:, 2:10, 5:14] = 1
    r = per_head(vit, x, masks, batch_size=2)
    with torch.no_grad(), capture(vit) as rec:
        vit(x)
    L, H = len(rec.attentions), rec.attentions[0].shape[1]
    assert r["layers"] == list(range(L))
    assert all(r[k].shape == (L, H, 3) for k in ("lambda2", "auroc_diff", "distance"))
    P = rec.attentions[1][2, 1].double()                          # layer 1, head 1, image 2
    ev = np.sort(np.abs(np.linalg.eigvals(P.numpy())))[::-1]
    assert r["lambda2"][1, 1, 2].item() == pytest.approx(ev[1], abs=1e-3)
    # TokenRank by hand: the left eigenvector of the teleported chain for eigenvalue 1
    n = P.shape[0]
    T = 0.99 * P.numpy() + 0.01 / n
    w, V = np.linalg.eig(T.T)
    pi = np.real(V[:, np.argmax(np.real(w))])
    pi = pi / pi.sum()
    tr = torch.tensor(pi[1:]).float()                             # patches (CLS is token 0)
    cs = P.mean(0)[1:].float()
    up = lambda v: resize_maps(v.reshape(1, 4, 4), (16, 16))      # noqa: E731
    fg = masks[2:3] > 0
    diff = auroc(up(tr), fg) - auroc(up(cs), fg)
    assert r["auroc_diff"][1, 1, 2].item() == pytest.approx(diff.item(), abs=1e-5)
    dist = (tr / tr.sum() - cs / cs.sum()).abs().sum()
    assert r["distance"][1, 1, 2].item() == pytest.approx(dist.item(), abs=1e-4)


def test_rank_correlation_hand_computed_case():
    from chains_lite.experiments.maps import rank_correlation
    # ranks differ by one swap: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    r = rank_correlation([1.0, 2.0, 3.0, 4.0, float("nan")], [10.0, 30.0, 20.0, 40.0, 1.0], n_boot=200)
    assert r["n"] == 4 and r["rho"] == pytest.approx(0.8)
    assert r["low"] <= r["rho"] <= r["high"] <= 1.0
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, generator=g)
    up = rank_correlation(x, x ** 3 + 1, n_boot=200)               # monotone: rho = 1, p ~ 0
    assert up["rho"] == pytest.approx(1.0) and up["p_value"] < 1e-10 and up["low"] == pytest.approx(1.0)
    noise = rank_correlation(x, torch.rand(60, generator=g), n_boot=500)
    assert noise["low"] < 0 < noise["high"]                       # independent: the interval holds 0
    with pytest.raises(ValueError, match="same number"):
        rank_correlation([1.0, 2.0, 3.0], [1.0, 2.0])
