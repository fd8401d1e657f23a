"""Joint text+image attention of FLUX (diffusers ``FluxTransformer2DModel``), chapter 3.

FLUX runs one attention over the concatenation ``[text tokens, image tokens]`` in every block
(double-stream blocks project the two streams separately, then attend jointly; single-stream
blocks work on the concatenated sequence). That joint attention is one Markov chain whose states
are words and image patches, so a word's bounces land on the patches that belong to it.

:func:`capture_joint` records it through :func:`chains_lite.capture` (the FLUX family of
:mod:`chains_lite.diffusers_attention`): the post-norm, post-RoPE ``q, k`` of every chosen block
are recomputed from the block's own projections, so outputs are bit-identical and nothing of the
model is replaced. The layout is this module's FLUX-specific part: text tokens first
(``layout.patch_start`` of them), then the image grid.

Memory: the real FLUX at 512 x 512 has ``24 x 1280 x 1280`` attention entries per block and image
(T5's 256 tokens + 1024 patches). ``store="mean"`` (default) keeps one running sum over every
recorded block and call (the paper averages over layers and denoising steps); ``"probs"`` keeps
each call; ``"qk"`` keeps only ``q, k`` and gives a matrix-free :class:`~chains_lite.LazyAttention`
mixture.

:func:`noised_attention` runs the paper's protocol on encoded images: noise to ``t``, a few
denoising steps with the caption, attention averaged over the chosen blocks and steps. Encoding
images and captions belongs to the model zoo (:mod:`chains_lite.zoo.inputs`; a loaded FLUX model's
``encode``).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import scores
from .capture import TokenLayout, attention_layers, capture
from .chain import mix
from .lazy import LazyMixture

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
    the ``with`` block runs (a view of a :class:`~chains_lite.capture.Recorder`).

    ``blocks``, ``layers``: which blocks are recorded. ``layout``: text tokens first
    (``patch_start`` = number of text tokens), then the image grid (read from the model call's
    ``img_ids``). ``calls``: number of recorded block calls (layers x model calls).
    """

    def __init__(self, rec, blocks: str):
        self.rec, self.blocks = rec, blocks

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


def _noise(shape, seed) -> torch.Tensor:
    """Standard normal noise of ``shape`` ``(B, ...)``: from one generator seeded with ``seed``
    (an int), or image ``b``'s from a generator seeded with ``seed[b]`` (one int per image)."""
    if isinstance(seed, int):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    seed = list(seed)
    if len(seed) != shape[0]:
        raise ValueError(f"seed must be an int or one int per image ({shape[0]}), got {len(seed)} seeds")
    return torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seed])


@torch.no_grad()
def noised_attention(model, inputs, t: float = 0.5, steps: int = 2,
                     blocks: str = "double", layers=None, store: str = "mean", seed: int = 0,
                     device="cpu") -> JointAttention:
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
    not depend on the batch it is in; :func:`chains_lite.runner.item_seed` gives them).
    Returns the filled :class:`JointAttention`.
    """
    if not 0 < t <= 1:
        raise ValueError(f"t must be in (0, 1], got {t}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    model = getattr(model, "model", model)
    if layers is None:
        layers = last_blocks(model, PAPER_BLOCKS, blocks)
    noise = _noise(inputs.x0.shape, seed).to(inputs.x0.device, inputs.x0.dtype)
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
