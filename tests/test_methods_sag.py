"""Self-attention guidance (chains_lite.methods.sag) and its experiment, on small random-weight diffusers UNets,
against hand-written sampling loops, hand-computed masks, scipy's Gaussian filter and naive metrics."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from scipy import ndimage

from chains_lite.core.seeding import item_noise
from chains_lite.methods import sag
from chains_lite.core.layout import TokenLayout
from chains_lite.capture import attention_layers, capture


def test_layers_are_the_decoder_and_bottleneck_self_attentions(unet, cond_unet):
    for model in (unet, cond_unet):
        layers = attention_layers(model, kind="self")
        dec = [m for m in model.up_blocks[-2].modules() if m in layers]
        mid = [m for m in model.mid_block.modules() if m in layers]
        assert layers[sag.sag_layer(model, "decoder")] is dec[-1]
        assert layers[sag.sag_layer(model, "bottleneck")] is mid[-1]
    with pytest.raises(ValueError, match="layer must be"):
        sag.sag_layer(unet, "middle")


def test_scale_zero_is_plain_ddim_bit_for_bit(unet, sched):
    noise = item_noise((3, 16, 16), range(3), seed=5)
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(6)
    x = noise.clone()
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(unet(x, t).sample, t, x).prev_sample
    for settings in (sag.SAG(), sag.SAG(0.0, "tokenrank", cap=0.4)):
        out = sag.sample(unet, sched, noise, settings, steps=6)
        assert torch.equal(out.x, x)
        assert (out.masked_fraction == 0).all()


def test_guidance_changes_samples_and_repeats_exactly(unet, sched):
    noise = item_noise((3, 16, 16), [4, 9], seed=1)
    g = sag.SAG(1.5, "tokenrank", cap=0.4)
    a, b = sag.sample(unet, sched, noise, g, steps=4), sag.sample(unet, sched, noise, g, steps=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.masked_fraction, b.masked_fraction)
    assert not torch.allclose(a.x, sag.sample(unet, sched, noise, steps=4).x)
    assert (a.masked_fraction <= 0.4 + 1e-6).all() and (a.masked_fraction > 0).all()


def test_trajectory_masks_follow_the_plain_trajectory(unet, sched):
    noise = item_noise((3, 16, 16), [0, 1], seed=2)
    masks, grid, x, x0 = sag.trajectory_masks(unet, sched, noise, ("column_sum", "tokenrank", "tokenrank"),
                                              (None, 0.25, None), steps=3)
    assert torch.equal(x, sag.sample(unet, sched, noise, steps=3).x)
    assert grid == (8, 8) and masks["tokenrank@0.25"].shape == (3, 2, 8, 8)
    assert (masks["tokenrank@0.25"].flatten(2).sum(-1) <= 16).all()   # floor(0.25 * 64)
    assert (masks["tokenrank@0.25"] <= masks["tokenrank"]).all()      # the cap only removes tokens
    with pytest.raises(ValueError, match="once"):
        sag.trajectory_masks(unet, sched, noise, ("tokenrank", "tokenrank"), (None, None), steps=1)
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(3)
    with torch.no_grad(), capture(unet, layers=[sag.sag_layer(unet)], heads="mean") as rec:
        unet(noise, s.timesteps[0])
    first = sag.token_mask(rec.attentions[0], rec.layouts[0], "column_sum").reshape(2, 8, 8)
    assert torch.equal(masks["column_sum"][0], first)
    with torch.no_grad():     # the first step's predicted clean image, by hand
        a = s.alphas_cumprod[int(s.timesteps[0])]
        ref = (noise - (1 - a).sqrt() * unet(noise, s.timesteps[0]).sample) / a.sqrt()
    assert x0.shape == (3, 2, 3, 16, 16) and torch.allclose(x0[0], ref, atol=1e-5)


def _steady_state(P):
    """Left eigenvector of eigenvalue 1 by numpy, normalised to sum 1."""
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    return pi / pi.sum()


def test_masks_are_thresholds_of_the_head_mean_on_the_uniform_scale():
    A = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]],
                      [[0.1, 0.5, 0.3, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1], [0.2, 0.2, 0.5, 0.1]]])[None]
    lay = TokenLayout(grid=(2, 2))
    mean = A[0].mean(0).numpy()
    # by hand: head column sums 2.2, 1.0, 0.4, 0.4 and 0.5, 1.4, 1.7, 0.4; their mean 1.35, 1.2, 1.05, 0.4
    assert np.allclose(mean.sum(0), [1.35, 1.2, 1.05, 0.4])  # SAG masks those > 1
    assert sag.token_mask(A, lay, "column_sum").tolist() == [[True, True, True, False]]
    # the 40 % cap of 4 tokens keeps floor(1.6) = 1, the highest
    assert sag.token_mask(A, lay, "column_sum", cap=0.4).tolist() == [[True, False, False, False]]
    alpha = 0.9
    pi = _steady_state(alpha * mean + (1 - alpha) / 4)
    got = sag.token_mask(A, lay, "tokenrank", alpha=alpha)
    assert got.tolist() == [list(4 * pi > 1)]
    assert sag.token_mask(A[:, 0], lay, "column_sum").tolist() == [list(A[0, 0].numpy().sum(0) > 1)]
    # any registry score: two incoming bounces from the centre token (index 3 of a 2 x 2 grid)
    P = mean.astype(np.float64)
    two = np.eye(4)[3] @ P @ P
    assert sag.token_mask(A, lay, "bounce_center", steps=2).tolist() == [list(4 * two > 1)]
    with pytest.raises(ValueError, match="cap"):
        sag.token_mask(A, lay, cap=1.5)
    with pytest.raises(ValueError, match="unknown method"):
        sag.token_mask(A, lay, "colsum")


def test_blur_matches_scipy_and_changes_only_masked_pixels():
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=4.0)
    assert np.allclose(sag.gaussian_blur(x, 9, 1.0).numpy(), ref, atol=1e-5)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5]], mask[1, 15] = True, True          # a 4 x 4 token grid: 3 x 3 pixel cells
    out = sag.blur_in_mask(x, mask, (4, 4))
    pix = mask.reshape(2, 1, 4, 4).repeat_interleave(3, -1).repeat_interleave(3, -2).expand_as(x)
    assert torch.equal(out[~pix], x[~pix])
    assert torch.allclose(out[pix], torch.from_numpy(ref)[pix])
    assert not torch.allclose(out[pix], x[pix])
    with pytest.raises(ValueError, match="odd"):
        sag.gaussian_blur(x, 4)


def test_captured_map_is_the_softmax_of_the_layers_own_q_and_k(unet):
    layer = attention_layers(unet, kind="self")[sag.sag_layer(unet, "decoder")]
    seen = []
    h = layer.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]),
                                        with_kwargs=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad(), capture(unet, layers=[sag.sag_layer(unet, "decoder")], heads="mean") as rec:
            unet(x, 10)
    finally:
        h.remove()
    hs = seen[0]
    b, c, hh, ww = hs.shape
    tok = layer.group_norm(hs.view(b, c, -1)).transpose(1, 2)
    heads = layer.heads
    q = layer.to_q(tok).view(b, -1, heads, c // heads).transpose(1, 2)
    k = layer.to_k(tok).view(b, -1, heads, c // heads).transpose(1, 2)
    ref = ((q @ k.transpose(-1, -2)) * (c // heads) ** -0.5).softmax(-1).mean(1, keepdim=True)
    assert rec.layouts[0].grid == (hh, ww)
    assert torch.allclose(rec.attentions[0], ref, atol=1e-5)


def test_guided_eps_is_eps_plus_scale_times_the_blur_difference(unet, sched):
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(5)
    t = s.timesteps[1]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    g = sag.SAG(0.8, "column_sum")
    got, mask = sag.guided_eps(unet, s, x, t, g)
    with torch.no_grad():
        eps = unet(x, t).sample
        a = s.alphas_cumprod[int(t)]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x_hat = s.add_noise(sag.blur_in_mask(x0, mask, (8, 8)), eps, t[None])
        ref = eps + 0.8 * (eps - unet(x_hat, t).sample)
    assert torch.allclose(got, ref, atol=1e-5)


def test_conditional_unet_with_cfg_guides_with_the_unconditional_branch(cond_unet, sched):
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(5)
    t = s.timesteps[0]
    gen = torch.Generator().manual_seed(4)
    x, c, u = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 3, 12, generator=gen), torch.randn(2, 3, 12, generator=gen)
    plain, none = sag.guided_eps(cond_unet, s, x, t, sag.SAG(), c, u, cfg=3.0)
    with torch.no_grad():
        eu, ec = cond_unet(x, t, encoder_hidden_states=u).sample, cond_unet(x, t, encoder_hidden_states=c).sample
    assert none is None and torch.allclose(plain, eu + 3.0 * (ec - eu), atol=1e-5)
    got, mask = sag.guided_eps(cond_unet, s, x, t, sag.SAG(1.0, "tokenrank"), c, u, cfg=3.0)
    with torch.no_grad(), capture(cond_unet, layers=[sag.sag_layer(cond_unet)], heads="mean") as rec:
        cond_unet(x, t, encoder_hidden_states=u)
    assert torch.equal(mask, sag.token_mask(rec.attentions[0], rec.layouts[0], "tokenrank"))
    with pytest.raises(ValueError, match="uncond_context"):
        sag.guided_eps(cond_unet, s, x, t, sag.SAG(), c, None, cfg=3.0)


