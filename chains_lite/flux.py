"""Joint text+image attention of FLUX (diffusers ``FluxTransformer2DModel``), chapter 3.

FLUX runs one attention over the concatenation ``[text tokens, image tokens]`` in every block
(double-stream blocks project the two streams separately, then attend jointly; single-stream
blocks work on the concatenated sequence). That joint attention is one Markov chain whose states
are words and image patches, so a word's bounces land on the patches that belong to it.

:func:`capture_joint` records it through diffusers' own seam, the attention processor: each chosen
block's processor is wrapped by one that runs it unchanged and, while it runs, reads the queries
and keys it hands to ``dispatch_attention_fn`` (diffusers' attention dispatcher). So the recorded
``softmax(q k^T / sqrt(d))`` uses exactly the post-norm, post-RoPE ``q, k`` the model attended
with, whatever kernel then computes the attention; outputs are bit-identical and the original
processors come back on exit, also on exceptions.

Memory: the real FLUX at 512 x 512 has ``24 x 1280 x 1280`` attention entries per block and image
(T5's 256 tokens + 1024 patches). ``store="mean"`` (default) keeps one running sum over every
recorded block and call (the paper averages over layers and denoising steps); ``"probs"`` keeps
each call; ``"qk"`` keeps only ``q, k`` and gives a matrix-free :class:`~chains_lite.LazyAttention`
mixture.

:func:`noised_attention` runs the paper's protocol on real images: encode, noise to ``t``, a few
denoising steps with the caption, attention averaged over the chosen blocks and steps.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from .capture import TokenLayout, chosen_layers
from .chain import head_weights, mix_heads
from .lazy import LazyAttention, LazyMixture

BLOCKS = ("double", "single")
STORE = ("mean", "probs", "qk")
HEAD_MIX = ("uniform", "lambda2")
PAPER_BLOCKS = 10   # the paper (after ConceptAttention) uses the last 10 double-stream blocks


# ----------------------------------------------------------------------------- blocks
def attention_modules(model: nn.Module, blocks: str = "double") -> list:
    """The ``FluxAttention`` modules of ``model``'s double- or single-stream blocks, in depth order."""
    if blocks not in BLOCKS:
        raise ValueError(f"blocks must be one of {BLOCKS}, got {blocks!r}")
    name = "transformer_blocks" if blocks == "double" else "single_transformer_blocks"
    if not hasattr(model, name):
        raise ValueError(f"{type(model).__name__} has no {name}: capture_joint needs a diffusers "
                         "FluxTransformer2DModel")
    return [b.attn for b in getattr(model, name)]


def last_blocks(model: nn.Module, n: int = PAPER_BLOCKS, blocks: str = "double") -> list[int]:
    """Indices of the last ``min(n, available)`` blocks of a kind (the paper: last 10 double)."""
    total = len(attention_modules(model, blocks))
    return list(range(max(0, total - n), total))


