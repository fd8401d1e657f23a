"""The capture family of open_clip vision towers (CLIP): ``resblocks[i].attn`` is torch's
``nn.MultiheadAttention``; tokens run ``[class token, patches]``."""
from __future__ import annotations

import torch
from torch import nn

from ..core.layout import TokenLayout
from .family import QK, Family, additive_mask, combine_bias, split_heads


# open_clip: the vision tower's resblocks[i].attn is torch's nn.MultiheadAttention (batch first).
def _clip_tower(model):
    return getattr(model, "visual", model)


def _clip_matches(model) -> bool:
    tower = _clip_tower(model)
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    return (blocks is not None and hasattr(tower, "grid_size")
            and all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks))


def _mha_qk(mha: nn.MultiheadAttention, args, kwargs) -> QK:
    x = args[0] if args else kwargs["query"]
    if not mha.batch_first:
        x = x.transpose(0, 1)
    w, b = mha.in_proj_weight, mha.in_proj_bias
    d = mha.embed_dim
    q = nn.functional.linear(x, w[:d], None if b is None else b[:d])
    k = nn.functional.linear(x, w[d:2 * d], None if b is None else b[d:2 * d])
    h = mha.num_heads
    q, k = split_heads(q, h), split_heads(k, h)
    B, N = x.shape[:2]
    bias = additive_mask(kwargs.get("attn_mask"), False, torch.float32)   # True = blocked in torch MHA
    if bias is not None and bias.ndim == 3:                            # (B*H, N, N)
        bias = bias.reshape(B, h, N, N)
    pad = additive_mask(kwargs.get("key_padding_mask"), False, torch.float32)
    if pad is not None:
        pad = pad[:, None, None, :]
        bias = pad if bias is None else bias + pad
    return QK(q, k, (d // h) ** -0.5, bias)


def _mha_with_bias(mha, args, kwargs, bias):
    x = args[0] if args else kwargs["query"]
    B, N = (x.shape[:2]) if mha.batch_first else (x.shape[1], x.shape[0])
    bias = bias.expand(B, mha.num_heads, N, N).reshape(B * mha.num_heads, N, N)
    kwargs = dict(kwargs)
    kwargs["attn_mask"] = combine_bias(kwargs.get("attn_mask"), bias, False)
    return args, kwargs


def _clip_layout(model) -> TokenLayout:
    tower = _clip_tower(model)
    return TokenLayout(0, (), tuple(tower.grid_size), 1)   # [class token, patches]


OPEN_CLIP = Family("open_clip-vision", _clip_matches,
                   lambda m: [b.attn for b in _clip_tower(m).transformer.resblocks],
                   _mha_qk, _clip_layout, _mha_with_bias)
