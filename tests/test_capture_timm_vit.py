"""Capture of timm ViTs (chains_lite.capture.timm_vit) against timm's eager attention."""

import pytest
import torch

timm = pytest.importorskip("timm")

from chains_lite.capture import capture, family_of  # noqa: E402
from chains_lite.core.layout import TokenLayout, drop_special  # noqa: E402
from references import n_hooks, small_vit, timm_eager_attention


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_timm_capture_matches_eager_attention_and_keeps_outputs(reg_tokens):
    m, x = small_vit(reg_tokens), torch.rand(3, 3, 32, 32)
    for b in m.blocks:
        b.attn.fused_attn = True  # capture must see through the fused kernel
    with torch.no_grad():
        y0 = m(x)
        with capture(m) as rec:
            y1 = m(x)
    assert torch.equal(y0, y1)
    n = 1 + reg_tokens + 16
    ref = timm_eager_attention(m, x)
    assert len(rec.attentions) == 3
    for a, r in zip(rec.attentions, ref):
        assert a.shape == (3, 4, n, n) and a.dtype == torch.float32
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 4, n))
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    assert n_hooks(m.blocks.modules()) == 0


def test_timm_layout_knows_cls_registers_and_grid():
    lay = family_of(small_vit(4)).layout(small_vit(4))
    assert lay == TokenLayout(cls_index=0, register_indices=(1, 2, 3, 4), grid=(4, 4), patch_start=5)
    assert lay.special_indices == (0, 1, 2, 3, 4)
    v = torch.arange(21.0).expand(2, 21)
    assert torch.equal(lay.to_grid(v)[0], torch.arange(5.0, 21.0).reshape(4, 4))
    assert torch.equal(drop_special(v, lay, renormalize=False), v[:, 5:])
    torch.testing.assert_close(drop_special(v, lay).sum(-1), torch.ones(2))
    A = torch.rand(2, 21, 21).softmax(-1)
    P = lay.patch_attention(A)
    assert P.shape == (2, 16, 16)
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 16))
    torch.testing.assert_close(P[0, 3] * A[0, 8, 5:].sum(), A[0, 8, 5:])
    with pytest.raises(ValueError, match="tokens"):
        lay.patches(torch.rand(10))
    no_cls = small_vit()
    assert family_of(no_cls).layout(no_cls).register_indices == ()
