"""The one place that knows how diffusers computes attention: queries, keys and token layouts of
diffusers UNets and FLUX, as :func:`chains_lite.capture.capture` families.

Capture reads attention through a forward *pre*-hook on each ``Attention`` / ``FluxAttention``
module: the hook sees the module's call arguments and recomputes ``q, k`` with the module's own
projections and norms, in the order diffusers' processors apply them. Nothing of diffusers is
replaced or swapped, so the model runs its own processor (fused kernels included) and its
outputs are bit-identical with and without capture.

* **UNet** (``UNet2DModel``, ``UNet2DConditionModel``): ``Attention`` modules, in the order the
  forward pass runs them (down blocks, mid block, up blocks). Kinds: ``"self"`` (default;
  ``attn1`` and the plain UNet's attention blocks) and ``"cross"`` (``attn2``: image queries, text
  keys). Before ``to_q`` the processor applies the spatial norm (with ``temb``), flattens
  ``(B, C, H, W)`` inputs to ``(B, HW, C)`` tokens and applies the group norm; keys come from the
  text states (after ``norm_cross``) for cross-attention. Each layer's token grid is its own
  resolution: read from a 4-D input, else from the model's ``sample`` and the layer's token count.
* **FLUX** (``FluxTransformer2DModel``): the ``FluxAttention`` of every double-stream block, then
  every single-stream block. Kinds: ``"joint"`` (default, all), ``"double"``, ``"single"``. The
  joint sequence is ``[text tokens, image tokens]``: text ``q, k`` from ``add_q_proj`` /
  ``add_k_proj`` with ``norm_added_q/k``, image ones from ``to_q`` / ``to_k`` with ``norm_q/k``
  (single blocks get the concatenation already), then RoPE. The layout (number of text tokens,
  image grid) comes from the model call's ``encoder_hidden_states`` and ``img_ids``.

Logits are ``(q k^T) * scale``, the order of diffusers' eager attention (``baddbmm`` with
``alpha=scale``).
"""
from __future__ import annotations

import inspect

import torch

from ..core.layout import TokenLayout
from .family import QK, Family, additive_mask

#: The oldest diffusers whose FLUX attention (``FluxAttention``: ``head_dim``, ``added_kv_proj_dim``,
#: fused ``to_added_qkv``) this module reads; pyproject.toml and the notebooks' Colab installs ask for it.
DIFFUSERS_MIN = "0.35"

UNET_KINDS = ("self", "cross")
FLUX_KINDS = ("joint", "double", "single")


def _bound(fn, args, kwargs) -> dict:
    """The call's arguments by name (``**kwargs`` of ``fn`` stay in their own dict)."""
    return inspect.signature(fn).bind(*args, **kwargs).arguments


def _split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """``(B, N, H*D)`` -> ``(B, H, N, D)``, as ``AttnProcessor2_0`` reshapes."""
    return x.view(x.shape[0], -1, heads, head_dim).transpose(1, 2)


# ----------------------------------------------------------------------------- UNet
def _unet_matches(model) -> bool:
    try:
        from diffusers import UNet2DConditionModel, UNet2DModel
    except ImportError:
        return False
    return isinstance(model, (UNet2DModel, UNet2DConditionModel))


def _unet_layers(model) -> list:
    from diffusers.models.attention_processor import Attention
    # module order puts mid_block after up_blocks; the forward pass runs it between them
    parts = [*model.down_blocks, model.mid_block, *model.up_blocks]
    return [m for p in parts if p is not None for m in p.modules() if isinstance(m, Attention)]


def _unet_tokens(attn, x: torch.Tensor, temb) -> torch.Tensor:
    """The query states of one call, ``(B, N, C)``: spatial norm, ``(B, C, H, W)`` flattened to
    tokens, group norm, as ``AttnProcessor2_0`` does before ``to_q``."""
    if attn.spatial_norm is not None:
        x = attn.spatial_norm(x, temb)
    if x.ndim == 4:
        b, c, h, w = x.shape
        x = x.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    return x


def _unet_qk(attn, args, kwargs) -> QK:
    a = _bound(attn.forward, args, kwargs)
    extra = a.get("cross_attention_kwargs", {})
    x = _unet_tokens(attn, a["hidden_states"], extra.get("temb"))
    ctx = a.get("encoder_hidden_states")
    if ctx is None:
        ctx = x
    elif attn.norm_cross:
        ctx = attn.norm_encoder_hidden_states(ctx)
    q, k = attn.to_q(x), attn.to_k(ctx)
    head_dim = k.shape[-1] // attn.heads
    q, k = _split_heads(q, attn.heads, head_dim), _split_heads(k, attn.heads, head_dim)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    mask = a.get("attention_mask")
    if mask is not None:   # (B, Nk) or (B, 1, Nk) -> (B, H, 1 or Nq, Nk), as the processor does
        mask = attn.prepare_attention_mask(mask, k.shape[2], q.shape[0])
        mask = mask.view(q.shape[0], attn.heads, -1, mask.shape[-1])
    # attn.scale is what diffusers' eager processor uses; AttnProcessor2_0 leaves the scale to
    # scaled_dot_product_attention (1/sqrt(d)), the same value unless the module has scale_qk=False
    return QK(q, k, attn.scale, additive_mask(mask, True, torch.float32), scaled_product=True)


