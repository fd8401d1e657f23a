"""Zero-shot segmentation with multi-bounce attention in FLUX (paper Sec. 5.1), chapter 3.

FLUX (diffusers ``FluxTransformer2DModel``) runs one attention over the concatenation
``[text tokens, image tokens]`` in every block (double-stream blocks project the two streams
separately, then attend jointly; single-stream blocks work on the concatenated sequence). That
joint attention is one Markov chain whose states are words and image patches, so a word's bounces
land on the patches that belong to it.

* :func:`capture_joint` records it through :func:`chains_lite.capture.capture` (the FLUX family of
  :mod:`chains_lite.capture.diffusers`): text tokens first (``layout.patch_start`` of them), then
  the image grid. ``store="mean"`` (default) keeps one running sum over every recorded block and
  call (the paper averages over layers and denoising steps); ``"probs"`` keeps each call; ``"qk"``
  keeps only ``q, k`` and gives a matrix-free :class:`~chains_lite.LazyAttention` mixture (the
  real FLUX at 512 x 512 has ``24 x 1280 x 1280`` entries per block and image).
* :func:`noised_attention` runs the paper's protocol on encoded images: noise to ``t``, a few
  denoising steps with the caption, attention averaged over the chosen blocks and steps.
* A caption word's map: start a distribution on its token(s) and bounce (:func:`word_map`):

  * ``row_select``    — one incoming bounce: what the word attends to;
  * ``column_select`` — one outgoing bounce (column-normalised chain): which patches attend to it;
  * ``incoming_2``, ``incoming_3`` — 2 or 3 incoming bounces;
  * ``outgoing_2``, ``outgoing_3`` — 2 or 3 outgoing bounces; ``outgoing_2`` with λ2-weighted
    heads is the paper's method.

  The map is the image-token part of the result, as the image grid. A :class:`Setting` names one
  row of the ablation (method, head mixing, double- or single-stream blocks).
* ConceptAttention's map in the attention output space (:func:`capture_output_space`,
  method ``"output_space"``): the dot product of each image token's attention output with the
  word's, averaged over blocks and steps, beside the bounces; and ConceptAttention proper
  (:func:`capture_concepts`, method ``"concept_attention"``): the same product with a concept token
  that runs through the blocks in a residual stream of its own, the word encoded on its own.
* :func:`step_tokenrank`: TokenRank of each denoising step's chain (the paper's Fig. 17).

The pipeline functions take a loaded model: anything with ``.model`` (the FLUX transformer) and
``.encode(images, captions) -> inputs`` (:class:`chains_lite.zoo.Loaded` for ``shapes-flux`` and
FLUX.1), or pass ``encoder(loaded, images, captions) -> inputs`` yourself. Scoring maps on a
dataset is :mod:`chains_lite.experiments.segmentation`.
"""
from __future__ import annotations

import contextlib
import re
from typing import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..capture import attention_layers, capture
from ..core import scores
from ..core.chain import mix, tokenrank
from ..core.layout import TokenLayout
from ..core.lazy import LazyMixture
from ..core.seeding import seeded_noise

BLOCKS = ("double", "single")
STORE = ("mean", "probs", "qk")
HEAD_MIX = scores.DETERMINISTIC_SCHEMES
PAPER_BLOCKS = 10   # the paper (after ConceptAttention) uses the last 10 double-stream blocks


# ----------------------------------------------------------------------------- blocks
def attention_modules(model: nn.Module, blocks: str = "double") -> list:
    """The ``FluxAttention`` modules of ``model``'s double- or single-stream blocks, in depth order."""
    if blocks not in BLOCKS:
        raise ValueError(f"blocks must be one of {BLOCKS}, got {blocks!r}")
    return attention_layers(model, kind=blocks)


def last_blocks(model: nn.Module, n: int = PAPER_BLOCKS, blocks: str = "double") -> list[int]:
    """Indices of the last ``min(n, available)`` blocks of a kind (the paper: last 10 double)."""
    total = len(attention_modules(model, blocks))
    return list(range(max(0, total - n), total))


