"""Capture of open_clip vision towers (chains_lite.capture.clip_vision) against torch's attention weights."""

import pytest
import torch

timm = pytest.importorskip("timm")

from chains_lite.capture import add_logit_bias, capture  # noqa: E402
from chains_lite.core.layout import TokenLayout  # noqa: E402


def test_open_clip_capture_matches_torch_attention_weights():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    tower = open_clip.transformer.VisionTransformer(image_size=32, patch_size=8, width=32, layers=2,
                                                    heads=4, mlp_ratio=2.0, output_dim=16).eval()
    x = torch.rand(2, 3, 32, 32)
    ref = []

    def weights(mha, args, kwargs, out):   # torch's own per-head probabilities for the same input
        ref.append(mha.forward(*args, need_weights=True, average_attn_weights=False)[1])

    with torch.no_grad():
        y0 = tower(x)
        hs = [b.attn.register_forward_hook(weights, with_kwargs=True)
              for b in tower.transformer.resblocks]
        tower(x)
        for h in hs:
            h.remove()
        with capture(tower) as rec:
            y1 = tower(x)
    assert torch.equal(y0, y1)
    assert rec.layout == TokenLayout(0, (), (4, 4), 1)
    for a, r in zip(rec.attentions, ref):
        assert a.shape == (2, 4, 17, 17)
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    bias = torch.zeros(17)
    bias[3] = -float("inf")
    with torch.no_grad(), add_logit_bias(tower, bias, layers=0), capture(tower, layers=0) as rec:
        tower(x)
    assert torch.all(rec.attentions[0][..., 3] == 0)