# ----------------------------------------------------------------------------- the recorder
@dataclass
class JointAttention:
    """What :func:`capture_joint` yields; filled while the ``with`` block runs.

    ``blocks``, ``layers``: which blocks are recorded. ``layout``: text tokens first
    (``patch_start`` = number of text tokens), then the image grid (read from the model call's
    ``img_ids``). ``calls``: number of recorded block calls (layers x model calls).
    """

    blocks: str
    layers: list[int]
    store: str
    device: torch.device | None
    layout: TokenLayout | None = None
    calls: int = 0
    _sum: torch.Tensor | None = None
    _items: list = field(default_factory=list)

    def _add(self, q: torch.Tensor, k: torch.Tensor, mask, scale: float | None) -> None:
        """One block call: ``q, k`` ``(B, N, H, D)`` as diffusers' dispatcher receives them."""
        if self.store == "qk":
            if mask is not None:
                raise ValueError("store='qk' cannot record an attention call with an attention mask; "
                                 "use store='mean' or 'probs'")
            q, k = q.detach().transpose(1, 2), k.detach().transpose(1, 2)   # (B, H, N, D)
            if self.device is not None:
                q, k = q.to(self.device), k.to(self.device)
            self._items.append((q, k, scale))
        else:
            p = _softmax_qk(q, k, mask, scale)
            if self.device is not None:
                p = p.to(self.device)
            if self.store == "probs":
                self._items.append(p)
            elif self._sum is None:
                self._sum = p
            else:
                if p.shape != self._sum.shape:
                    raise ValueError(f"store='mean' averages calls of one shape; got {tuple(p.shape)} "
                                     f"after {tuple(self._sum.shape)} (one batch per capture)")
                self._sum += p
        self.calls += 1

    def _check(self) -> None:
        if self.calls == 0:
            raise ValueError("nothing recorded: call the model inside the `with capture_joint(...)` block")

    @property
    def attentions(self) -> list[torch.Tensor]:
        """``store="probs"``: every recorded call, ``(B, H, N, N)`` float32, rows sum to 1, in call
        order (model call by model call, blocks in depth order within each)."""
        if self.store != "probs":
            raise ValueError(f"this capture stored {self.store!r}; pass store='probs'")
        self._check()
        return list(self._items)

    def mean(self) -> torch.Tensor:
        """``(B, H, N, N)``: attention averaged over every recorded block and call (float32)."""
        self._check()
        if self.store == "mean":
            return self._sum / self.calls
        if self.store == "probs":
            return torch.stack(self._items).mean(0)
        return self.lazy().dense()

    def lazy(self) -> LazyMixture:
        """``store="qk"``: the same average as :meth:`mean` as a matrix-free chain ``(B, H, N, N)``
        (a uniform :class:`LazyMixture` over the recorded calls of :class:`LazyAttention` chains)."""
        if self.store != "qk":
            raise ValueError(f"this capture stored {self.store!r}; pass store='qk'")
        self._check()
        scales = {s for _, _, s in self._items}
        if len(scales) > 1:
            raise ValueError(f"recorded calls use different scales {scales}")
        q = torch.stack([q for q, _, _ in self._items], 2)   # (B, H, calls, N, D)
        k = torch.stack([k for _, k, _ in self._items], 2)
        chains = LazyAttention(q, k, scale=scales.pop())
        return mix_heads(chains, torch.full(chains.shape[:-2], 1.0 / self.calls), dim=-3)

    def chain(self, heads: str = "lambda2"):
        """The averaged attention with its heads mixed: ``(B, N, N)`` (lazy for ``store="qk"``).

        ``heads``: ``"lambda2"`` (weights ∝ |λ2| of each averaged head, Sec. 4.4) or ``"uniform"``.
        """
        if heads not in HEAD_MIX:
            raise ValueError(f"heads must be one of {HEAD_MIX}, got {heads!r}")
        A = self.lazy() if self.store == "qk" else self.mean()
        return mix_heads(A, head_weights(A, heads, dim=-3), dim=-3)


def _softmax_qk(q, k, mask, scale) -> torch.Tensor:
    """``(B, N, H, D)`` q, k as diffusers' dispatcher gets them -> ``(B, H, N, N)`` float32 probs."""
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    s = (q @ k.mT) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        s = s + (torch.zeros(mask.shape, device=s.device).masked_fill(~mask, -math.inf)
                 if mask.dtype == torch.bool else mask.float())
    return s.softmax(-1)


# ----------------------------------------------------------------------------- the seam
class _Recording:
    """An attention processor that runs ``inner`` unchanged and reports the first ``q, k`` it
    hands to ``dispatch_attention_fn`` (the joint attention; IP-adapter calls come after)."""

    def __init__(self, inner, report):
        self.inner, self.report = inner, report
        self.module = sys.modules[type(inner).__module__]
        if not hasattr(self.module, "dispatch_attention_fn"):
            raise ValueError(f"{type(inner).__name__} does not call diffusers' dispatch_attention_fn; "
                             "capture_joint cannot read its queries and keys")

    def __call__(self, *args, **kwargs):
        original = self.module.dispatch_attention_fn
        signature = inspect.signature(original)
        seen = []

        def recording(*a, **kw):
            if not seen:
                bound = signature.bind(*a, **kw).arguments
                self.report(bound["query"], bound["key"], bound.get("attn_mask"), bound.get("scale"))
                seen.append(True)
            return original(*a, **kw)

        self.module.dispatch_attention_fn = recording
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.module.dispatch_attention_fn = original