# ----------------------------------------------------------------------------- the recorder
class JointAttention:
    """What :func:`capture_joint` yields: the joint attention of the chosen blocks, filled while
    the ``with`` block runs (a view of a :class:`~chains_lite.capture.seam.Recorder`).

    ``blocks``, ``layers``: which blocks are recorded. ``layout``: text tokens first
    (``patch_start`` = number of text tokens), then the image grid (read from the model call's
    ``img_ids``). ``calls``: number of recorded block calls (layers x model calls).
    """

    def __init__(self, rec, blocks: str):
        self.rec, self.blocks = rec, blocks
        self.latents = None   # set by noised_attention: the latents after its last step

    layers = property(lambda self: self.rec.layers)
    store = property(lambda self: self.rec.store)
    calls = property(lambda self: self.rec.calls)

    @property
    def layout(self) -> TokenLayout | None:
        """The model call's layout (every block shares it); ``None`` before a call."""
        return self.rec.layouts[0] if self.rec.layouts else None

    @property
    def attentions(self) -> list[torch.Tensor]:
        """``store="probs"``: every recorded call, ``(B, H, N, N)`` float32, rows sum to 1, in call
        order (model call by model call, blocks in depth order within each)."""
        if self.store != "probs":
            raise ValueError(f"this capture stored {self.store!r}; pass store='probs'")
        return self.rec.recorded()

    def mean(self) -> torch.Tensor:
        """``(B, H, N, N)``: attention averaged over every recorded block and call (float32)."""
        return self.rec.mean()

    def lazy(self) -> LazyMixture:
        """``store="qk"``: the same average as :meth:`mean` as a matrix-free chain ``(B, H, N, N)``."""
        return self.rec.lazy_mean()

    def chain(self, heads: str = "lambda2"):
        """The averaged attention with its heads mixed: ``(B, N, N)`` (lazy for ``store="qk"``).

        ``heads``: ``"lambda2"`` (weights ∝ |λ2| of each averaged head, Sec. 4.4) or ``"uniform"``.
        """
        if heads not in HEAD_MIX:
            raise ValueError(f"heads must be one of {HEAD_MIX}, got {heads!r}")
        return mix(self.lazy() if self.store == "qk" else self.mean(), heads, dim=-3)


@contextlib.contextmanager
def capture_joint(model: nn.Module, blocks: str = "double", layers=None, store: str = "mean",
                  device=None):
    """Record the joint attention of a ``FluxTransformer2DModel`` while the block runs.

    ``blocks``: ``"double"`` (default) or ``"single"`` stream blocks; ``layers``: indices among
    those blocks (negative from the end; ``None`` = all; the paper: :func:`last_blocks`).
    ``store``: ``"mean"`` (running average over every recorded block and call), ``"probs"``
    (each call kept) or ``"qk"`` (q, k kept: matrix-free). ``device``: where records go (e.g.
    ``"cpu"``). Every model call inside the block is recorded (one per denoising step). Yields
    a :class:`JointAttention`. Shorthand for ``capture(model, layers, store=store,
    device=device, kind=blocks)``.
    """
    if blocks not in BLOCKS:
        raise ValueError(f"blocks must be one of {BLOCKS}, got {blocks!r}")
    if store not in STORE:
        raise ValueError(f"store must be one of {STORE}, got {store!r}")
    with capture(model, layers, device=device, store=store, kind=blocks) as rec:
        yield JointAttention(rec, blocks)


