"""The numbers on the model cards, computed on fresh ShapeWorld images.

* classifiers: accuracy on the largest shape (``shapes-vit-ssl``: of its linear-probe head);
* ``shapes-flux``: the share of generated images that ``shapes-vit`` classifies as the captioned
  (largest) shape, and the share whose dominant object colour is the captioned (largest) one;
* ``shapes-unet``: the share of samples ``shapes-vit`` classifies with confidence >= 0.9, and a
  Fréchet distance in ``shapes-vit``'s feature space against real images.
"""
from __future__ import annotations

import torch

from ...eval.quality import frechet_distance
from ..generate import flux_sample, unet_sample
from ..judge import classify, features, judge
from ..models import GEN_SIZE
from ..shapeworld import CLASS_NAMES, COLOR_NAMES, COLORS, shapeworld


def vit_metrics(model, split: str = "val", n: int = 500, seed: int = 0) -> dict:
    """Accuracy (largest shape) of a classifier on ``n`` fresh images of ``split``."""
    data = shapeworld(n, seed=seed, split=split)
    probs = classify(model, data.images)
    pred = probs.argmax(-1)
    per_class = {c: round(float((pred[data.labels == i] == i).float().mean()), 4)
                 for i, c in enumerate(CLASS_NAMES)}
    return {"accuracy": round(float((pred == data.labels).float().mean()), 4), "n_images": n,
            "split": split, "seed": seed, "per_class_accuracy": per_class}


def _frechet_to_real(imgs: torch.Tensor, seed: int) -> dict:
    """Fréchet distance of ``imgs`` to as many real val images, and of real to real (the floor)."""
    n, size = len(imgs), imgs.shape[-1]
    real_a = features(judge(), shapeworld(n, seed=seed + 1000, split="val", size=size).images)
    real_b = features(judge(), shapeworld(n, seed=seed + 2000, split="val", size=size).images)
    return {"frechet_distance_vit": round(frechet_distance(features(judge(), imgs), real_a), 3),
            "frechet_distance_real_vs_real": round(frechet_distance(real_b, real_a), 3)}


def dominant_color(images: torch.Tensor, min_saturation: float = 0.35) -> list:
    """Name of the most frequent object colour in each image (``None`` if no pixel is saturated).

    ShapeWorld backgrounds are muted (channel spread <= 0.16) and objects saturated (>= 0.6), so
    a pixel with spread >= ``min_saturation`` is an object pixel; it is named by the nearest
    colour of the palette. The largest object covers the most pixels, so on real images this is
    the colour of the largest object.
    """
    palette = torch.tensor(list(COLORS.values()))                       # (C, 3)
    x = images.permute(0, 2, 3, 1).reshape(len(images), -1, 3)          # (B, HW, 3)
    sat = x.max(-1).values - x.min(-1).values >= min_saturation
    nearest = torch.cdist(x, palette.expand(len(images), -1, -1)).argmin(-1)
    names = []
    for s_, n_ in zip(sat, nearest):
        counts = torch.bincount(n_[s_], minlength=len(COLORS))
        names.append(COLOR_NAMES[int(counts.argmax())] if counts.sum() > 0 else None)
    return names


def flux_metrics(model, encoder, n: int = 200, seed: int = 0, steps: int = 20,
                 frechet: bool = True, guidance: float = 1.0) -> dict:
    """Generate one image per val caption; the share ``shapes-vit`` classifies as the captioned
    (largest) shape, and the same share for the real images of those captions (the ceiling).
    ``guidance`` is the sampler's classifier-free guidance scale (1.0: none)."""
    data = shapeworld(n, seed=seed, split="val", size=model_size(model))
    imgs = flux_sample(model, encoder, data.captions, steps=steps, seed=seed, guidance=guidance)
    match = (classify(judge(), imgs).argmax(-1) == data.labels).float().mean()
    real = (classify(judge(), data.images).argmax(-1) == data.labels).float().mean()
    wanted = [c[0] for c in data.colors]
    color = sum(a == b for a, b in zip(dominant_color(imgs), wanted)) / n
    color_real = sum(a == b for a, b in zip(dominant_color(data.images), wanted)) / n
    out = {"caption_match": round(float(match), 4), "caption_match_real": round(float(real), 4),
           "chance": round(1 / len(CLASS_NAMES), 4),
           "color_match": round(color, 4), "color_match_real": round(color_real, 4),
           "color_chance": round(1 / len(COLORS), 4), "n_samples": n, "sampler_steps": steps,
           "guidance_scale": guidance}
    return {**out, **(_frechet_to_real(imgs, seed) if frechet else {})}


def unet_metrics(model, n: int = 200, seed: int = 0, steps: int = 50, frechet: bool = True) -> dict:
    """Share of samples classified with confidence >= 0.9 (and of real images, the ceiling), and
    the Fréchet distance to real images in ``shapes-vit`` feature space."""
    imgs = unet_sample(model, n, steps=steps, seed=seed)
    conf = classify(judge(), imgs).max(-1).values
    real = shapeworld(n, seed=seed, split="val", size=imgs.shape[-1]).images
    real_conf = classify(judge(), real).max(-1).values
    out = {"confident_fraction": round(float((conf >= 0.9).float().mean()), 4),
           "confident_fraction_real": round(float((real_conf >= 0.9).float().mean()), 4),
           "n_samples": n, "sampler_steps": steps}
    return {**out, **(_frechet_to_real(imgs, seed) if frechet else {})}


# ----------------------------------------------------------------------------- card evaluators
# One per lite-model family, each ``(model, n, encoder=None, guidance=1.0) -> dict``: the
# ``evaluator`` of a ``models.LiteSpec``, and the card's validation numbers.

def vit_card(model, n: int, encoder=None, guidance: float = 1.0) -> dict:
    """A classifier's val metrics on ``n`` images, with its test accuracy beside them."""
    metrics = vit_metrics(model, split="val", n=n)
    metrics["test_accuracy"] = vit_metrics(model, split="test", n=n)["accuracy"]
    return metrics


def ssl_card(model, n: int, encoder=None, guidance: float = 1.0) -> dict:
    """A self-supervised ViT with a linear-probe head: the probe's accuracy on ``n`` val images
    (``probe_accuracy``), and on ``n`` test images beside it."""
    val = vit_metrics(model, split="val", n=n)
    return {"probe_accuracy": val["accuracy"],
            "probe_test_accuracy": vit_metrics(model, split="test", n=n)["accuracy"],
            **{k: val[k] for k in ("n_images", "split", "seed", "per_class_accuracy")}}


def flux_card(model, n: int, encoder=None, guidance: float = 1.0) -> dict:
    """``flux_metrics`` of ``n`` val captions; sampled with classifier-free ``guidance`` > 1,
    ``caption_match_unguided`` and ``color_match_unguided`` give the numbers of the same captions
    and noise sampled without guidance, beside them."""
    metrics = flux_metrics(model, encoder, n=n, guidance=guidance)
    if guidance != 1:
        plain = flux_metrics(model, encoder, n=n, frechet=False)
        metrics.update(caption_match_unguided=plain["caption_match"],
                       color_match_unguided=plain["color_match"])
    return metrics


def unet_card(model, n: int, encoder=None, guidance: float = 1.0) -> dict:
    """``unet_metrics`` of ``n`` unconditional samples (``encoder`` and ``guidance`` unused)."""
    return unet_metrics(model, n=n)


def model_size(model) -> int:
    """Image side the generative lite models work at."""
    return getattr(getattr(model, "config", None), "sample_size", None) or GEN_SIZE
