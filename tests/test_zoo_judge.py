"""shapes-vit as the judge of generated images (chains_lite.zoo.judge): probabilities and features
of images at any size, against the model's own forward pass at 64 x 64."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")

from chains_lite.zoo import judge  # noqa: E402
from chains_lite.zoo.shapeworld import shapeworld  # noqa: E402


def test_classify_and_features_resize_any_size_to_the_vits_input():
    vit = judge.judge()
    assert judge.judge() is vit                       # loaded once
    small = shapeworld(6, split="test", size=32).images
    probs = judge.classify(vit, small)
    with torch.no_grad():
        want = vit(F.interpolate(small, size=64, mode="nearest")).softmax(-1)
    torch.testing.assert_close(probs, want)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    feats = judge.features(vit, small)
    assert feats.shape == (6, vit.num_features) and feats.dtype == torch.float64


def test_the_judge_tells_real_shapes_apart():
    data = shapeworld(64, split="test")
    acc = (judge.classify(judge.judge(), data.images).argmax(-1) == data.labels).float().mean()
    assert acc > 0.9