@torch.no_grad()
def noised_attention(model, inputs, t: float = 0.5, steps: int = 2,
                     blocks: str = "double", layers=None, store: str = "mean", seed: int = 0,
                     device="cpu", per_step: bool = False):
    """The paper's protocol (after ConceptAttention): noise the clean latents to ``t``, take
    ``steps`` Euler steps of the rectified flow towards the data (on ``linspace(t, 0, steps + 1)``:
    t = 0.5 and 0.25, FLUX-schnell's last two of its 4 steps), and record the joint attention of
    every step. Rectified flow: ``x_t = (1 - t) x_0 + t noise``, the model predicts ``noise - x_0``.

    ``model``: the ``FluxTransformer2DModel``, or what holds it as ``.model`` (a loaded zoo
    model). ``inputs``: clean packed latents ``x0`` ``(B, n_img, C)``, text states ``text``
    ``(B, n_txt, d)``, ``pooled``, ``img_ids``, ``txt_ids`` and ``guidance`` (``None`` for models
    without guidance), as :func:`encode` returns them. ``layers``: default the last 10 blocks of
    the kind (fewer if the model has fewer). ``seed``: the noise, an int (one ``torch.Generator``
    for the batch) or one int per image (image ``b``'s noise from its own generator, so it does
    not depend on the batch it is in; :func:`chains_lite.core.seeding.item_seed` gives them).
    Returns the filled :class:`JointAttention` (its ``latents``: the packed latents ``x`` after
    the last step, ``(B, n_img, C)``), or with ``per_step`` a list of them, one per step (the
    attention of that step alone; t = 1 and ``steps`` = a sampler's steps record a generation).
    """
    if not 0 < t <= 1:
        raise ValueError(f"t must be in (0, 1], got {t}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    model = getattr(model, "model", model)
    if layers is None:
        layers = last_blocks(model, PAPER_BLOCKS, blocks)
    if isinstance(seed, int):
        noise = torch.randn(inputs.x0.shape, generator=torch.Generator().manual_seed(seed))
    else:
        seed = list(seed)
        if len(seed) != len(inputs.x0):
            raise ValueError(f"seed must be an int or one int per image ({len(inputs.x0)}), got {len(seed)} seeds")
        noise = seeded_noise(inputs.x0.shape[1:], seed)
    noise = noise.to(inputs.x0.device, inputs.x0.dtype)
    x = (1 - t) * inputs.x0 + t * noise
    ts = torch.linspace(t, 0, steps + 1).tolist()
    recs = []
    with contextlib.ExitStack() as stack:
        if not per_step:
            recs.append(stack.enter_context(capture_joint(model, blocks, layers, store, device)))
        for t_now, t_next in zip(ts[:-1], ts[1:]):
            with (capture_joint(model, blocks, layers, store, device) if per_step
                  else contextlib.nullcontext()) as rec:
                tt = torch.full((len(x),), t_now, device=x.device, dtype=x.dtype)
                v = model(hidden_states=x, encoder_hidden_states=inputs.text,
                          pooled_projections=inputs.pooled, timestep=tt, img_ids=inputs.img_ids,
                          txt_ids=inputs.txt_ids, guidance=inputs.guidance).sample
                x = x + (t_next - t_now) * v
            if per_step:
                recs.append(rec)
    for rec in recs:
        rec.latents = x
    return recs if per_step else recs[0]


BOUNCE_METHODS = scores.select("row_select", "column_select", "incoming_2", "incoming_3", "outgoing_2",
                               "outgoing_3")
#: ConceptAttention's attention-output-space map (:func:`capture_output_space`), not a bounce
OUTPUT_SPACE = "output_space"
#: ConceptAttention proper: the same map for a concept token with its own stream (:func:`capture_concepts`)
CONCEPT = "concept_attention"
#: n -> infinity: the steady state (TokenRank, Sec. 4.3) of the incoming or the outgoing chain,
#: which does not depend on the start (the outgoing one ranks the "hubs", App. C.1)
STEADY = {"tokenrank_in": "incoming", "tokenrank_out": "outgoing"}
METHODS = BOUNCE_METHODS + tuple(STEADY) + (OUTPUT_SPACE, CONCEPT)
PAPER_METHOD = "outgoing_2"


@dataclass(frozen=True)
class Setting:
    """One way to make a word's map: a :data:`METHODS` name, head mixing, which blocks."""

    method: str = PAPER_METHOD
    heads: str = "lambda2"
    blocks: str = "double"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {tuple(METHODS)}")
        if self.heads not in HEAD_MIX:
            raise ValueError(f"heads must be one of {HEAD_MIX}, got {self.heads!r}")
        if self.blocks not in BLOCKS:
            raise ValueError(f"blocks must be one of {BLOCKS}, got {self.blocks!r}")
        if self.method in (OUTPUT_SPACE, CONCEPT) and self.blocks != "double":
            raise ValueError(f"the {self.method} map reads the double-stream blocks' attention "
                             "outputs; blocks must be 'double'")

    @classmethod
    def parse(cls, spec: str) -> "Setting":
        """``"METHOD[:HEADS[:BLOCKS]]"``, e.g. ``"outgoing_2"``, ``"outgoing_2:uniform"``,
        ``"outgoing_2:lambda2:single"``."""
        parts = spec.split(":")
        if len(parts) > 3:
            raise ValueError(f"a setting is METHOD[:HEADS[:BLOCKS]], got {spec!r}")
        return cls(*parts)

    @property
    def name(self) -> str:
        if self.method in (OUTPUT_SPACE, CONCEPT):  # no chain, so no head mixing
            return self.method
        return ":".join([self.method, self.heads] + ([self.blocks] if self.blocks != "double" else []))


# ----------------------------------------------------------------------------- words -> tokens
def word_tokens(tokens, i: int, caption: str, word: str) -> list[int]:
    """Indices of the text tokens of ``word`` in caption ``i`` of a tokenizer output.

    ``tokens``: the tokenizer's output for the batch with ``return_offsets_mapping=True`` (a fast
    tokenizer). Every whole-word occurrence of ``word`` (case-insensitive) counts; a word split
    into sub-word pieces gives all its pieces. ``ValueError`` if the word is not in the caption.
    """
    spans = [m.span() for m in re.finditer(rf"\b{re.escape(word)}\b", caption, re.IGNORECASE)]
    if not spans:
        raise ValueError(f"{word!r} is not a word of the caption {caption!r}")
    offsets = tokens["offset_mapping"][i]
    out = [j for j, (a, b) in enumerate(offsets) if b > a and any(a < e and s < b for s, e in spans)]
    if not out:
        raise ValueError(f"no token of {caption!r} covers {word!r} (truncated?)")
    return out


def start_vectors(token_lists: list[list[int]], n: int) -> torch.Tensor:
    """``(B, n)``: per image, uniform over its word's tokens (one-hot for a one-token word)."""
    v = torch.zeros(len(token_lists), n)
    for b, idx in enumerate(token_lists):
        v[b, idx] = 1.0 / len(idx)
    return v


def word_map(A, layout: TokenLayout, start: torch.Tensor, method: str = PAPER_METHOD) -> torch.Tensor:
    """Bounce ``A`` ``(..., n, n)`` (heads mixed) from ``start`` ``(..., n)`` (or a token index) as
    ``method`` (one of :data:`BOUNCE_METHODS`, see :mod:`chains_lite.core.scores`) says and return
    the image part as a grid ``(..., h, w)`` (sums to at most 1: the rest is on text). ``method``
    in :data:`STEADY`: the chain's TokenRank in that direction (n -> infinity, with the default teleport),
    image part renormalised to sum 1, the same for every start."""
    if method in STEADY:  # the same map whatever the start
        v = layout.patches(tokenrank(A, direction=STEADY[method]))
        v = v / v.sum(-1, keepdim=True)
        return layout.to_grid(v.expand(*torch.as_tensor(start).shape[:-1], -1)
                              if torch.as_tensor(start).ndim > v.ndim else v)
    if method not in BOUNCE_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS[:-1]}")
    return layout.to_grid(scores.token_scores(A, method, layout, start=start))