def _wrap(inner, report) -> _Recording:
    # FluxAttention passes only the keyword arguments its processor's signature names: give the
    # wrapper the wrapped processor's signature.
    def __call__(self, *args, **kwargs):
        return _Recording.__call__(self, *args, **kwargs)
    __call__.__signature__ = inspect.signature(type(inner).__call__)
    cls = type(f"Recording{type(inner).__name__}", (_Recording,), {"__call__": __call__})
    return cls(inner, report)


def _layout_hook(rec: JointAttention, model: nn.Module):
    signature = inspect.signature(model.forward)

    def hook(module, args, kwargs):
        a = signature.bind(*args, **kwargs).arguments
        txt, ids = a.get("encoder_hidden_states"), a.get("img_ids")
        if txt is None or ids is None:
            raise ValueError("capture_joint needs encoder_hidden_states and img_ids in the model call")
        ids = ids[0] if ids.ndim == 3 else ids
        h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        if h * w != ids.shape[0]:
            raise ValueError(f"img_ids of {ids.shape[0]} tokens do not form a grid ({h} x {w})")
        layout = TokenLayout(None, (), (h, w), txt.shape[1])
        if rec.layout is not None and rec.layout != layout:
            raise ValueError(f"calls with different token layouts in one capture: {rec.layout}, {layout}")
        rec.layout = layout
    return hook


@contextlib.contextmanager
def capture_joint(model: nn.Module, blocks: str = "double", layers=None, store: str = "mean",
                  device=None):
    """Record the joint attention of a ``FluxTransformer2DModel`` while the block runs.

    ``blocks``: ``"double"`` (default) or ``"single"`` stream blocks; ``layers``: indices among
    those blocks (negative from the end; ``None`` = all; the paper: :func:`last_blocks`).
    ``store``: ``"mean"`` (running average over every recorded block and call), ``"probs"``
    (each call kept) or ``"qk"`` (q, k kept: matrix-free). ``device``: where records go (e.g.
    ``"cpu"``). Every model call inside the block is recorded (one per denoising step). Yields
    a :class:`JointAttention`.
    """
    if store not in STORE:
        raise ValueError(f"store must be one of {STORE}, got {store!r}")
    modules = attention_modules(model, blocks)
    chosen = chosen_layers(len(modules), layers)
    rec = JointAttention(blocks, chosen, store, None if device is None else torch.device(device))
    originals = [modules[i].processor for i in chosen]
    handle = model.register_forward_pre_hook(_layout_hook(rec, model), with_kwargs=True)
    try:
        for i, inner in zip(chosen, originals):
            modules[i].set_processor(_wrap(inner, rec._add))
        yield rec
    finally:
        handle.remove()
        for i, inner in zip(chosen, originals):
            modules[i].set_processor(inner)


# ----------------------------------------------------------------------------- real images
@dataclass
class FluxInputs:
    """A batch ready for the transformer: clean packed latents ``x0`` ``(B, n_img, C)``, text
    states ``(B, n_txt, d)``, pooled ``(B, d')``, ids, and the tokenizer output (offsets included)
    that maps caption words to text tokens."""

    x0: torch.Tensor
    text: torch.Tensor
    pooled: torch.Tensor
    img_ids: torch.Tensor
    txt_ids: torch.Tensor
    tokens: dict
    guidance: torch.Tensor | None = None


def lite_inputs(loaded, images: torch.Tensor, captions: list[str]) -> FluxInputs:
    """``shapes-flux``: pixels in [0, 1] ``(B, 3, 32, 32)`` -> its own encoding (pixels scaled to
    [-1, 1], 2 x 2 patches packed into 12-channel tokens, as it was trained) and MiniLM text."""
    from .zoo.generate import TEXT_LENGTH
    from .zoo.models import FLUX_PACK, image_ids, pack
    device = next(loaded.model.parameters()).device
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    text, pooled = loaded.text_encoder(list(captions))
    tokens = loaded.tokenizer(list(captions), padding="max_length", max_length=TEXT_LENGTH,
                              truncation=True, return_offsets_mapping=True)
    grid = images.shape[-1] // FLUX_PACK
    return FluxInputs(pack(images.to(device) * 2 - 1), text.to(device), pooled.to(device),
                      image_ids(grid, device), torch.zeros(text.shape[1], 3, device=device), tokens)


