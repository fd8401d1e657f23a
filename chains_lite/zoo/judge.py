"""``shapes-vit`` as the judge of generated ShapeWorld images: its class probabilities and its
pre-logit features (the space of the lite Fréchet distance), for the model cards
(:mod:`chains_lite.zoo.training.evaluate`) and chapter 4's lite tables
(:mod:`chains_lite.experiments.sag`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .load import load
from .shapeworld import DEFAULT_SIZE


@torch.no_grad()
def _apply(vit, images: torch.Tensor, fn, batch: int = 256) -> torch.Tensor:
    """``fn(vit, x)`` over batches of images, resized to the ViT's 64 x 64 (nearest: keeps edges)."""
    out = []
    for x in images.split(batch):
        x = x.to(next(vit.parameters()).device)
        if x.shape[-1] != DEFAULT_SIZE:
            x = F.interpolate(x, size=DEFAULT_SIZE, mode="nearest")
        out.append(fn(vit, x).cpu())
    return torch.cat(out)


def classify(vit, images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] (any H; resized to 64) -> ``(B, classes)`` probabilities."""
    return _apply(vit, images, lambda m, x: m(x).softmax(-1))


def features(vit, images: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` float64 pre-logit CLS features of ``shapes-vit`` (the space of the Fréchet distance)."""
    return _apply(vit, images, lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True)).double()


@functools.lru_cache(maxsize=1)
def judge():
    """The trained ``shapes-vit`` (on the CPU), which judges the generative models' samples."""
    return load("shapes-vit", mode="lite", device="cpu", verbose=False).model
