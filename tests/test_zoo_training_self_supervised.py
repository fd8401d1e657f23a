"""The self-supervised objective of shapes-vit-ssl (chains_lite.zoo.training.self_supervised):
its views and masks, its two losses against references, that it learns, that no label reaches it,
and the linear-probe head."""
import dataclasses
import itertools
import math

import pytest
import torch

pytest.importorskip("timm")

from chains_lite.zoo.models import build  # noqa: E402
from chains_lite.zoo.shapeworld import shapeworld  # noqa: E402
from chains_lite.zoo.training import objectives, self_supervised  # noqa: E402
from chains_lite.zoo.training.self_supervised import (ContrastiveMIM, augment, fit_linear_head,  # noqa: E402
                                                      mask_pixels, nt_xent, overlay, patchify, random_masks)

TINY = dict(depth=2, embed_dim=32, num_heads=2)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_views_are_seeded_random_crops_in_range():
    images = shapeworld(6, seed=0).images
    a, b = augment(images, _gen(1)), augment(images, _gen(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, augment(images, _gen(2)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        augment(images[:, :2], _gen())


def test_a_full_crop_without_jitter_is_the_image_or_its_mirror(monkeypatch):
    """With the draws forced to area 1, aspect 1, no jitter, the identity colour transform and no
    overlay, a view is the image itself (no flip) or torch.flip of it, up to the bilinear
    resampling (exact here)."""
    images = torch.rand(2, 3, 8, 8)
    monkeypatch.setattr(self_supervised, "overlay", lambda b, size, gen: torch.zeros(b, 1, size, size))
    for flip_draw, expected in ((0.9, images), (0.1, images.flip(-1))):
        # area, aspect, x, y, flip, contrast, brightness; hue 0, saturation 1, no mirror
        draws = [torch.tensor([[1.0, 0.5, 0.5, 0.5, flip_draw, 0.5, 0.5, 0.0, 0.6, 0.9]] * 2)]
        with monkeypatch.context() as m:
            m.setattr(torch, "rand", lambda *a, draws=draws, **k: draws.pop(0))
            out = augment(images, _gen(), scale=(0.35, 1.0))
        assert torch.allclose(out, expected, atol=1e-5)


def test_colour_transforms_keep_grey_levels_and_include_every_channel_order():
    u = torch.rand(500, 3, generator=_gen(), dtype=torch.float64)
    m = self_supervised.colour_matrices(u)
    x = torch.rand(500, 3, dtype=torch.float64)
    y = (m @ x[:, :, None])[..., 0]
    assert torch.allclose(y.mean(1), x.mean(1))                                    # grey level kept
    chroma = lambda v: v - v.mean(1, keepdim=True)
    sat = torch.where(u[:, 1] < 0.2, 0.0, 0.5 + (u[:, 1] - 0.2) / 0.8)
    assert torch.allclose(chroma(y).norm(dim=1), sat * chroma(x).norm(dim=1))      # saturation scales
    assert (sat == 0).float().mean().item() == pytest.approx(0.2, abs=0.06)
    ident = self_supervised.colour_matrices(torch.tensor([[0.0, 0.6, 0.9]], dtype=torch.float64))
    assert torch.allclose(ident[0], torch.eye(3, dtype=torch.float64))
    draws = [(a, 0.6, r) for a in (0.0, 1 / 3, 2 / 3) for r in (0.1, 0.9)]     # 3 turns x mirror or not
    mats = self_supervised.colour_matrices(torch.tensor(draws, dtype=torch.float64))
    perms = [torch.eye(3, dtype=torch.float64)[list(p)] for p in itertools.permutations(range(3))]
    for p in perms:
        assert any(torch.allclose(p, q, atol=1e-12) for q in mats), p


def test_overlay_is_a_seeded_grey_pattern_that_scales_with_its_amplitude():
    a, b = overlay(4, 16, _gen(1)), overlay(4, 16, _gen(1))
    assert a.shape == (4, 1, 16, 16) and torch.equal(a, b)
    assert torch.equal(overlay(4, 16, _gen(1), amplitude=0.0), torch.zeros(4, 1, 16, 16))
    assert torch.allclose(overlay(4, 16, _gen(1), amplitude=0.1), a / 2)
    assert a.std(dim=(1, 2, 3)).min() > 0


def test_masks_hide_a_share_of_the_patches_within_the_ratio():
    m = random_masks(200, 64, _gen(), ratio=(0.1, 0.5))
    share = m.float().mean(1)
    assert m.dtype == torch.bool and m.shape == (200, 64)
    assert share.min() >= 0.1 - 1 / 64 and share.max() <= 0.5 + 1 / 64 and m.sum(1).min() >= 1
    assert share.std() > 0.05                        # the share is drawn per image
    assert m.float().mean(0).min() > 0.1             # every position gets masked sometimes


def test_patches_are_the_vit_token_order_and_masking_hides_exactly_them():
    images = torch.rand(2, 3, 16, 24)
    patches = patchify(images, 8)                                   # (2, 2 * 3, 3 * 64)
    for i in range(2):
        for j in range(3):
            assert torch.equal(patches[:, 3 * i + j], images[:, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8].flatten(1))
    mask = torch.tensor([[True, False, False, False, True, False], [False] * 5 + [True]])
    hidden = patchify(mask_pixels(images, mask, 8), 8)
    assert torch.equal(hidden[mask], torch.zeros_like(hidden[mask]))
    assert torch.equal(hidden[~mask], patches[~mask])


def test_contrastive_loss_matches_a_loop_over_the_views():
    """NT-Xent computed view by view in float64: -log of the partner's share of exp(cos / t)
    among all other views."""
    g = _gen(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=-1)
    terms = []
    for i in range(10):
        others = [j for j in range(10) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.2 for j in others])
        terms.append(-(logits[others.index((i + 5) % 10)] - torch.logsumexp(logits, 0)))
    assert nt_xent(z1, z2, 0.2).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # each view equal to its partner and orthogonal to the 6 others: -log(e^(1/t) / (e^(1/t) + 6))
    assert nt_xent(torch.eye(4), torch.eye(4), 0.25).item() == pytest.approx(math.log(1 + 6 * math.exp(-4)), rel=1e-5)


def test_the_objective_learns_on_one_batch():
    """With the same batch and draws each step, Adam lowers both parts of the loss; gradients
    reach the ViT, the CLS projector and the pixel decoder."""
    torch.manual_seed(0)
    model = ContrastiveMIM(build("shapes-vit-ssl", **TINY).train())
    images = shapeworld(8, seed=0).images
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = last = None
    for step in range(15):
        out = model.loss(images, _gen(3))
        opt.zero_grad()
        out["loss"].backward()
        if step == 0:
            first = out
            for part in (model.vit.blocks[0].attn.qkv, model.projector[0], model.decoder):
                assert part.weight.grad.abs().sum() > 0
        opt.step()
        last = out
        assert out["loss"].item() == pytest.approx(out["contrast"].item() + out["mim"].item(), rel=1e-5)
    assert last["contrast"] < first["contrast"] - 0.3 and last["mim"] < 0.5 * first["mim"], (first, last)


def test_the_objective_never_reads_labels_masks_or_captions(monkeypatch):
    """The objective's loss on a pool whose labels, masks, shapes, colours and captions are
    garbage equals its loss on the true pool, draw for draw."""
    real = shapeworld

    def garbage(n, **kw):
        b = real(n, **kw)
        g = torch.Generator().manual_seed(99)
        return dataclasses.replace(b, labels=torch.randint(-5, 50, b.labels.shape, generator=g),
                                   masks=torch.randint(-5, 50, b.masks.shape, generator=g),
                                   shapes=[["?"]] * n, colors=[["?"]] * n, captions=["?"] * n,
                                   backgrounds=["?"] * n)

    args = type("Args", (), dict(pool=6, seed=0, size=64))()
    losses = []
    for source in (real, garbage):
        monkeypatch.setattr(objectives, "shapeworld", source)
        torch.manual_seed(0)
        model, loss_fn, _ = objectives.ssl_objective(args, torch.device("cpu"),
                                                     lambda: build("shapes-vit-ssl", **TINY).train())
        assert isinstance(model, ContrastiveMIM)
        losses.append([loss_fn(torch.tensor([0, 1, 2, 5]), _gen(7)).item() for _ in range(2)])
    assert losses[0] == losses[1]


def test_linear_head_is_the_logistic_regression_of_sklearn():
    """fit_linear_head's logits are those of sklearn's L2 logistic regression on the same
    standardised CLS features (C = 1 / (2 N weight_decay)); the head folds the standardisation."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    torch.manual_seed(0)
    vit = build("shapes-vit-ssl", **TINY).eval()
    data = shapeworld(120, seed=0)
    info = fit_linear_head(vit, data.images, data.labels, weight_decay=1e-2)
    with torch.no_grad():
        x = vit.forward_head(vit.forward_features(data.images), pre_logits=True).double()
        ours = vit(data.images).double().softmax(-1)
    z = ((x - x.mean(0)) / x.std(0)).numpy()
    ref = sklearn.LogisticRegression(C=1 / (2 * len(z) * 1e-2), tol=1e-10, max_iter=10000).fit(z, data.labels.numpy())
    assert torch.allclose(ours, torch.from_numpy(ref.predict_proba(z)), atol=2e-3)
    assert info["train_accuracy"] == pytest.approx((ours.argmax(-1) == data.labels).double().mean().item(), abs=1e-4)
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_linear_head(vit, data.images[:4], torch.tensor([0, 1, 2, 6]))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        fit_linear_head(vit, data.images[:4], data.labels[:3])


def test_readouts_are_the_cls_token_the_mean_patch_token_and_the_last_four_cls_tokens():
    """readout_features against the ViT's own forward: "cls" is the pre-logit feature of its head,
    "avg" the mean of the final patch tokens, and the last-four readout the final norm applied to
    the CLS token after each of the last four blocks (hooked on the blocks)."""
    from chains_lite.zoo.training.self_supervised import READOUTS, cls_features, readout_features
    torch.manual_seed(0)
    vit = build("shapes-vit-ssl", depth=5, embed_dim=32, num_heads=2).eval()
    images = shapeworld(6, seed=0).images
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o)) for b in vit.blocks]
    with torch.no_grad():
        tokens = vit.forward_features(images)
    for h in hooks:
        h.remove()
    feats = {r: readout_features(vit, images, r, batch=4) for r in READOUTS}
    assert torch.allclose(feats["cls"], cls_features(vit, images), atol=1e-5)
    assert torch.allclose(feats["avg"], tokens[:, 1:].mean(1), atol=1e-5)
    assert torch.allclose(feats["cls+avg"], torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1), atol=1e-5)
    last4 = torch.cat([vit.norm(o)[:, 0] for o in seen[-4:]], 1)
    assert feats["cls_last4+avg"].shape == (6, 5 * 32)
    assert torch.allclose(feats["cls_last4+avg"], torch.cat([last4, feats["avg"]], 1), atol=1e-5)
    with pytest.raises(ValueError, match="readout must be one of"):
        readout_features(vit, images, "mean")