# ----------------------------------------------------------------------------- ConceptAttention
class OutputSpace:
    """What :func:`capture_output_space` yields: the running mean over recorded block calls of
    ``o_img @ o_txt^T`` ``(B, n_img, n_txt)``, the dot products of every image token's attention
    output with every text token's (each after its stream's output projection)."""

    def __init__(self):
        self.total, self.calls = None, 0

    def add(self, sim: torch.Tensor) -> None:
        self.total = sim if self.total is None else self.total + sim
        self.calls += 1

    def mean(self) -> torch.Tensor:
        if not self.calls:
            raise ValueError("no block call was recorded: run the model inside the with block")
        return self.total / self.calls


@contextlib.contextmanager
def capture_output_space(model: nn.Module, layers=None, device=None):
    """Record ConceptAttention's saliency in the attention output space (Helbling et al. 2025,
    Eq. 11 without its softmax over concepts) for the caption's own tokens: a forward hook on each
    chosen double-stream block's attention returns its outputs ``(o_img, o_txt)`` and their dot
    products are averaged over blocks and calls. ConceptAttention proper adds separate concept
    tokens with their own residual stream; here the concept is a word of the caption.

    ``layers``: indices among the double-stream blocks (negative from the end; ``None`` = all).
    Yields an :class:`OutputSpace`; the model's outputs are unchanged.
    """
    model = getattr(model, "model", model)
    mods = attention_modules(model, "double")
    chosen = range(len(mods)) if layers is None else sorted({int(i) % len(mods) for i in layers})
    acc = OutputSpace()

    def hook(_module, _args, out):
        img, txt = out
        sim = img.float() @ txt.float().transpose(-1, -2)
        acc.add(sim if device is None else sim.to(device))

    handles = [mods[i].register_forward_hook(hook) for i in chosen]
    try:
        yield acc
    finally:
        for h in handles:
            h.remove()


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (-1, head_dim))  # (B, n, H * d) -> (B, n, H, d)


