"""What a model family must tell :func:`chains_lite.capture.capture`: the :class:`Family`
record, the :class:`QK` a layer call gives, and helpers the families share (masks as additive
biases, heads split from the hidden dim).

A family knows

* which modules are the attention layers, in depth order (``layers``),
* how to get the queries, keys and additive logit bias from the arguments of a layer's call
  (``qk``), using the layer's own projections, and
* the model's token layout (CLS, register tokens, patch grid: ``layout``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..core.layout import TokenLayout


@dataclass
class QK:
    """What a family's ``qk`` returns: ``q`` ``(B, H, N, D)``, ``k`` ``(B, H, M, D)`` (``M = N``
    for self-attention), the logit scale and an additive logit bias broadcastable to
    ``(B, H, N, M)`` (``None`` when there is none). ``scaled_product``: logits are
    ``(q k^T) * scale`` rather than ``(q * scale) k^T``, to round as the model's own attention."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float
    bias: torch.Tensor | None = None
    scaled_product: bool = False


@dataclass
class Family:
    """How to capture one model family (see the module docstring).

    ``matches(model)``: is this the family's model. ``layers(model)``: attention modules in depth
    order. ``qk(module, args, kwargs)``: queries/keys/bias of one call. ``layout(model)``: the
    token layout. ``with_bias(module, args, kwargs, bias)``: the call's ``(args, kwargs)`` with an
    extra additive logit bias ``(B, 1 or H, N, N)`` (used by :func:`add_logit_bias`).
    ``kinds``: ``{name: module -> bool}`` selecting layers by kind, the first name the default
    (``None``: one kind). ``call_layout(call, module, args, kwargs, qk)``: the layout of one layer
    call, from the model call's arguments by name (``call``) and the layer's; it replaces
    ``layout`` where the layout depends on the input.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    layers: Callable[[nn.Module], list]
    qk: Callable[..., QK]
    layout: Callable[[nn.Module], TokenLayout | None]
    with_bias: Callable[..., tuple] | None = None
    kinds: dict[str, Callable[[nn.Module], bool]] | None = None
    call_layout: Callable[..., TokenLayout] | None = None


def additive_mask(mask, true_attends: bool, dtype) -> torch.Tensor | None:
    """A boolean or additive attention mask -> an additive float bias (``-inf`` = blocked)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        blocked = ~mask if true_attends else mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, -math.inf)
    return mask.to(dtype)


def combine_bias(old, new: torch.Tensor, true_attends: bool):
    old = additive_mask(old, true_attends, new.dtype)
    return new if old is None else old + new


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``(B, N, H*D)`` -> ``(B, H, N, D)``."""
    B, N, _ = x.shape
    return x.reshape(B, N, h, -1).transpose(1, 2)
