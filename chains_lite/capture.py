"""Record post-softmax attention from unmodified models: ``with capture(model) as rec: model(x)``.

One API over several model families. Each family is a small :class:`Family` object that knows

* which modules are the attention layers, in depth order (``layers``),
* how to get the queries, keys and additive logit bias from the arguments of a layer's call
  (``qk``), using the layer's own projections, and
* the model's token layout (CLS, register tokens, patch grid: ``layout``).

Capture registers a forward *pre*-hook on each chosen attention module that recomputes
``softmax(q k^T * scale + bias)`` from the module's inputs. The hook only reads, so the model's
outputs are bit-identical with and without capture, and it works whatever kernel the module runs
(fused ``scaled_dot_product_attention`` included). Hooks are removed on exit, also on exceptions.

Families here: timm ``VisionTransformer`` (DINOv1, DINOv2 with registers, supervised ViT,
``shapes-vit``), open_clip vision towers (``nn.MultiheadAttention`` blocks, CLIP) and Hugging Face
BERT encoders (MiniLM); diffusers UNets (self- or cross-attention) and FLUX (joint text+image
attention) come from :mod:`chains_lite.diffusers_attention`. Others join with
:func:`register_family`.

Models with several kinds of attention take ``kind`` (UNet: ``"self"``, ``"cross"``; FLUX:
``"joint"``, ``"double"``, ``"single"``). Where the token layout depends on the call (a UNet's
resolution per layer, FLUX's text length), each captured layer records its own:
``rec.layouts``.

The same seam also *changes* attention: :func:`add_logit_bias` adds a bias to the logits of
chosen layers (e.g. ``-inf`` on the columns of masked tokens, chapter 6).
"""
from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .chain import mix_heads
from .lazy import LazyAttention, LazyMixture

HEADS = ("all", "mean")
STORE = ("probs", "qk", "mean")