def _concept_attention(block: nn.Module, c: torch.Tensor, x: torch.Tensor, temb: torch.Tensor, rotary):
    """One double-stream ``block`` on concept tokens ``c`` ``(B, K, D)`` beside the image tokens
    ``x`` ``(B, n_img, D)`` it receives: the concepts' attention output ``(B, K, D)`` (after
    ``to_add_out``) and their residual stream after the block ``(B, K, D)``.

    The concepts go through the block's text-stream weights (``norm1_context``, ``add_*_proj``,
    ``norm_added_*``, ``to_add_out``, ``ff_context``) and attend to themselves and to the image
    tokens (keys and values of the image as the block computes them, RoPE included); no token of
    the model attends to them. With ``c`` equal to the block's text tokens this is the block's own
    text stream (``tests/test_methods_segmentation.py`` checks it).
    """
    from diffusers.models.embeddings import apply_rotary_emb
    attn, d = block.attn, block.attn.head_dim
    norm_x = block.norm1(x, emb=temb)[0]
    norm_c, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(c, emb=temb)
    k_x, v_x = attn.norm_k(_heads(attn.to_k(norm_x), d)), _heads(attn.to_v(norm_x), d)
    if rotary is not None:  # the image tokens' rotary embedding is the last n_img rows
        k_x = apply_rotary_emb(k_x, tuple(r[-x.shape[1]:] for r in rotary), sequence_dim=1)
    q_c = attn.norm_added_q(_heads(attn.add_q_proj(norm_c), d))
    k_c = attn.norm_added_k(_heads(attn.add_k_proj(norm_c), d))
    v_c = _heads(attn.add_v_proj(norm_c), d)
    # text positions are 0 in FLUX, where RoPE is the identity: the concepts get none either
    k, v = torch.cat([k_c, k_x], 1), torch.cat([v_c, v_x], 1)
    o = torch.nn.functional.scaled_dot_product_attention(q_c.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    o_c = attn.to_add_out(o.transpose(1, 2).flatten(2).to(c.dtype))
    c = c + gate_msa.unsqueeze(1) * o_c
    h = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    return o_c, c + gate_mlp.unsqueeze(1) * block.ff_context(h)


@contextlib.contextmanager
def capture_concepts(model: nn.Module, concepts: torch.Tensor, layers=None, device=None):
    """ConceptAttention proper (Helbling et al. 2025, Sec. 3): concept tokens with a residual
    stream of their own through the double-stream blocks, and the saliency ``o_img @ o_concept^T``
    in the attention output space (Eq. 11 without its softmax over concepts).

    ``concepts``: ``(B, K, D_text)`` the text encoder's embedding of K concept words per image
    (each encoded on its own, :func:`concept_embeddings`); the model's ``context_embedder`` maps
    them in at every model call. Each double-stream block then updates them with its text-stream
    weights (:func:`_concept_attention`); they attend to the image, nothing attends to them, so the
    model's outputs are unchanged. ``layers``: the blocks whose saliency is averaged (indices
    among the double-stream blocks, negative from the end; ``None`` = all); the concept stream runs
    through every block. Yields an :class:`OutputSpace` of ``(B, n_img, K)``.
    """
    model = getattr(model, "model", model)
    blocks = list(model.transformer_blocks)
    chosen = set(range(len(blocks))) if layers is None else {int(i) % len(blocks) for i in layers}
    acc, state = OutputSpace(), {}

    @torch.no_grad()
    def start(_module, _args, _kwargs):
        state["c"] = model.context_embedder(concepts.to(next(model.parameters())))

    def attn_out(_module, _args, out):
        state["o_img"] = out[0]

    def after_block(i):
        @torch.no_grad()
        def hook(_block, args, kwargs, _out):
            names = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb")
            given = {**dict(zip(names, args)), **kwargs}
            o_c, state["c"] = _concept_attention(_block, state["c"], given["hidden_states"], given["temb"],
                                                 given.get("image_rotary_emb"))
            if i in chosen:
                sim = state["o_img"].float() @ o_c.float().transpose(-1, -2)
                acc.add(sim if device is None else sim.to(device))
        return hook

    handles = [model.register_forward_pre_hook(start, with_kwargs=True)]
    for i, block in enumerate(blocks):
        handles.append(block.attn.register_forward_hook(attn_out))
        handles.append(block.register_forward_hook(after_block(i), with_kwargs=True))
    try:
        yield acc
    finally:
        for h in handles:
            h.remove()


def concept_embeddings(loaded, words: list[str], size: int, encoder=None) -> torch.Tensor:
    """``(len(words), D_text)``: each word encoded on its own by the model's text encoder (the same
    path as a caption, :func:`encode_inputs`), averaged over the word's tokens: ConceptAttention's
    concept tokens. ``size``: the image side the encoder path expects (its images are blank)."""
    inputs = encode_inputs(loaded, torch.zeros(len(words), 3, size, size), list(words), encoder)
    return torch.stack([inputs.text[i, word_tokens(inputs.tokens, i, w, w)].float().mean(0)
                        for i, w in enumerate(words)])


def output_space_map(sim: torch.Tensor, layout: TokenLayout, start: torch.Tensor) -> torch.Tensor:
    """The output-space map of a word: ``sim`` ``(B, n_img, n_txt)`` (:meth:`OutputSpace.mean`)
    read at the word's text tokens, weighted by ``start`` ``(B, n)`` (its text part): ``(B, h, w)``."""
    w = start[..., :layout.patch_start].to(sim)
    if sim.shape[-1] != w.shape[-1]:
        raise ValueError(f"sim has {sim.shape[-1]} text tokens, the layout {w.shape[-1]}")
    return layout.to_grid((sim * w[..., None, :]).sum(-1))


# ----------------------------------------------------------------------------- over steps
def step_tokenrank(recs: list, heads: str = "lambda2") -> torch.Tensor:
    """Incoming TokenRank of each step's chain, image part renormalised: ``(steps, B, h, w)``.

    ``recs``: :func:`noised_attention`'s per-step records (``per_step=True``). The paper's
    Fig. 17 shows these maps over a generation's steps.
    """
    if not recs:
        raise ValueError("recs is empty: pass noised_attention(..., per_step=True)'s list")
    out = []
    for rec in recs:
        v = rec.layout.patches(tokenrank(rec.chain(heads)))
        out.append(rec.layout.to_grid(v / v.sum(-1, keepdim=True)))
    return torch.stack(out)


# ----------------------------------------------------------------------------- images -> maps
def encode_inputs(loaded, images, captions, encoder=None):
    """Transformer inputs of ``images`` and ``captions``: ``encoder`` if given, else ``loaded.encode``."""
    if encoder is not None:
        return encoder(loaded, images, captions)
    if not callable(getattr(loaded, "encode", None)):
        raise ValueError("the model has no encode(images, captions): load it with chains_lite.zoo.load, "
                         "or pass encoder=chains_lite.zoo.inputs.encode")
    return loaded.encode(images, captions)


def word_maps(loaded, images: torch.Tensor, captions: list[str], words: list[str],
              settings=(Setting(),), t: float = 0.5, steps: int = 2, layers=None, seed: int = 0,
              store: str = "mean", encoder: Callable | None = None) -> dict:
    """Maps of one word per image: ``{setting.name: (B, h, w)}`` for each :class:`Setting`.

    loaded: the FLUX transformer or a loaded zoo model (see :func:`~chains_lite.methods.segmentation.noised_attention`).
    images: ``(B, 3, H, W)`` in [0, 1] (32 x 32 ShapeWorld for ``shapes-flux``; multiples of 16
    for FLUX); ``captions``, ``words``: one each per image. ``encoder``: ``(loaded, images,
    captions) -> inputs`` (default: ``loaded.encode(images, captions)``). One noised forward pass
    (``steps`` model calls from ``t``) per block kind; settings that share it reuse its attention.
    """
    return task_maps(loaded, images, captions, {"": words}, settings, t, steps, layers, seed, store,
                     encoder)[""]


def task_maps(loaded, images: torch.Tensor, captions: list[str], words: dict[str, list[str]],
              settings=(Setting(),), t: float = 0.5, steps: int = 2, layers=None, seed: int = 0,
              store: str = "mean", encoder: Callable | None = None) -> dict:
    """:func:`word_maps` for several word lists on the same noised passes (the chain depends on
    the image and caption, not on the word): ``words`` ``{task: one word per image}`` ->
    ``{task: {setting.name: (B, h, w)}}``, e.g. the shape word and the colour word of each image.
    ``"concept_attention"`` runs the tasks' words of an image as its concepts together (they attend
    to each other, as ConceptAttention's concepts do), so its maps depend on the set of tasks.
    """
    settings = [Setting.parse(s) if isinstance(s, str) else s for s in settings]
    if not words:
        raise ValueError("words names no task")
    if any(len(w) != len(images) for w in words.values()) or len(captions) != len(images):
        raise ValueError("images, captions and each task's words must have the same length")
    inputs = encode_inputs(loaded, images, captions, encoder)
    tokens = {k: [word_tokens(inputs.tokens, i, c, w) for i, (c, w) in enumerate(zip(captions, ws))]
              for k, ws in words.items()}
    out = {k: {} for k in words}
    chosen = layers if layers is not None else last_blocks(getattr(loaded, "model", loaded))
    for blocks in dict.fromkeys(s.blocks for s in settings):
        want_os = any(s.method == OUTPUT_SPACE for s in settings if s.blocks == blocks)
        want_c = any(s.method == CONCEPT for s in settings if s.blocks == blocks)
        with contextlib.ExitStack() as stack:
            os_rec = stack.enter_context(capture_output_space(loaded, chosen, "cpu")) if want_os else None
            if want_c:  # one concept per task and image: its word, encoded on its own
                concepts = torch.stack([concept_embeddings(loaded, ws, images.shape[-1], encoder)
                                        for ws in words.values()], 1)
                c_rec = stack.enter_context(capture_concepts(loaded, concepts, chosen, "cpu"))
            rec = noised_attention(loaded, inputs, t, steps, blocks, layers, store, seed)
        n = rec.layout.patch_start + rec.layout.n_patches
        chains = {}
        for s in settings:
            if s.blocks != blocks:
                continue
            if s.method not in (OUTPUT_SPACE, CONCEPT) and s.heads not in chains:
                chains[s.heads] = rec.chain(s.heads)
            for j, (k, lists) in enumerate(tokens.items()):
                start = start_vectors(lists, n)
                if s.method == CONCEPT:
                    out[k][s.name] = rec.layout.to_grid(c_rec.mean()[..., j])
                elif s.method == OUTPUT_SPACE:
                    out[k][s.name] = output_space_map(os_rec.mean(), rec.layout, start)
                else:
                    out[k][s.name] = word_map(chains[s.heads], rec.layout, start, s.method)
    return out


def segment(loaded, image: torch.Tensor, caption: str, word: str, method: str = PAPER_METHOD,
            heads: str = "lambda2", blocks: str = "double", **kw) -> torch.Tensor:
    """The map ``(h, w)`` of ``word`` for one image ``(3, H, W)`` and its caption (see
    :func:`word_maps` for ``t``, ``steps``, ``layers``, ``seed``, ``encoder``)."""
    s = Setting(method, heads, blocks)
    return word_maps(loaded, torch.as_tensor(image)[None], [caption], [word], [s], **kw)[s.name][0]
