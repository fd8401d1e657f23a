"""capture() on diffusers UNets (self- and cross-attention) and FLUX, against softmax(q k^T * scale)
assembled by hand from each attention module's weights and the input it was called with."""
import pytest
import torch
import torch.nn.functional as F

from chains_lite import capture
from chains_lite.capture import attention_layers
from chains_lite.zoo import models

# conftest's unet and cond_unet fixtures build these configs for the tests here
UNET_CONFIG = models.UNET_CONFIG  # the lite shapes-unet's
COND_CONFIG = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                   attention_head_dim=8, norm_num_groups=8)
B, TEXT = 2, 7


def _inputs_seen(modules):
    """Plain forward pre-hooks that keep each module's call (args, kwargs), in call order."""
    seen = []
    handles = [m.register_forward_pre_hook(lambda m, a, kw: seen.append((m, a, kw)), with_kwargs=True)
               for m in modules]
    return seen, handles


def _by_hand(attn, args, kwargs) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` ``(B, H, N, M)`` in float64 from the module's to_q / to_k
    weights (and group norm) applied to the hidden states it was called with."""
    x = (args[0] if args else kwargs["hidden_states"]).double()
    if x.ndim == 4:                                              # (B, C, H, W) -> (B, HW, C)
        x = x.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        gn = attn.group_norm
        x = F.group_norm(x.transpose(1, 2), gn.num_groups, gn.weight.double(), gn.bias.double(),
                         gn.eps).transpose(1, 2)
    ctx = kwargs.get("encoder_hidden_states")
    ctx = x if ctx is None else ctx.double()
    lin = lambda m, v: F.linear(v, m.weight.double(), None if m.bias is None else m.bias.double())  # noqa: E731
    q, k = lin(attn.to_q, x), lin(attn.to_k, ctx)
    q = q.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    k = k.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    return (q @ k.mT / q.shape[-1] ** 0.5).softmax(-1)


def _check(rec, seen, layers):
    assert len(rec.attentions) == len(layers) == len(seen)
    for got, (m, a, kw) in zip(rec.attentions, seen):
        want = _by_hand(m, a, kw)
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]))
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [32, 16])
def test_unet_self_attention_by_hand_at_two_resolutions(unet, size):
    x = torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(size))
    layers = attention_layers(unet)
    with torch.no_grad():
        ref = unet(x, 10).sample
        seen, handles = _inputs_seen(layers)
        with capture(unet) as rec:
            out = unet(x, 10).sample
        for h in handles:
            h.remove()
    assert torch.equal(ref, out)
    assert len(layers) == 7          # 2 down blocks, the mid block, 2 up blocks x 2 layers
    _check(rec, seen, layers)
    # each layer keeps its own grid: attention at size / 2 and size / 4, the mid block at size / 4
    grids = [lay.grid for lay in rec.layouts]
    s2, s4 = (size // 2,) * 2, (size // 4,) * 2
    assert grids == [s2, s4, s4, s4, s4, s2, s2]
    assert all(got.shape[-1] == lay.n_patches for got, lay in zip(rec.attentions, rec.layouts))
    with pytest.raises(ValueError, match="different token layouts"):
        rec.layout


@pytest.mark.parametrize("kind,size", [("self", 16), ("self", 8), ("cross", 16), ("cross", 8)])
def test_cond_unet_self_and_cross_attention_by_hand(cond_unet, kind, size):
    g = torch.Generator().manual_seed(size)
    x, text = torch.randn(B, 4, size, size, generator=g), torch.randn(B, TEXT, 24, generator=g)
    layers = attention_layers(cond_unet, kind=kind)
    # one down block layer, the mid block, the up block's 2 layers
    assert [m.is_cross_attention for m in layers] == [kind == "cross"] * 4
    with torch.no_grad():
        ref = cond_unet(x, 10, encoder_hidden_states=text).sample
        seen, handles = _inputs_seen(layers)
        with capture(cond_unet, kind=kind) as rec:
            out = cond_unet(x, 10, encoder_hidden_states=text).sample
        for h in handles:
            h.remove()
    assert torch.equal(ref, out)
    _check(rec, seen, layers)
    n, half = size * size, (size // 2) ** 2
    assert [a.shape[-2] for a in rec.attentions] == [n, half, n, n]
    assert [a.shape[-1] for a in rec.attentions] == ([TEXT] * 4 if kind == "cross" else [n, half, n, n])
    assert [lay.grid for lay in rec.layouts] == [(size, size), (size // 2,) * 2] + [(size, size)] * 2


def test_unet_stores_and_options(unet):
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with capture(unet, layers=[1, 2], store="probs") as probs:
            unet(x, 10)
        with capture(unet, layers=[1, 2], store="qk", device="cpu") as qk:
            unet(x, 10)
        with capture(unet, layers=[1, 2], store="mean", heads="mean") as mean:
            unet(x, 10)
    assert probs.layers == [1, 2] and probs.layout.grid == (4, 4)   # both at 16 / 4
    for (q, k, s, m), A in zip(qk.qk, probs.attentions):
        torch.testing.assert_close((q.float() @ k.float().mT * s).softmax(-1), A, atol=1e-6, rtol=1e-5)
        assert m is None
    torch.testing.assert_close(mean.mean(), torch.stack(probs.attentions).mean((0, 2))[:, None])
    with pytest.raises(ValueError, match="kind must be one of"):
        with capture(unet, kind="joint"):
            pass


def test_unet_hooks_and_processors_restored_after_an_exception(cond_unet):
    before = dict(cond_unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(cond_unet, kind="cross"):
            raise RuntimeError("boom")
    assert cond_unet.attn_processors == before
    assert not cond_unet._forward_pre_hooks
    assert not any(m._forward_pre_hooks for m in cond_unet.modules())


def test_flux_joint_capture_covers_double_then_single_blocks():
    from chains_lite.methods.segmentation import capture_joint
    from chains_lite.zoo.models import image_ids
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=3, joint_attention_dim=8,
                                   pooled_projection_dim=8, axes_dims_rope=(4, 6, 6)).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(B, 16, 4, generator=g),
                  encoder_hidden_states=torch.randn(B, 5, 8, generator=g),
                  pooled_projections=torch.randn(B, 8, generator=g), timestep=torch.full((B,), 0.5),
                  img_ids=image_ids(4), txt_ids=torch.zeros(5, 3))
    with torch.no_grad():
        ref = model(**inputs).sample
        with capture(model) as rec:
            out = model(**inputs).sample
        with capture_joint(model, "double", store="probs") as dbl, \
                capture_joint(model, "single", store="probs") as sgl:
            model(**inputs)
    assert torch.equal(ref, out)
    assert rec.layers == [0, 1, 2, 3] and rec.layout.patch_start == 5 and rec.layout.grid == (4, 4)
    for got, want in zip(rec.attentions, dbl.attentions + sgl.attentions):
        assert torch.equal(got, want)


def test_diffusers_version_floor_is_declared_and_enforced(monkeypatch):
    import json
    import re
    from pathlib import Path

    import diffusers
    from diffusers import FluxTransformer2DModel

    from chains_lite.capture.diffusers import DIFFUSERS_MIN
    root = Path(__file__).resolve().parent.parent
    assert f'"diffusers>={DIFFUSERS_MIN}"' in (root / "pyproject.toml").read_text()
    for nb in sorted((root / "notebooks").glob("*.ipynb")):   # Colab keeps an older preinstalled copy
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            if "google.colab" in src and re.search(r"\bdiffusers\b", src):
                assert f'"diffusers>={DIFFUSERS_MIN}"' in src, f"{nb.name}: install diffusers>={DIFFUSERS_MIN}"
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=8,
                                   pooled_projection_dim=8, axes_dims_rope=(4, 6, 6))
    monkeypatch.setattr(diffusers, "__version__", "0.34.0")
    with pytest.raises(ImportError, match=f"diffusers>={DIFFUSERS_MIN}"):
        with capture(model):
            pass


def test_cross_attention_of_a_unet_without_it_is_refused_by_name(unet, cond_unet):
    from chains_lite.capture import attention_layers, capture
    with pytest.raises(ValueError, match=r"has no 'cross' attention layers \(it has: \['self'\]\)"):
        with capture(unet, kind="cross"):
            pass
    assert len(attention_layers(cond_unet, kind="cross")) == len(attention_layers(cond_unet, kind="self")) > 0
