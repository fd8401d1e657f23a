"""How each lite model is trained and judged: its training objective, its default run, the card
number a new run must beat, the card's evaluator and its sample grid (:data:`TRAINING`).

Each objective is ``(args, device, make_model) -> (model, loss_fn, encoder)``: the training pool
prepared, the model from ``make_model()`` (built after the data, so the seeded draws keep their
order), ``loss_fn(idx, gen)`` the loss on the pool images ``idx`` with noise drawn from ``gen``,
and the text encoder the model was trained with (or None). The returned ``model`` is the module
the optimiser trains and a resumed run restores; a spec's ``finish`` turns it into the model that
is shipped (``shapes-vit-ssl``: the ViT with a linear-probe head).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from pathlib import Path

from ..generate import TextEncoder, unet_scheduler
from ..registry import load_weights, objective_path
from ..models import FLUX_PACK, GEN_SIZE, LITE_SPECS, image_ids, pack
from ..shapeworld import shapeworld
from . import evaluate
from .self_supervised import ContrastiveMIM, fit_linear_head


def vit_objective(args, device, make_model):
    """Cross-entropy on the largest shape's class, with random horizontal flips."""
    data = shapeworld(args.pool, seed=args.seed, split="train", size=args.size)
    images, labels = data.images.to(device), data.labels.to(device)
    model = make_model()

    def loss_fn(idx, gen):
        x = images[idx]
        flip = torch.rand(len(idx), generator=gen, device=gen.device) < 0.5  # a mirrored shape keeps its class
        x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
        return F.cross_entropy(model(x), labels[idx])

    return model, loss_fn, None


def ssl_objective(args, device, make_model):
    """Contrastive CLS tokens of two views, hues turned (SimCLR) + pixels of masked patches from their tokens (SimMIM), no labels."""
    images = shapeworld(args.pool, seed=args.seed, split="train", size=args.size).images.to(device)
    model = ContrastiveMIM(make_model()).to(device)
    heads = objective_path(args.name, Path(args.checkpoint_dir)) if getattr(args, "init", False) else None
    if heads is not None and heads.exists():  # training further: the projector and decoder go on too
        load_weights(model.heads(), args.name, path=heads)
        print(f"projector and decoder from {heads}")

    def loss_fn(idx, gen):
        return model.loss(images[idx], gen)["loss"]

    return model, loss_fn, None


PROBE_IMAGES = 5000  # training images of the linear probe (the first of the training pool)


def ssl_finish(trained: ContrastiveMIM, args, device):
    """``(the ViT in eval mode, its head's record)``: the ViT's ``head`` fitted as a linear
    probe on frozen CLS features of the first ``min(pool, PROBE_IMAGES)`` training-pool images and
    their labels."""
    data = shapeworld(min(args.pool, PROBE_IMAGES), seed=args.seed, split="train", size=args.size)
    vit = trained.vit.eval()
    probe = fit_linear_head(vit, data.images.to(device), data.labels)
    return vit, {"fit": "linear probe on frozen CLS features (L-BFGS logistic regression)", **probe}


