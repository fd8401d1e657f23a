"""Token masking: the right columns vanish in the masked layers only, special tokens survive, a 0%
fraction is the clean model, and the AUC integrates hand-made curves correctly."""
import math
import warnings

import pytest
import torch

from chains_lite import tokenrank
from chains_lite.core.layout import TokenLayout
from chains_lite.capture import add_logit_bias, capture
from chains_lite.experiments.masking import auc_table
from chains_lite.methods.masking import column_mask, masking_curves, normalized_auc, token_scores

LAYOUT = TokenLayout(cls_index=0, register_indices=(1,), grid=(2, 2), patch_start=2)


def test_column_mask_picks_top_k_patches_per_head_never_special():
    scores = torch.tensor([[[9.0, 8.0, 0.1, 0.4, 0.3, 0.2], [9.0, 8.0, 0.4, 0.1, 0.2, 0.3]]])
    bias = column_mask(scores, 2, LAYOUT)
    assert bias.shape == (1, 2, 1, 6)
    blocked = torch.isinf(bias[0, :, 0])
    assert blocked[0].tolist() == [False, False, False, True, True, False]
    assert blocked[1].tolist() == [False, False, True, False, False, True]
    assert torch.all(bias[~torch.isinf(bias)] == 0)
    assert not torch.isinf(column_mask(scores, 0, LAYOUT)).any()
    assert torch.isinf(column_mask(scores, 4, LAYOUT)[..., 2:]).all()
    with pytest.raises(ValueError, match="out of range"):
        column_mask(scores, 5, LAYOUT)


def test_token_scores_are_the_chain_quantities():
    A = torch.rand(2, 3, 6, 6).softmax(-1)
    c = 2 + 1 * 2 + 1   # center of the 2x2 grid: row 1, column 1
    torch.testing.assert_close(token_scores(A, "tokenrank", LAYOUT), tokenrank(A))
    torch.testing.assert_close(token_scores(A, "center_row", LAYOUT), A[..., c, :])
    col = A[..., :, c] / A[..., :, c].sum(-1, keepdim=True)
    torch.testing.assert_close(token_scores(A, "center_column", LAYOUT), col)
    torch.testing.assert_close(token_scores(A, "column_sum", LAYOUT), A.sum(-2) / 6)
    torch.testing.assert_close(token_scores(A, "cls_row", LAYOUT), A[..., 0, :])
    mixed = token_scores(A, "tokenrank_uniform", LAYOUT)
    torch.testing.assert_close(mixed[:, 0], tokenrank(A.mean(1)))
    assert torch.equal(mixed[:, 0], mixed[:, 2])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(token_scores(A, "random", LAYOUT, g1), token_scores(A, "random", LAYOUT, g2))
    with pytest.raises(ValueError, match="unknown strategy"):
        token_scores(A, "gradcam", LAYOUT)


def test_masked_columns_are_exactly_zero_in_masked_layers_only(tiny_vit):
    vit, x = tiny_vit(embed_dim=32, depth=4, reg_tokens=1), torch.rand(2, 3, 16, 16)
    with torch.no_grad(), capture(vit, layers=[0, 1]) as rec:
        vit(x)
    scores = [token_scores(A, "tokenrank", rec.layout) for A in rec.attentions]
    bias = {l: column_mask(s, 5, rec.layout) for l, s in zip([0, 1], scores)}
    with torch.no_grad(), add_logit_bias(vit, lambda l, n: bias[l], layers=[0, 1]), capture(vit) as m:
        vit(x)
    for layer in range(4):
        A = m.attentions[layer]
        torch.testing.assert_close(A.sum(-1), torch.ones_like(A.sum(-1)))
        blocked = torch.isinf(bias[min(layer, 1)][:, :, 0])          # (B, H, N)
        hit = A.masked_select(blocked[:, :, None, :].expand_as(A))
        if layer < 2:
            assert torch.all(hit == 0)
            assert not blocked[..., :2].any()                          # CLS and register kept
        else:
            assert torch.all(hit > 0)


