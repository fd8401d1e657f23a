"""The capture family of timm ``VisionTransformer`` (DINOv1, DINOv2 with registers, supervised
ViT, ``shapes-vit``): ``blocks[i].attn`` is timm's ``Attention`` (``qkv`` linear, ``q_norm`` /
``k_norm``); tokens run ``[CLS, registers..., patches]``."""
from __future__ import annotations

import torch

from ..core.layout import TokenLayout
from .family import QK, Family, additive_mask, combine_bias


# timm VisionTransformer: blocks[i].attn is timm's Attention (qkv linear, q_norm / k_norm).
def _timm_matches(model) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return False
    return isinstance(model, VisionTransformer)


def _timm_qk(attn, args, kwargs) -> QK:
    x = args[0] if args else kwargs["x"]
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    mask = args[1] if len(args) > 1 else kwargs.get("attn_mask")
    return QK(q, k, attn.scale, additive_mask(mask, True, torch.float32))


def _timm_layout(model) -> TokenLayout:
    n_reg = getattr(model, "num_reg_tokens", 0)
    has_cls = getattr(model, "cls_token", None) is not None
    prefix = model.num_prefix_tokens
    # timm's _pos_embed concatenates [cls, registers..., patches]
    regs = tuple(range(int(has_cls), int(has_cls) + n_reg))
    return TokenLayout(0 if has_cls else None, regs, tuple(model.patch_embed.grid_size), prefix)


def _timm_with_bias(attn, args, kwargs, bias):
    kwargs = dict(kwargs)
    old = args[1] if len(args) > 1 else kwargs.get("attn_mask")
    kwargs["attn_mask"] = combine_bias(old, bias, True)
    return args[:1], kwargs


TIMM_VIT = Family("timm-vit", _timm_matches, lambda m: [b.attn for b in m.blocks], _timm_qk,
                  _timm_layout, _timm_with_bias)