def flux_objective(args, device, make_model):
    """Rectified flow on packed images ``(B, (S/2)^2, 12)``, conditioned on frozen MiniLM captions."""
    data = shapeworld(args.pool, seed=args.seed, split="train", size=args.size)
    encoder = TextEncoder(device=device)
    txt, pooled = encoder(data.captions)  # frozen MiniLM: encode every caption once
    empty_txt, empty_pooled = encoder([""])  # the unconditional input of classifier-free guidance
    x1 = pack(data.images.to(device) * 2 - 1)
    model = make_model()
    ids = image_ids(args.size // FLUX_PACK, device)
    txt_ids = torch.zeros(txt.shape[1], 3, device=device)

    def loss_fn(idx, gen):
        # Rectified flow: x_t = (1 - t) x_data + t noise, the model predicts noise - x_data.
        data_x = x1[idx]
        noise = torch.randn(data_x.shape, generator=gen, device=gen.device).to(device)
        t = torch.sigmoid(torch.randn(len(idx), generator=gen, device=gen.device)).to(device)  # logit-normal
        xt = (1 - t[:, None, None]) * data_x + t[:, None, None] * noise
        # Caption dropout: with probability ``args.cond_dropout`` the model sees the empty caption,
        # so it also learns the unconditional velocity that classifier-free guidance needs.
        drop = (torch.rand(len(idx), generator=gen, device=gen.device) < args.cond_dropout).to(device)
        c_txt = torch.where(drop[:, None, None], empty_txt, txt[idx])
        c_pooled = torch.where(drop[:, None], empty_pooled, pooled[idx])
        pred = model(xt, c_txt, c_pooled, t, ids, txt_ids).sample
        return F.mse_loss(pred, noise - data_x)

    return model, loss_fn, encoder


def unet_objective(args, device, make_model):
    """DDPM epsilon prediction on images ``(B, 3, S, S)`` in [-1, 1]."""
    data = shapeworld(args.pool, seed=args.seed, split="train", size=args.size)
    x0 = (data.images * 2 - 1).to(device)
    model = make_model()
    abar = unet_scheduler().alphas_cumprod.to(device)

    def loss_fn(idx, gen):
        t = torch.randint(len(abar), (len(idx),), generator=gen, device=gen.device).to(device)
        noise = torch.randn(x0[idx].shape, generator=gen, device=gen.device).to(device)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0[idx] + (1 - a).sqrt() * noise
        return F.mse_loss(model(xt, t).sample, noise)

    return model, loss_fn, None


@dataclass(frozen=True)
class TrainingDefaults:
    """What ``python -m chains_lite.zoo.training`` uses when the command line does not say."""

    steps: int
    batch: int = 64
    lr: float = 1e-3
    pool: int = 20000     # ShapeWorld training images
    size: int = GEN_SIZE  # their side in pixels


@dataclass(frozen=True)
class TrainingSpec:
    """How one lite model is trained and judged."""

    objective: Callable                # (args, device, make_model) -> (model, loss_fn, encoder)
    training: TrainingDefaults
    headline: str                      # the card's main number (higher is better)
    evaluator: Callable[..., dict]     # (model, n, encoder=None, guidance=1.0) -> card numbers
    samples: str                       # sample grid: "classify", "captions" or "unconditional"
    finish: Callable | None = None     # (trained, args, device) -> (model to ship, card's "head" record)
    # trained -> the objective's own modules, saved beside the weights (registry.objective_path)
    objective_modules: Callable | None = None
    # the card numbers a new run is judged on, each "higher" or "lower" is better (default: the headline)
    ship_on: tuple[tuple[str, str], ...] = ()
    # what the model is trained to reach: (card number, ">=" or "<=", bound), shown on its card
    targets: tuple[tuple[str, str, float], ...] = ()

    def __post_init__(self):
        if not self.ship_on:
            object.__setattr__(self, "ship_on", ((self.headline, "higher"),))
        for key, better in self.ship_on:
            if better not in ("higher", "lower"):
                raise ValueError(f"ship_on: {key!r} must be 'higher' or 'lower' is better, got {better!r}")
        for key, op, _ in self.targets:
            if op not in (">=", "<="):
                raise ValueError(f"targets: {key!r} needs '>=' or '<=', got {op!r}")

    def card_keys(self) -> list:
        """The card numbers a history row or a run not installed keeps: the judged ones, then the targets'."""
        return list(dict.fromkeys([*(k for k, _ in self.ship_on), *self.card_targets()]))

    def card_targets(self) -> dict:
        """The targets as a card stores them: ``{number: [op, bound]}``."""
        return {key: [op, bound] for key, op, bound in self.targets}


_VIT = TrainingSpec(vit_objective, TrainingDefaults(steps=1500, size=64), "accuracy", evaluate.vit_card, "classify",
                   targets=(("test_accuracy", ">=", 0.9),))

TRAINING = {
    "shapes-vit": _VIT,
    "shapes-vit-reg": _VIT,
    "shapes-vit-ssl": TrainingSpec(ssl_objective, TrainingDefaults(steps=1500, lr=5e-4, size=64), "probe_accuracy",
                                   evaluate.ssl_card, "classify", finish=ssl_finish,
                                   objective_modules=ContrastiveMIM.heads,
                                   targets=(("probe_accuracy", ">=", 0.9),)),
    "shapes-flux": TrainingSpec(flux_objective, TrainingDefaults(steps=600), "caption_match", evaluate.flux_card,
                                "captions", ship_on=(("caption_match", "higher"), ("color_match", "higher"),
                                                     ("frechet_distance_vit", "lower")),
                                targets=(("caption_match_unguided", ">=", 0.8), ("color_match_unguided", ">=", 0.95),
                                         ("frechet_distance_vit", "<=", 10.0))),
    "shapes-unet": TrainingSpec(unet_objective, TrainingDefaults(steps=700), "confident_fraction",
                                evaluate.unet_card, "unconditional",
                                ship_on=(("confident_fraction", "higher"), ("frechet_distance_vit", "lower")),
                                targets=(("frechet_distance_vit", "<=", 10.0), ("confident_fraction", ">=", 0.85))),
}
assert set(TRAINING) == set(LITE_SPECS)

# Each card's main number (higher is better).
HEADLINE = {name: t.headline for name, t in TRAINING.items()}


def improves(new: dict, old: dict | None, ship_on) -> tuple[bool, str]:
    """Whether a run's card numbers ``new`` improve on the shipped card's ``old`` under ``ship_on``
    (pairs of card key and "higher" / "lower" is better): no number worse and at least one better
    (Pareto). A run that improves one number and worsens another does not improve. A number the
    shipped card lacks is not compared; with no shipped card every run improves. Returns the verdict
    and one line that says number by number why."""
    if old is None:
        return True, "no shipped card"
    better, worse, parts = [], [], []
    for key, direction in ship_on:
        if key not in new:
            raise KeyError(f"the run's card has no {key!r}")
        if key not in old:
            parts.append(f"{key} {new[key]:.4g} (shipped card has none)")
            continue
        sign = 1 if direction == "higher" else -1
        diff = sign * (new[key] - old[key])
        (better if diff > 0 else worse if diff < 0 else []).append(key)
        parts.append(f"{key} {new[key]:.4g} vs shipped {old[key]:.4g} ({direction} is better)")
    ok = bool(better) and not worse
    return ok, "; ".join(parts) + (f" -> worse: {', '.join(worse)}" if worse else "")