def _grid_from_sample(sample: torch.Tensor, n: int) -> tuple[int, int]:
    """The ``(h, w)`` grid of ``n`` tokens in a UNet fed ``sample`` ``(B, C, H, W)``: each
    downsampling halves a side rounding up (stride-2 convolutions with padding 1)."""
    h, w = sample.shape[-2:]
    while h * w > n and h > 1:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != n:
        raise ValueError(f"{n} tokens are no downsampled grid of a {tuple(sample.shape[-2:])} sample")
    return h, w


def _unet_layout(call: dict | None, attn, args, kwargs, qk: QK) -> TokenLayout:
    x = _bound(attn.forward, args, kwargs)["hidden_states"]
    if x.ndim == 4:
        grid = tuple(x.shape[-2:])
    elif call is not None and "sample" in call:
        grid = _grid_from_sample(call["sample"], qk.q.shape[-2])
    else:
        raise ValueError("the token grid of a UNet attention layer comes from the model call: "
                         "call the UNet itself inside the capture block")
    return TokenLayout(None, (), grid, 0)


UNET = Family("diffusers-unet", _unet_matches, _unet_layers, _unet_qk, lambda m: None,
              kinds={"self": lambda m: not m.is_cross_attention, "cross": lambda m: m.is_cross_attention},
              call_layout=_unet_layout)


# ----------------------------------------------------------------------------- FLUX
def _flux_matches(model) -> bool:
    try:
        import diffusers
        from diffusers import FluxTransformer2DModel
    except ImportError:
        return False
    if not isinstance(model, FluxTransformer2DModel):
        return False
    from packaging.version import Version
    if Version(diffusers.__version__) < Version(DIFFUSERS_MIN):
        raise ImportError(f"capturing FLUX needs diffusers>={DIFFUSERS_MIN} (its FluxAttention), found "
                          f"{diffusers.__version__}: pip install -U 'diffusers>={DIFFUSERS_MIN}'")
    return True


def _flux_layers(model) -> list:
    return [b.attn for b in model.transformer_blocks] + [b.attn for b in model.single_transformer_blocks]


def _project(attn, x, fused: str, to_q: str, to_k: str, norm_q: str, norm_k: str):
    """``q, k`` ``(B, N, H, D)`` of ``x`` through the named projections (or the fused one, when the
    module fused them) and per-head norms."""
    if getattr(attn, "fused_projections", False):
        q, k, _ = getattr(attn, fused)(x).chunk(3, dim=-1)
    else:
        q, k = getattr(attn, to_q)(x), getattr(attn, to_k)(x)
    heads = lambda t: t.unflatten(-1, (-1, attn.head_dim))  # noqa: E731
    return getattr(attn, norm_q)(heads(q)), getattr(attn, norm_k)(heads(k))


def _flux_projections(attn, x, ctx):
    """``q, k`` ``(B, N, H, D)`` of the joint sequence before RoPE: text then image tokens."""
    q, k = _project(attn, x, "to_qkv", "to_q", "to_k", "norm_q", "norm_k")
    if ctx is not None and attn.added_kv_proj_dim is not None:
        cq, ck = _project(attn, ctx, "to_added_qkv", "add_q_proj", "add_k_proj", "norm_added_q", "norm_added_k")
        q, k = torch.cat([cq, q], dim=1), torch.cat([ck, k], dim=1)
    return q, k


def _flux_qk(attn, args, kwargs) -> QK:
    from diffusers.models.embeddings import apply_rotary_emb
    a = _bound(attn.forward, args, kwargs)
    q, k = _flux_projections(attn, a["hidden_states"], a.get("encoder_hidden_states"))
    rope = a.get("image_rotary_emb")
    if rope is not None:
        q = apply_rotary_emb(q, rope, sequence_dim=1)
        k = apply_rotary_emb(k, rope, sequence_dim=1)
    q, k = q.transpose(1, 2), k.transpose(1, 2)   # (B, H, N, D)
    return QK(q, k, q.shape[-1] ** -0.5, additive_mask(a.get("attention_mask"), True, torch.float32),
              scaled_product=True)


def _flux_layout(call: dict | None, attn, args, kwargs, qk: QK) -> TokenLayout:
    txt, ids = (call or {}).get("encoder_hidden_states"), (call or {}).get("img_ids")
    if txt is None or ids is None:
        raise ValueError("capturing FLUX needs encoder_hidden_states and img_ids in the model call")
    ids = ids[0] if ids.ndim == 3 else ids
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    if h * w != ids.shape[0]:
        raise ValueError(f"img_ids of {ids.shape[0]} tokens do not form a grid ({h} x {w})")
    return TokenLayout(None, (), (h, w), txt.shape[1])


FLUX = Family("diffusers-flux", _flux_matches, _flux_layers, _flux_qk, lambda m: None,
              kinds={"joint": lambda m: True, "double": lambda m: m.added_kv_proj_dim is not None,
                     "single": lambda m: m.added_kv_proj_dim is None},
              call_layout=_flux_layout)

