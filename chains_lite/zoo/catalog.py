"""What the zoo holds and how it is chosen: the modes, the dry-run switch, the paper's models on
the hub (:data:`FULL_MODELS`, looked up by :func:`full_spec`), the lite names, and :class:`Loaded`,
what every loader returns.

* ``mode``: ``"lite"`` (models trained here on ShapeWorld), ``"full"`` (the paper's models from
  the hub, on a GPU) or ``"auto"`` (``CHAINS_MODE`` from the environment, else full with a GPU);
  :func:`resolve_mode`.
* ``CHAINS_FULL_WEIGHTS=random``: full mode builds the paper's classes with random weights,
  offline on a CPU (:mod:`chains_lite.zoo.dryrun`); :func:`random_weights`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .models import LITE_SPECS

MODES = ("auto", "lite", "full")


def resolve_mode(mode: str = "auto") -> str:
    """``CHAINS_MODE`` from the environment wins over ``"auto"``; an explicit argument wins over both."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        env = os.environ.get("CHAINS_MODE", "auto")
        if env not in MODES:
            raise ValueError(f"CHAINS_MODE must be one of {MODES}, got {env!r}")
        return env
    return mode


ENV = "CHAINS_FULL_WEIGHTS"
WEIGHTS = ("hub", "random")
BANNER = ("DRY RUN (CHAINS_FULL_WEIGHTS=random): the full-mode models have random weights and "
          "reduced widths, and the data are tiny synthetic files: every number below is meaningless.")

def random_weights() -> bool:
    """Whether ``CHAINS_FULL_WEIGHTS=random`` (``"hub"``, the default, loads the real weights)."""
    value = os.environ.get(ENV, "hub")
    if value not in WEIGHTS:
        raise ValueError(f"{ENV} must be one of {WEIGHTS}, got {value!r}")
    return value == "random"


def can_run_full() -> bool:
    """Full mode can run here: a CUDA GPU is present, or this is a dry run (CPU is enough)."""
    return torch.cuda.is_available() or random_weights()


# ----------------------------------------------------------------------------- tokenizers
def choose_mode(mode: str = "auto", **needs) -> str:
    """``"full"`` or ``"lite"`` for a chapter: full when ``mode`` (after :func:`resolve_mode`) is not
    lite, full mode can run here (:func:`can_run_full`) and every one of ``needs`` (what full mode
    reads, by its environment variable's name, e.g. ``CHAINS_IMAGENET=path``) is given. When
    full mode was asked for and cannot run, prints what it lacks."""
    mode = resolve_mode(mode)
    missing = [k for k, v in needs.items() if v is None]
    if mode == "lite" or (can_run_full() and not missing):
        return mode if mode == "lite" else "full"
    lacks = (["a GPU"] if not can_run_full() else []) + missing
    print(f"MODE={mode!r} but full mode needs {' and '.join(lacks)} "
          f"(GPU: {torch.cuda.is_available()}" + "".join(f", {k}: {v}" for k, v in needs.items())
          + "): running lite mode")
    return "lite"


@dataclass
class Loaded:
    """What :func:`load` returns: the model in eval mode and what it needs around it."""

    model: nn.Module
    name: str
    mode: str                      # "lite" or "full"
    why: str                       # why this mode was chosen
    preprocess: Any = None         # images -> model input (None: the model takes them as they are)
    tokenizer: Any = None
    text_encoder: Any = None
    scheduler: Any = None
    pipeline: Any = None
    class_names: list[str] | None = None
    card: dict | None = None
    extra: dict = field(default_factory=dict)

    encoder: Any = None            # FLUX models: (loaded, images, captions, **kw) -> transformer inputs

    def encode(self, images: torch.Tensor, captions: list[str], **kw):
        """FLUX models: images ``(B, 3, H, W)`` in [0, 1] and their captions -> transformer inputs
        (``encoder``, :func:`chains_lite.zoo.inputs.encode` for the zoo's models; ``kw``: its options)."""
        if self.encoder is None:
            raise ValueError(f"{self.name} has no encoder: only FLUX models encode images and captions")
        return self.encoder(self, images, captions, **kw)


@dataclass(frozen=True)
class FullSpec:
    """A paper model on the hub: its library, id, and the lite model that stands in for it."""

    family: str          # "timm", "open_clip", "flux" or "sd"
    hub_id: str
    lite: str
    note: str = ""
    repo: str = ""       # the hub repository the weights come from, when not derived from hub_id

    @property
    def hub_repo(self) -> str:
        return self.repo or (f"timm/{self.hub_id}" if self.family == "timm" else self.hub_id)

    @property
    def needs_gpu(self) -> bool:
        return self.family in ("flux", "sd")


FULL_MODELS = {
    "dino-vits16": FullSpec("timm", "vit_small_patch16_224.dino", "shapes-vit", "DINOv1 ViT-S/16 (no classifier head)"),
    "dino-vitb8": FullSpec("timm", "vit_base_patch8_224.dino", "shapes-vit", "DINOv1 ViT-B/8 (paper Fig. 4, 15, 16)"),
    "dinov2-vits14-reg": FullSpec("timm", "vit_small_patch14_reg4_dinov2.lvd142m", "shapes-vit-reg",
                                  "DINOv2 ViT-S/14 with 4 registers (paper Fig. 8)"),
    "dinov2-vitb14-reg": FullSpec("timm", "vit_base_patch14_reg4_dinov2.lvd142m", "shapes-vit-reg",
                                  "DINOv2 ViT-B/14 with 4 registers"),
    "vit-b16": FullSpec("timm", "vit_base_patch16_224.augreg2_in21k_ft_in1k", "shapes-vit",
                        "supervised ViT-B/16, ImageNet-1k classifier"),
    # The OpenAI weights were trained with QuickGELU: the "-quickgelu" architecture matches them
    # (plain "ViT-B-32" would run them with nn.GELU, and open_clip only warns).
    "clip-vitb32": FullSpec("open_clip", "ViT-B-32-quickgelu/openai", "shapes-vit", "CLIP ViT-B/32 (OpenAI weights)",
                             repo="timm/vit_base_patch32_clip_224.openai"),
    "flux-schnell": FullSpec("flux", "black-forest-labs/FLUX.1-schnell", "shapes-flux",
                             "FLUX.1-schnell (gated: accept the licence on the hub, `hf auth login`)"),
    "sd15": FullSpec("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5", "shapes-unet", "Stable Diffusion 1.5"),
}


def full_spec(name: str) -> FullSpec:
    """The :class:`FullSpec` of a paper model; ``ValueError`` naming the choices for an unknown one."""
    if name not in FULL_MODELS:
        raise ValueError(f"unknown full model {name!r}; choose from {sorted(FULL_MODELS)}")
    return FULL_MODELS[name]


LITE_NAMES = sorted([*LITE_SPECS, "minilm"])
