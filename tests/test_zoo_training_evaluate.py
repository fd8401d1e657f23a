"""The model cards' numbers (chains_lite.zoo.training.evaluate) on hand cases."""

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("safetensors")


TINY = ["--steps", "2", "--batch", "4", "--pool", "8", "--eval-n", "8"]


def test_frechet_distance_hand_cases():
    from chains_lite.zoo.training.evaluate import frechet_distance
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # scaling by s: mean -> s mu, covariance C -> s^2 C, so FD = (1 - s)^2 (|mu|^2 + tr C)
    mu, c = a.mean(0), torch.cov(a.T)
    assert frechet_distance(a, 3 * a) == pytest.approx(4 * float(mu @ mu + torch.trace(c)), rel=1e-6)


def test_dominant_color_names_the_largest_object():
    from chains_lite.zoo import shapeworld
    from chains_lite.zoo.training.evaluate import dominant_color
    b = shapeworld(100, seed=11, split="test")
    assert dominant_color(b.images) == [c[0] for c in b.colors]
    grey = torch.full((1, 3, 8, 8), 0.5)
    assert dominant_color(grey) == [None]
