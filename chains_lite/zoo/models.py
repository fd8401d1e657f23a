"""Configs and builders of the lite models (random weights; `zoo.load` adds the trained ones).

Every lite model is a stock library class built from a small config, so the same capture code
serves the lite model and the paper's model of the same family:

=================  ===========================================  ============================
name               class                                        input
=================  ===========================================  ============================
shapes-vit         timm ``VisionTransformer``, CLS token        (B, 3, 64, 64) in [0, 1]
shapes-vit-reg     the same with 4 register tokens              (B, 3, 64, 64) in [0, 1]
shapes-vit-ssl     the same as shapes-vit, self-supervised      (B, 3, 64, 64) in [0, 1]
shapes-flux        diffusers ``FluxTransformer2DModel``          packed 2x2 pixels of 32x32
shapes-unet        diffusers ``UNet2DModel`` (attn at 16, 8)     (B, 3, 32, 32) in [-1, 1]
=================  ===========================================  ============================

``shapes-vit`` and ``shapes-vit-reg`` are trained as classifiers; ``shapes-vit-ssl`` has the
config of ``shapes-vit`` and is trained without labels (contrastive views and masked patches),
then given a linear-probe head, so the two differ only in their training objective.
The ViTs take images in [0, 1] as they come from :func:`shapeworld` (no normalisation: the
patch embedding learned it). The generative models work at 32 x 32 so that they train on a
2-core CPU; :func:`shapeworld` renders that size exactly (``size=32``).

Each lite model is one :class:`LiteSpec` in :data:`LITE_SPECS`: its config and builder, and what
``zoo.load`` attaches. How it is trained and judged is its entry in
:data:`chains_lite.zoo.training.objectives.TRAINING`; adding a lite model is adding both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .shapeworld import CLASS_NAMES

VIT_CONFIG = dict(img_size=64, patch_size=8, embed_dim=128, depth=6, num_heads=4, mlp_ratio=3.0,
                  num_classes=len(CLASS_NAMES), class_token=True, global_pool="token")
FLUX_CONFIG = dict(patch_size=1, in_channels=12, num_layers=2, num_single_layers=2,
                   attention_head_dim=32, num_attention_heads=4, joint_attention_dim=384,
                   pooled_projection_dim=384, guidance_embeds=False, axes_dims_rope=(8, 12, 12))
UNET_CONFIG = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                   layers_per_block=1, attention_head_dim=32, norm_num_groups=16)
GEN_SIZE = 32   # image side of the generative lite models
FLUX_PACK = 2   # FLUX packs 2x2 patches into one token, as the real model packs its latents


def _conv_stem_embed():
    """timm's ``PatchEmbed`` with a 3-layer convolutional stem in place of the single 8x8 conv.

    Each output token still covers one 8x8 patch (the grid, the CLS token and every attention
    map keep the ViT layout), but early convolutions make a small ViT learn from few images
    (Xiao et al. 2021, "Early convolutions help transformers see better").
    """
    from timm.layers import PatchEmbed

    class ConvStemPatchEmbed(PatchEmbed):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            c, e = kwargs.get("in_chans", 3), self.proj.out_channels
            self.proj = nn.Sequential(
                nn.Conv2d(c, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(),
                nn.Conv2d(24, 48, 3, 2, 1), nn.BatchNorm2d(48), nn.ReLU(),
                nn.Conv2d(48, 96, 3, 2, 1), nn.BatchNorm2d(96), nn.ReLU(),
                nn.Conv2d(96, e, 1))

    return ConvStemPatchEmbed


def _vit(cfg: dict) -> nn.Module:
    """timm ``VisionTransformer``; ``stem="conv"`` swaps in the convolutional patch embedding."""
    from timm.models.vision_transformer import VisionTransformer
    if cfg.pop("stem", "patch") == "conv":
        cfg["embed_layer"] = _conv_stem_embed()
    return VisionTransformer(**cfg)


def _flux(cfg: dict) -> nn.Module:
    """diffusers ``FluxTransformer2DModel``."""
    from diffusers import FluxTransformer2DModel
    return FluxTransformer2DModel(**cfg)


def _unet(cfg: dict) -> nn.Module:
    """diffusers ``UNet2DModel``."""
    from diffusers import UNet2DModel
    return UNet2DModel(**cfg)


# ----------------------------------------------------------------------------- FLUX token layout

def pack(images: torch.Tensor, p: int = FLUX_PACK) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/p)(W/p), C p p)`` tokens in row-major patch order (as FLUX packs)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpack(tokens: torch.Tensor, size: int, p: int = FLUX_PACK) -> torch.Tensor:
    """Inverse of :func:`pack`: ``(B, N, C p p)`` -> ``(B, C, size, size)``."""
    b, n, cpp = tokens.shape
    c, g = cpp // (p * p), size // p
    x = tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, size, size)


def image_ids(grid: int, device=None) -> torch.Tensor:
    """``(grid*grid, 3)`` FLUX position ids (0, row, col) of the image tokens."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([torch.zeros(grid * grid), ys.flatten().float(), xs.flatten().float()], 1).to(device)