def test_zero_fraction_reproduces_clean_accuracy(tiny_vit):
    vit = tiny_vit(embed_dim=32, depth=4)
    x, y = torch.rand(12, 3, 16, 16), torch.randint(0, 3, (12,))
    r = masking_curves(vit, x, y, strategies=("random", "tokenrank", "cls_row"), fractions=(0.0, 0.5, 1.0),
                       batch_size=5, progress=False)
    with torch.no_grad():
        clean = (vit(x).argmax(-1) == y).float().mean().item()
    assert r["clean_accuracy"] == pytest.approx(clean)
    for s in ("random", "tokenrank", "cls_row"):
        assert r[s][0] == pytest.approx(clean)
    assert r["layers"] == [0, 1]
    assert set(auc_table(r)) == {"random", "tokenrank", "cls_row"}


def test_normalized_auc_on_hand_made_curves():
    f = [0.0, 0.5, 1.0]
    assert normalized_auc(f, [0.8, 0.8, 0.8], 0.8) == pytest.approx(1.0)
    assert normalized_auc(f, [1.0, 0.5, 0.0], 1.0) == pytest.approx(0.5)
    assert normalized_auc([0.0, 0.1, 0.9], [1.0, 0.0, 0.0], 1.0) == pytest.approx(0.05 / 0.9)
    with pytest.raises(ValueError, match="increasing"):
        normalized_auc([0.0, 0.0], [1, 1], 1)
    assert math.isfinite(normalized_auc([0, 0.1], [0.5, 0.25], 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero on the way
        assert math.isnan(normalized_auc(f, [0.0, 0.0, 0.0], 0.0))
    for clean in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="clean accuracy"):
            normalized_auc(f, [0.0, 0.0, 0.0], clean)


def test_clip_zero_shot_masking_through_multihead_attention():
    pytest.importorskip("open_clip")
    from chains_lite.methods.masking import clip_classifier
    from chains_lite.zoo.load import load_full
    torch.manual_seed(0)
    clip = load_full("clip-vitb32", device="cpu", pretrained=False)
    classify = clip_classifier(clip, ["cat", "dog", "car"])
    x = torch.randn(3, 3, 224, 224)
    y = classify(x).argmax(-1)                       # labels = the clean predictions
    r = masking_curves(clip.model, x, y, classify=classify, strategies=("tokenrank", "cls_row"),
                       fractions=(0.0, 1.0), layers=[0, 1], progress=False)
    assert r["clean_accuracy"] == 1.0 and r["tokenrank"][0] == 1.0 and r["cls_row"][0] == 1.0
    with torch.no_grad(), capture(clip.model, layers=[0]) as rec:
        clip.model.encode_image(x[:1])
    bias = column_mask(token_scores(rec.attentions[0], "tokenrank", rec.layout), 10, rec.layout)
    with torch.no_grad(), add_logit_bias(clip.model, bias, layers=[0]), capture(clip.model, layers=[0]) as m:
        clip.model.encode_image(x[:1])
    A = m.attentions[0]
    blocked = torch.isinf(bias)[:, :, 0]                                    # (1, H, N)
    assert torch.all(A.masked_select(blocked[:, :, None, :].expand_as(A)) == 0)
    assert not blocked[..., 0].any()




def test_mean_pooled_readout_reads_the_mean_of_the_last_patch_tokens(tiny_vit):
    from chains_lite.methods.masking import mean_patch_features, mean_pool_classifier
    vit = tiny_vit(reg_tokens=1)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    f = mean_patch_features(vit, x, batch_size=2)
    with torch.no_grad():
        tokens = vit.norm(vit.blocks(vit._pos_embed(vit.patch_embed(x))))   # CLS, register, 16 patches
    torch.testing.assert_close(f, tokens[:, 2:].mean(1))
    head = torch.nn.Linear(16, 3)
    with torch.no_grad():
        torch.testing.assert_close(mean_pool_classifier(vit, head)(x), head(tokens[:, 2:].mean(1)))
    with pytest.raises(ValueError, match="timm VisionTransformer"):
        mean_patch_features(torch.nn.Linear(2, 2), x)