def full_inputs(loaded, images: torch.Tensor, captions: list[str],
                max_sequence_length: int = 256) -> FluxInputs:
    """FLUX.1 (a diffusers ``FluxPipeline`` in ``loaded.pipeline``): pixels in [0, 1]
    ``(B, 3, H, W)``, H and W multiples of 16 -> VAE latents (mean of the posterior, shifted and
    scaled as the pipeline does), packed 2 x 2; T5 + CLIP text as ``encode_prompt`` gives them.

    UNTESTED HERE: no machine this project is built on can download FLUX; the calls follow the
    diffusers ``FluxPipeline`` API (``_pack_latents``, ``_prepare_latent_image_ids``).
    """
    pipe = loaded.pipeline
    if pipe is None:
        raise ValueError("full_inputs needs a loaded FluxPipeline (zoo.load('flux-schnell', mode='full'))")
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    x = (torch.as_tensor(images).to(device, pipe.vae.dtype) * 2 - 1)
    with torch.no_grad():
        lat = pipe.vae.encode(x).latent_dist.mode()
        lat = (lat - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        b, c, h, w = lat.shape
        x0 = pipe._pack_latents(lat, b, c, h, w).to(dtype)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        text, pooled, txt_ids = pipe.encode_prompt(prompt=list(captions), prompt_2=None, device=device,
                                                   max_sequence_length=max_sequence_length)
    tokens = pipe.tokenizer_2(list(captions), padding="max_length", max_length=max_sequence_length,
                              truncation=True, return_offsets_mapping=True)
    guidance = None
    if pipe.transformer.config.guidance_embeds:   # FLUX.1-dev; schnell has no guidance input
        guidance = torch.full((b,), 3.5, device=device, dtype=torch.float32)
    return FluxInputs(x0, text, pooled, img_ids, txt_ids, tokens, guidance)


def encode(loaded, images: torch.Tensor, captions: list[str]) -> FluxInputs:
    """:func:`lite_inputs` or :func:`full_inputs`, by ``loaded.mode``."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    return full_inputs(loaded, images, captions) if loaded.mode == "full" else lite_inputs(
        loaded, images, captions)


@torch.no_grad()
def noised_attention(loaded, inputs: FluxInputs, t: float = 0.5, steps: int = 2,
                     blocks: str = "double", layers=None, store: str = "mean", seed: int = 0,
                     device="cpu") -> JointAttention:
    """The paper's protocol (after ConceptAttention): noise the clean latents to ``t``, take
    ``steps`` Euler steps of the rectified flow towards the data (on ``linspace(t, 0, steps + 1)``:
    t = 0.5 and 0.25, FLUX-schnell's last two of its 4 steps), and record the joint attention of
    every step. Rectified flow: ``x_t = (1 - t) x_0 + t noise``, the model predicts ``noise - x_0``.

    ``layers``: default the last 10 blocks of the kind (fewer if the model has fewer).
    ``seed``: the noise (one ``torch.Generator``). Returns the filled :class:`JointAttention`.
    """
    if not 0 < t <= 1:
        raise ValueError(f"t must be in (0, 1], got {t}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    model = loaded.model
    if layers is None:
        layers = last_blocks(model, PAPER_BLOCKS, blocks)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(inputs.x0.shape, generator=gen).to(inputs.x0.device, inputs.x0.dtype)
    x = (1 - t) * inputs.x0 + t * noise
    ts = torch.linspace(t, 0, steps + 1).tolist()
    with capture_joint(model, blocks, layers, store, device) as rec:
        for t_now, t_next in zip(ts[:-1], ts[1:]):
            tt = torch.full((len(x),), t_now, device=x.device, dtype=x.dtype)
            v = model(hidden_states=x, encoder_hidden_states=inputs.text,
                      pooled_projections=inputs.pooled, timestep=tt, img_ids=inputs.img_ids,
                      txt_ids=inputs.txt_ids, guidance=inputs.guidance).sample
            x = x + (t_next - t_now) * v
    return rec