# ----------------------------------------------------------------------------- the lite models
@dataclass(frozen=True)
class LiteSpec:
    """One lite model: how it is built and what :func:`chains_lite.zoo.load` attaches to it (how it
    is trained and judged: :data:`chains_lite.zoo.training.objectives.TRAINING`)."""

    config: dict                       # the model config; "class" names the library class
    builder: Callable[[dict], nn.Module]  # config without "class" -> model with random weights
    class_names: bool = False          # what zoo.load attaches: CLASS_NAMES,
    text_encoder: bool = False         # the MiniLM text encoder (and its tokenizer),
    scheduler: bool = False            # the DDPM noise schedule


_VIT = dict(builder=_vit, class_names=True)

LITE_SPECS = {
    "shapes-vit": LiteSpec(config={"class": "timm.VisionTransformer", **VIT_CONFIG, "reg_tokens": 0,
                                   "stem": "conv"}, **_VIT),
    "shapes-vit-reg": LiteSpec(config={"class": "timm.VisionTransformer", **VIT_CONFIG, "reg_tokens": 4,
                                       "stem": "conv"}, **_VIT),
    "shapes-vit-ssl": LiteSpec(config={"class": "timm.VisionTransformer", **VIT_CONFIG, "reg_tokens": 0,
                                       "stem": "conv"}, **_VIT),
    "shapes-flux": LiteSpec(config={"class": "diffusers.FluxTransformer2DModel", **FLUX_CONFIG},
                            builder=_flux, text_encoder=True),
    "shapes-unet": LiteSpec(config={"class": "diffusers.UNet2DModel", **UNET_CONFIG},
                            builder=_unet, scheduler=True),
}

#: The model config of each lite model (the ``config`` of its spec).
LITE_CONFIGS = {name: spec.config for name, spec in LITE_SPECS.items()}


def spec(name: str) -> LiteSpec:
    """The :class:`LiteSpec` of a lite model; ``ValueError`` naming the choices for another name."""
    if name not in LITE_SPECS:
        raise ValueError(f"unknown lite model {name!r}; choose from {sorted(LITE_SPECS)}")
    return LITE_SPECS[name]


def build(name: str, **overrides) -> nn.Module:
    """A lite model with random weights (deterministic under ``torch.manual_seed``).

    ``overrides`` replace entries of the model's config in :data:`LITE_CONFIGS` (to train a
    variant, e.g. ``build("shapes-unet", block_out_channels=(48, 96, 96))``)."""
    s = spec(name)
    unknown = set(overrides) - set(s.config) - {"class"}
    if "class" in overrides or unknown:
        raise ValueError(f"{name} has no config entries {sorted(unknown | ({'class'} & set(overrides)))}; "
                         f"it has {sorted(set(s.config) - {'class'})}")
    cfg = {**s.config, **overrides}
    cfg.pop("class")
    return s.builder(cfg)