# ----------------------------------------------------------------------------- token layout
@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in a model's sequence.

    Tokens run ``[prefix tokens..., patch tokens (row-major h x w grid)..., trailing tokens]``.
    ``cls_index``: the CLS token (``None`` if the model has none). ``register_indices``: register
    tokens (DINOv2 with registers). ``grid``: the patch grid ``(h, w)`` (``None`` for text).
    ``patch_start``: index of the first patch token.
    """

    cls_index: int | None = None
    register_indices: tuple[int, ...] = ()
    grid: tuple[int, int] | None = None
    patch_start: int = 0

    @property
    def special_indices(self) -> tuple[int, ...]:
        """CLS and register tokens, sorted."""
        cls = () if self.cls_index is None else (self.cls_index,)
        return tuple(sorted(cls + self.register_indices))

    @property
    def n_patches(self) -> int:
        if self.grid is None:
            raise ValueError("this layout has no patch grid (a text model?)")
        return self.grid[0] * self.grid[1]

    @property
    def center_token(self) -> int:
        """Index of the patch token at the grid's center (row ``h // 2``, column ``w // 2``)."""
        self.n_patches  # raises for a layout without a grid
        h, w = self.grid
        return self.patch_start + (h // 2) * w + w // 2

    @property
    def patch_slice(self) -> slice:
        return slice(self.patch_start, self.patch_start + self.n_patches)

    def patches(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` values per token -> ``(..., h*w)`` values of the patch tokens."""
        self._check_tokens(v, "v")
        return v[..., self.patch_slice]

    def to_grid(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` values per token (or ``(..., h*w)`` per patch) -> ``(..., h, w)`` image."""
        if v.shape[-1] != self.n_patches:
            v = self.patches(v)
        return v.reshape(*v.shape[:-1], *self.grid)

    def patch_attention(self, A: torch.Tensor, renormalize: bool = True) -> torch.Tensor:
        """``(..., n, n)`` attention -> ``(..., h*w, h*w)`` among patch tokens only.

        The rows of the kept block sum to less than 1 (the mass that went to special tokens);
        ``renormalize=True`` rescales them to sum to 1 so the result is again a Markov chain.
        """
        self._check_tokens(A, "A")
        s = self.patch_slice
        B = A[..., s, s]
        if renormalize:
            B = B / B.sum(-1, keepdim=True).clamp_min(torch.finfo(B.dtype).tiny)
        return B

    def _check_tokens(self, v: torch.Tensor, name: str) -> None:
        if v.shape[-1] < self.patch_start + self.n_patches:
            raise ValueError(f"{name} has {v.shape[-1]} tokens on its last dim, but this layout "
                             f"needs {self.patch_start + self.n_patches} ({self})")


def drop_special(v: torch.Tensor, layout: TokenLayout, renormalize: bool = True) -> torch.Tensor:
    """Remove CLS / register tokens from ``(..., n)`` vectors, optionally rescaled to sum to 1."""
    keep = [i for i in range(v.shape[-1]) if i not in set(layout.special_indices)]
    out = v[..., keep]
    return out / out.sum(-1, keepdim=True) if renormalize else out


DROPPABLE = ("cls", "special")


def chain_without(A, layout: TokenLayout, tokens: str = "cls"):
    """The attention chain with the CLS token (``tokens="cls"``) or the CLS and register tokens
    (``"special"``) removed as states, as if the softmax had run over the other keys only.

    A: ``(..., n, n)`` attention probabilities, or a :class:`~chains_lite.lazy.LazyAttention`
    (``store="qk"``). Returns ``(chain, layout)``: the chain on the kept tokens and their layout.
    Removing state ``c`` from softmax rows and renormalising is exact, not an approximation:
    ``softmax(z)_j / sum_{k != c} softmax(z)_k = exp(z_j) / sum_{k != c} exp(z_k)``. A dense
    ``A`` is renormalised that way (its CLS row is dropped too); a lazy chain is rebuilt from the
    kept tokens' queries and keys, the softmax of their logits. The authors' demo notebook
    computes ``softmax(logits[..., 1:, 1:])``: the CLS token dropped, registers kept.
    """
    if tokens not in DROPPABLE:
        raise ValueError(f"tokens must be one of {DROPPABLE}, got {tokens!r}")
    drop = ((layout.cls_index,) if layout.cls_index is not None else ()) if tokens == "cls" \
        else layout.special_indices
    if not drop:
        raise ValueError(f"this layout has no {'CLS' if tokens == 'cls' else 'CLS or register'} token to drop")
    layout._check_tokens(A, "A")
    keep = [i for i in range(A.shape[-1]) if i not in drop]
    new = {i: j for j, i in enumerate(keep)}
    kept = TokenLayout(None if tokens == "special" or layout.cls_index in drop else new[layout.cls_index],
                       tuple(new[r] for r in layout.register_indices if r in new), layout.grid,
                       new[layout.patch_start])
    if isinstance(A, LazyAttention):
        mask = None if A.mask is None else A.mask[..., keep]
        return LazyAttention(A.q[..., keep, :], A.k[..., keep, :], A.scale, mask, A.max_bytes), kept
    if not torch.is_tensor(A):
        raise ValueError(f"A must be a tensor or a LazyAttention, got {type(A).__name__}")
    B = A[..., keep, :][..., keep]
    B = B.to(torch.promote_types(B.dtype, torch.float32))   # half precision renormalised in float32
    return B / B.sum(-1, keepdim=True).clamp_min(torch.finfo(B.dtype).tiny), kept


# ----------------------------------------------------------------------------- families
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


def _combine(old, new: torch.Tensor, true_attends: bool):
    old = additive_mask(old, true_attends, new.dtype)
    return new if old is None else old + new


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``(B, N, H*D)`` -> ``(B, H, N, D)``."""
    B, N, _ = x.shape
    return x.reshape(B, N, h, -1).transpose(1, 2)


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
    kwargs["attn_mask"] = _combine(old, bias, True)
    return args[:1], kwargs


TIMM_VIT = Family("timm-vit", _timm_matches, lambda m: [b.attn for b in m.blocks], _timm_qk,
                  _timm_layout, _timm_with_bias)


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
    q, k = _heads(q, h), _heads(k, h)
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
    kwargs["attn_mask"] = _combine(kwargs.get("attn_mask"), bias, False)
    return args, kwargs


def _clip_layout(model) -> TokenLayout:
    tower = _clip_tower(model)
    return TokenLayout(0, (), tuple(tower.grid_size), 1)   # [class token, patches]


OPEN_CLIP = Family("open_clip-vision", _clip_matches,
                   lambda m: [b.attn for b in _clip_tower(m).transformer.resblocks],
                   _mha_qk, _clip_layout, _mha_with_bias)


# Hugging Face BERT (MiniLM): encoder.layer[i].attention.self has query / key linears.
def _bert_self_attentions(model) -> list:
    try:
        from transformers.models.bert.modeling_bert import BertSelfAttention
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, BertSelfAttention)]


