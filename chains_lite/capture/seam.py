"""Record post-softmax attention from unmodified models: ``with capture(model) as rec: model(x)``.

One API over several model families (:mod:`chains_lite.capture.families`). Capture registers a
forward *pre*-hook on each chosen attention module that recomputes ``softmax(q k^T * scale + bias)``
from the module's inputs, with the family's ``qk``. The hook only reads, so the model's outputs are
bit-identical with and without capture, and it works whatever kernel the module runs (fused
``scaled_dot_product_attention`` included). Hooks are removed on exit, also on exceptions.

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
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..core.chain import mix_heads
from ..core.layout import TokenLayout
from ..core.lazy import LazyAttention, LazyMixture
from .family import QK
from .families import chosen_layers, family_of, of_kind

HEADS = ("all", "mean")
STORE = ("probs", "qk", "mean")


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


def _in_backward() -> bool:
    """Whether autograd's backward pass is running this code (gradient checkpointing's
    recomputation of a forward, reentrant or not)."""
    return torch._C._current_graph_task_id() != -1


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
    Hook-time work runs without autograd. Under gradient checkpointing, the forward that the
    backward pass recomputes is not recorded again (one record per layer and model call).
    """
    _check_options(heads, store)
    fam = family_of(model)
    modules = of_kind(fam, model, kind)
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
            if _in_backward():   # gradient checkpointing recomputes a forward already recorded
                return
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