def _bert_qk(sa, args, kwargs) -> QK:
    x = args[0] if args else kwargs["hidden_states"]
    h = sa.num_attention_heads
    q, k = _heads(sa.query(x), h), _heads(sa.key(x), h)
    mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    return QK(q, k, sa.scaling, additive_mask(mask, True, torch.float32))


def _bert_with_bias(sa, args, kwargs, bias):
    kwargs = dict(kwargs)
    old = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    kwargs["attention_mask"] = _combine(old, bias, True)
    return args[:1], kwargs


HF_BERT = Family("hf-bert", lambda m: len(_bert_self_attentions(m)) > 0, _bert_self_attentions,
                 _bert_qk, lambda m: TokenLayout(cls_index=0), _bert_with_bias)

FAMILIES: list[Family] = [TIMM_VIT, OPEN_CLIP, HF_BERT]


def register_family(family: Family) -> None:
    """Add a model family (checked before the built-in ones)."""
    FAMILIES.insert(0, family)


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` that knows ``model``; ``ValueError`` if none does."""
    for fam in FAMILIES:
        if fam.matches(model):
            return fam
    raise ValueError(f"capture does not know {type(model).__name__}; known families: "
                     f"{[f.name for f in FAMILIES]} (add one with register_family)")


def attention_layers(model: nn.Module, kind: str | None = None) -> list:
    """The attention modules :func:`capture` sees, in depth order (their count is the layer count).

    ``kind``: for families with several kinds of attention (see :class:`Family`), which ones;
    ``None`` = the family's default kind."""
    return _of_kind(family_of(model), model, kind)


def _of_kind(fam: Family, model: nn.Module, kind: str | None) -> list:
    modules = fam.layers(model)
    if fam.kinds is None:
        if kind is not None:
            raise ValueError(f"{fam.name} has one kind of attention; kind must be None, got {kind!r}")
        return modules
    kind = next(iter(fam.kinds)) if kind is None else kind
    if kind not in fam.kinds:
        raise ValueError(f"kind must be one of {tuple(fam.kinds)} for {fam.name}, got {kind!r}")
    return [m for m in modules if fam.kinds[kind](m)]


def chosen_layers(n: int, layers) -> list[int]:
    """Validate ``layers`` (an int, a sequence, negatives allowed, or ``None`` = all ``n``) -> sorted indices."""
    if layers is None:
        return list(range(n))
    idx = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"layer {i!r} out of range for a model with {n} attention layers")
        out.append(i % n)
    if len(set(out)) != len(out):
        raise ValueError(f"layers has duplicates: {idx}")
    return sorted(out)


# ----------------------------------------------------------------------------- capture
@dataclass
class Recorder:
    """What :func:`capture` yields. Filled while the ``with`` block runs.

    ``layers``: the captured layer indices (depth order). ``layouts``: per captured layer, its
    :class:`TokenLayout` (``None`` until a call-dependent layout is recorded). Several forward
    passes inside one capture (e.g. a dataset in mini-batches, or denoising steps) are
    concatenated along the batch dimension. ``calls``: recorded layer calls (layers x model calls).
    """

    layers: list[int]
    layouts: list[TokenLayout | None]
    heads: str
    store: str
    device: torch.device | None
    calls: int = 0
    _calls: dict = field(default_factory=dict)
    _order: list = field(default_factory=list)   # every record, in the order the calls ran
    _sum: torch.Tensor | None = None

    def _add(self, layer: int, item) -> None:
        self.calls += 1
        if self.store != "mean":
            self._calls.setdefault(layer, []).append(item)
            self._order.append(item)
        elif self._sum is None:
            self._sum = item
        elif item.shape != self._sum.shape:
            raise ValueError(f"store='mean' averages calls of one shape; got {tuple(item.shape)} "
                             f"after {tuple(self._sum.shape)} (one batch, one resolution per capture)")
        else:
            self._sum += item

    def _set_layout(self, pos: int, layout: TokenLayout) -> None:
        if self.layouts[pos] is not None and self.layouts[pos] != layout:
            raise ValueError(f"calls with different token layouts in one capture: "
                             f"{self.layouts[pos]}, {layout}")
        self.layouts[pos] = layout

    @property
    def layout(self) -> TokenLayout:
        """The token layout shared by every captured layer (see ``layouts`` where they differ)."""
        distinct = list(dict.fromkeys(x for x in self.layouts if x is not None))
        if not distinct:
            raise ValueError("no layout recorded yet: call the model inside the `with capture(...)` block")
        if len(distinct) > 1:
            raise ValueError("the captured layers have different token layouts: read rec.layouts")
        return distinct[0]

    def _check(self) -> None:
        if self.calls == 0:
            raise ValueError("nothing recorded: call the model inside the `with capture(...)` block")

    def _per_layer(self, what: str) -> list:
        if self.store != what:
            raise ValueError(f"this capture stored {self.store!r}; pass store={what!r} to capture()")
        missing = [i for i in self.layers if i not in self._calls]
        if missing:
            raise ValueError(f"nothing recorded for layers {missing}: call the model inside the "
                             "`with capture(...)` block")
        return [self._calls[i] for i in self.layers]

    @property
    def attentions(self) -> list[torch.Tensor]:
        """Per captured layer: ``(B, H, N, M)`` float32 post-softmax attention, rows sum to 1
        (``M = N`` but for cross-attention; ``(B, 1, N, M)`` with ``heads="mean"``)."""
        return [torch.cat(calls) for calls in self._per_layer("probs")]

    def recorded(self) -> list:
        """Every record (``store="probs"``: ``(B, H, N, M)``; ``"qk"``: ``(q, k, scale, key_mask)``)
        in the order the calls ran: model call by model call, layers in depth order within each."""
        if self.store == "mean":
            raise ValueError("store='mean' keeps only the running sum; pass store='probs' or 'qk'")
        self._check()
        return list(self._order)

    @property
    def qk(self) -> list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]]:
        """Per captured layer: ``(q, k, scale, key_mask)`` with q, k ``(B, H, N, D)`` in the model's
        dtype and ``key_mask`` ``(B, 1, N)`` bool (True = attended) or ``None``."""
        out = []
        for calls in self._per_layer("qk"):
            q = torch.cat([c[0] for c in calls])
            k = torch.cat([c[1] for c in calls])
            masks = [c[3] for c in calls]
            mask = None
            if any(m is not None for m in masks):
                mask = torch.cat([torch.ones(c[1].shape[0], 1, c[1].shape[2], dtype=torch.bool,
                                             device=c[1].device) if m is None else m
                                  for c, m in zip(calls, masks)])
            out.append((q, k, calls[0][2], mask))
        return out

    def lazy(self, **kwargs) -> list[LazyAttention]:
        """Per captured layer: a matrix-free :class:`LazyAttention` ``(B, H, N, N)`` (``store="qk"``)."""
        return [LazyAttention(q, k, scale=s, mask=m, **kwargs) for q, k, s, m in self.qk]

    def mean(self) -> torch.Tensor:
        """``(B, H, N, N)`` float32: attention averaged over every recorded layer and call (all of
        one shape), e.g. FLUX's blocks and denoising steps."""
        self._check()
        if self.store == "mean":
            return self._sum / self.calls
        if self.store == "probs":
            return torch.stack(self._order).mean(0)
        return self.lazy_mean().dense()

    def lazy_mean(self) -> LazyMixture:
        """``store="qk"``: :meth:`mean` as a matrix-free chain ``(B, H, N, N)``, a uniform
        :class:`LazyMixture` over the recorded calls of :class:`LazyAttention` chains."""
        if self.store != "qk":
            raise ValueError(f"this capture stored {self.store!r}; pass store='qk'")
        self._check()
        if any(m is not None for *_, m in self._order):
            raise ValueError("a matrix-free mean of masked calls is not supported: use store='mean'")
        scales = {s for _, _, s, _ in self._order}
        if len(scales) > 1:
            raise ValueError(f"recorded calls use different scales {scales}")
        q = torch.stack([q for q, *_ in self._order], 2)   # (B, H, calls, N, D)
        k = torch.stack([k for _, k, *_ in self._order], 2)
        chains = LazyAttention(q, k, scale=scales.pop())
        return mix_heads(chains, torch.full(chains.shape[:-2], 1.0 / self.calls), dim=-3)


def _key_mask(bias: torch.Tensor | None, n: int, m: int) -> torch.Tensor | None:
    """An additive bias that only blocks whole key columns -> a ``(B, 1, M)`` boolean key mask
    (``n`` queries, ``m`` keys)."""
    if bias is None:
        return None
    b = bias.expand(*bias.shape[:-2], n, m) if bias.shape[-2] == 1 else bias
    blocked = b < -1e30   # -inf, or the dtype's most negative number (Hugging Face's masks)
    col = blocked[..., :1, :]
    if not (((b == 0) | blocked).all() and (blocked == col).all()):
        raise ValueError("store='qk' supports only key masks (whole columns blocked); this layer "
                         "has a general logit bias: use store='probs'")
    col = col.reshape(col.shape[0], -1, m)[:, :1]   # (B, 1, M); key masks are the same for all heads
    return ~col


def _probs(qk: QK) -> torch.Tensor:
    q, k = qk.q.float(), qk.k.float()
    if qk.scaled_product:
        logits = (q @ k.transpose(-2, -1)) * qk.scale
    else:
        logits = (q * qk.scale) @ k.transpose(-2, -1)
    if qk.bias is not None:
        logits = logits + qk.bias.to(logits.device)
    # a row is a distribution only if its largest logit is finite (not every key masked, no overflow)
    if not torch.isfinite(logits.amax(-1)).all():
        warnings.warn("captured attention has rows whose logits are all -inf (every key masked) or "
                      "not finite: those rows are NaN, not distributions; check the mask or bias",
                      RuntimeWarning, stacklevel=2)
    return logits.softmax(-1)


def _record(qk: QK, heads: str, store: str, device):
    """One layer call's record: probabilities (head-averaged with ``heads="mean"``) or
    ``(q, k, scale, key_mask)``, moved to ``device``."""
    if store == "qk":
        item = (qk.q.detach(), qk.k.detach(), qk.scale,
                _key_mask(qk.bias, qk.q.shape[-2], qk.k.shape[-2]))
        return item if device is None else tuple(t.to(device) if torch.is_tensor(t) else t for t in item)
    item = _probs(qk)
    if heads == "mean":
        item = item.mean(1, keepdim=True)
    return item if device is None else item.to(device)


def _check_options(heads: str, store: str) -> None:
    if heads not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
    if store not in STORE:
        raise ValueError(f"store must be one of {STORE}, got {store!r}")
    if store == "qk" and heads != "all":
        raise ValueError("heads='mean' needs probabilities; use store='probs'")


@contextlib.contextmanager
def capture(model: nn.Module, layers: int | Sequence[int] | None = None, heads: str = "all",
            device=None, store: str = "probs", kind: str | None = None):
    """Record the attention of ``model`` while the ``with`` block runs.

    ``layers``: indices into the model's attention layers (of ``kind``) in depth order (negative
    allowed; ``None`` = all). ``heads="mean"`` averages heads as it records (``(B, 1, N, N)``, H
    times less memory). ``device``: move records there (e.g. ``"cpu"``) as they come.
    ``store="qk"`` keeps queries and keys instead of probabilities (``O(N D)`` per head instead
    of ``O(N^2)``); read them with ``rec.qk`` or ``rec.lazy()``. ``store="mean"`` keeps one
    running sum over every recorded layer and call (read ``rec.mean()``). ``kind``: which
    attention of a model with several (UNet ``"self"`` (default) or ``"cross"``; FLUX ``"joint"``
    (default: double then single blocks), ``"double"`` or ``"single"``).

    Yields a :class:`Recorder`. The model and its outputs are untouched; hooks are removed on exit.
    Hook-time work runs without autograd.
    """
    _check_options(heads, store)
    fam = family_of(model)
    modules = _of_kind(fam, model, kind)
    chosen = chosen_layers(len(modules), layers)
    layouts = [None if fam.call_layout else fam.layout(model)] * len(chosen)
    rec = Recorder(chosen, layouts, heads, store, None if device is None else torch.device(device))
    call = {}   # the latest model call's arguments by name, for call-dependent layouts
    signature = inspect.signature(model.forward)

    def remember_call(module, args, kwargs):
        call.clear()
        call.update(signature.bind(*args, **kwargs).arguments)

    def hook_for(pos, i):
        @torch.no_grad()
        def hook(module, args, kwargs):
            qk = fam.qk(module, args, kwargs)
            if fam.call_layout is not None:
                rec._set_layout(pos, fam.call_layout(call or None, module, args, kwargs, qk))
            rec._add(i, _record(qk, heads, store, rec.device))
        return hook

    handles = []
    try:
        if fam.call_layout is not None:
            handles.append(model.register_forward_pre_hook(remember_call, with_kwargs=True))
        for pos, i in enumerate(chosen):
            handles.append(modules[i].register_forward_pre_hook(hook_for(pos, i), with_kwargs=True))
        yield rec
    finally:
        for h in handles:
            h.remove()

@contextlib.contextmanager
def add_logit_bias(model: nn.Module, bias: Callable[[int, int], torch.Tensor] | torch.Tensor,
                   layers: int | Sequence[int] | None = None):
    """Add ``bias`` to the attention logits (before softmax) of chosen layers while the block runs.

    ``bias``: a tensor broadcastable to ``(B, H, N, N)`` (``-inf`` blocks), or a function
    ``(layer, n_tokens) -> tensor`` for per-layer biases. Works through each family's
    ``with_bias`` seam, so fused kernels still run; composes with :func:`capture` (enter
    ``add_logit_bias`` first and capture sees the biased attention).
    """
    fam = family_of(model)
    if fam.with_bias is None:
        raise ValueError(f"family {fam.name} cannot add a logit bias")
    modules = fam.layers(model)
    chosen = chosen_layers(len(modules), layers)

    def hook_for(i):
        def hook(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            n = x.shape[1] if getattr(module, "batch_first", True) else x.shape[0]
            b = bias(i, n) if callable(bias) else bias
            b = torch.as_tensor(b, dtype=torch.float32, device=x.device)
            while b.ndim < 4:
                b = b[None]
            return fam.with_bias(module, args, kwargs, b.to(x.dtype))
        return hook

    handles = []
    try:
        for i in chosen:
            handles.append(modules[i].register_forward_pre_hook(hook_for(i), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


# The diffusers families need QK, Family and TokenLayout from this module, so they load last.
from .diffusers_attention import FLUX, UNET  # noqa: E402

FAMILIES += [UNET, FLUX]
