"""Self-attention guidance (SAG, Hong et al. 2023) with masks from any token score (paper Sec. 5.3).

At a denoising step the UNet predicts the noise ``eps`` of ``x_t``; one of its self-attention maps
``A`` (heads averaged, ``(B, N, N)``) is scored per token and thresholded into a mask of
"important" tokens. The predicted clean image ``x0`` is blurred inside that mask, re-noised with
the same ``eps`` to ``x_hat``, and the sample is pushed away from the prediction on the blurred
input::

    eps_guided = eps + s * (eps - eps(x_hat))                  (SAG Eq. 10; s = 0: no guidance)

With classifier-free guidance (scale ``w``) the mask, ``x0`` and ``x_hat`` come from the
unconditional branch, as in SAG: ``eps_u + w (eps_c - eps_u) + s (eps_u - eps_u(x_hat))``.

* Mask sources are names of the token-score registry (:mod:`chains_lite.core.scores`). Every score sums
  to 1 over the ``N`` tokens, so ``N * score > 1`` ("above the uniform share") is one threshold for
  all: for ``column_sum`` it is SAG's own rule (column sum of the head-mean map > 1), for
  ``tokenrank`` it is ``N * pi > 1``.
* ``cap``: the paper masks "up to 40 % of the attention matrix". We read it as a cap on the
  masked share of tokens: of the tokens above the threshold, at most ``floor(cap * N)`` with the
  highest scores are kept.
* Layer (:func:`sag_layer`): ``"decoder"`` is the paper's, the last self-attention of the
  second-last decoder block (``up_blocks[-2]``; in SD1.5 ``up_blocks.2``, 32 x 32 tokens for a
  512-pixel image); ``"bottleneck"`` is SAG's, the self-attention of the middle block.
* Blur: a Gaussian of ``kernel`` taps and std ``sigma`` in the model's input pixels (latent pixels
  for SD), SAG's 9 and 1.0 by default, with reflected borders.

Attention is read through :func:`chains_lite.capture` (a read-only hook), so the model is never
modified and ``s = 0`` gives plain sampling bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from ..core.progress import progress_bar

from ..capture import attention_layers, capture
from ..core import scores
from ..core.chain import DEFAULT_ALPHA
from ..core.layout import TokenLayout

LAYERS = ("decoder", "bottleneck")


# ----------------------------------------------------------------------------- the pieces
def sag_layer(unet, where: str = "decoder") -> int:
    """Index into ``attention_layers(unet, kind="self")`` of the layer SAG reads.

    ``"decoder"``: the last self-attention of ``unet.up_blocks[-2]`` (the paper, App. A.2);
    ``"bottleneck"``: the last self-attention of ``unet.mid_block`` (SAG's choice)."""
    if where not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {where!r}")
    block = unet.up_blocks[-2] if where == "decoder" else unet.mid_block
    inside = {id(m) for m in block.modules()}
    found = [i for i, m in enumerate(attention_layers(unet, kind="self")) if id(m) in inside]
    if not found:
        raise ValueError(f"the {where} block of this UNet has no self-attention layer")
    return found[-1]


def token_mask(A: torch.Tensor, layout: TokenLayout, source: str = "column_sum",
               cap: float | None = None, alpha: float = DEFAULT_ALPHA,
               generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """The tokens SAG blurs: ``(B, N)`` bool from attention ``A`` ``(B, H, N, N)`` or ``(B, N, N)``.

    Heads are averaged into one chain, scored by the registry method ``source`` (``alpha``:
    TokenRank's teleport weight; ``options``: the score's others, e.g. ``steps`` of
    ``bounce_center``), and a token is masked when ``N * score > 1``; ``cap`` in (0, 1] keeps at
    most ``floor(cap * N)`` of those, the highest scored."""
    if A.ndim not in (3, 4) or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be (B, H, N, N) or (B, N, N), got {tuple(A.shape)}")
    if cap is not None and not (isinstance(cap, (int, float)) and 0 < cap <= 1):
        raise ValueError(f"cap must be None or in (0, 1], got {cap!r}")
    chain = A.float().mean(1) if A.ndim == 4 else A.float()
    if source == "tokenrank":
        options = {"alpha": alpha, **options}
    s = scores.token_scores(chain, source, layout, generator, **options)
    n = s.shape[-1]
    mask = n * s > 1
    if cap is not None:
        rank = s.argsort(-1, descending=True).argsort(-1)   # 0 = highest score
        mask &= rank < int(cap * n)
    return mask


def gaussian_blur(x: torch.Tensor, kernel: int = 9, sigma: float = 1.0) -> torch.Tensor:
    """``(B, C, H, W)`` -> same shape, blurred by a separable Gaussian (odd ``kernel`` taps,
    std ``sigma`` pixels) with reflected borders."""
    if kernel < 1 or kernel % 2 == 0 or not sigma > 0:
        raise ValueError(f"kernel must be odd and >= 1 and sigma > 0, got {kernel}, {sigma}")
    r = kernel // 2
    if r >= min(x.shape[-2:]):
        raise ValueError(f"a {kernel}-tap kernel needs images larger than {r} pixels, got {tuple(x.shape[-2:])}")
    taps = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    g = torch.exp(-0.5 * (taps / sigma) ** 2)
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur_in_mask(x0: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], kernel: int = 9,
                 sigma: float = 1.0) -> torch.Tensor:
    """``x0`` ``(B, C, H, W)`` blurred where the token ``mask`` ``(B, h*w)`` (row-major ``grid``)
    is set, upsampled to ``(H, W)`` by nearest neighbours; untouched elsewhere."""
    m = mask.reshape(-1, 1, *grid).to(x0.dtype)
    m = F.interpolate(m, size=x0.shape[-2:], mode="nearest")
    return torch.where(m > 0, gaussian_blur(x0, kernel, sigma), x0)


# ----------------------------------------------------------------------------- one step
@dataclass(frozen=True)
class SAG:
    """The settings of self-attention guidance. ``scale``: ``s`` (0: off); ``source``: a
    token-score name; ``cap``: the masked share's ceiling (None: none); ``layer``: ``"decoder"``
    or ``"bottleneck"``; ``kernel``, ``sigma``: the blur; ``alpha``: TokenRank's teleport;
    ``options``: other options of the score (:data:`chains_lite.core.scores.OPTIONS`)."""

    scale: float = 0.0
    source: str = "column_sum"
    cap: float | None = None
    layer: str = "decoder"
    kernel: int = 9
    sigma: float = 1.0
    alpha: float = DEFAULT_ALPHA
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (isinstance(self.scale, (int, float)) and np.isfinite(self.scale)):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        scores.select(self.source)
        if self.layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        if self.cap is not None and not (isinstance(self.cap, (int, float)) and 0 < self.cap <= 1):
            raise ValueError(f"cap must be None or in (0, 1], got {self.cap!r}")


def _eps(unet, x, t, context):
    return (unet(x, t) if context is None else unet(x, t, encoder_hidden_states=context)).sample


def _alpha_bar(scheduler, t, x):
    return scheduler.alphas_cumprod.to(x.device)[int(t)].to(x.dtype)


def guided_eps(unet, scheduler, x: torch.Tensor, t, sag: SAG, context=None, uncond_context=None,
               cfg: float = 1.0):
    """The guided noise prediction of one step: ``(eps (B, C, H, W), mask (B, N) or None)``.

    ``x``: ``(B, C, H, W)`` noisy samples at timestep ``t``; ``context``: text states
    ``(B, L, D)`` of a conditional UNet (None: unconditional); ``uncond_context`` and ``cfg``:
    classifier-free guidance (``cfg != 1`` needs ``uncond_context``)."""
    two = cfg != 1
    if two and (context is None or uncond_context is None):
        raise ValueError("classifier-free guidance (cfg != 1) needs context and uncond_context")
    xin = torch.cat([x, x]) if two else x
    ctx = torch.cat([uncond_context, context]) if two else context
    if sag.scale == 0:
        eps = _eps(unet, xin, t, ctx)
        mask = None
    else:
        layer = sag_layer(unet, sag.layer)
        with capture(unet, layers=[layer], heads="mean", kind="self") as rec:
            eps = _eps(unet, xin, t, ctx)
        mask = token_mask(rec.attentions[0][: len(x)], rec.layouts[0], sag.source, sag.cap, sag.alpha,
                          **sag.options)
    branch = eps.chunk(2)[0] if two else eps            # SAG guides with the unconditional branch
    out = branch + cfg * (eps.chunk(2)[1] - branch) if two else eps
    if mask is None:
        return out, None
    a = _alpha_bar(scheduler, t, x)
    x0 = (x - (1 - a).sqrt() * branch) / a.sqrt()
    x_hat = a.sqrt() * blur_in_mask(x0, mask, rec.layouts[0].grid, sag.kernel, sag.sigma) + (1 - a).sqrt() * branch
    eps_blur = _eps(unet, x_hat, t, uncond_context if two else context)
    return out + sag.scale * (branch - eps_blur), mask


# ----------------------------------------------------------------------------- the sampler
@dataclass
class Samples:
    """What :func:`sample` returns. ``x``: ``(B, C, H, W)`` final samples in the model's space
    (pixels in [-1, 1] or latents); ``masked_fraction``: ``(B,)`` masked share of tokens, averaged
    over the steps (zeros without guidance); ``masks``: ``(steps, B, h*w)`` bool when kept."""

    x: torch.Tensor
    masked_fraction: torch.Tensor
    masks: torch.Tensor | None = None


@torch.no_grad()
def sample(unet, scheduler, noise: torch.Tensor, sag: SAG = SAG(), steps: int = 20, context=None,
           uncond_context=None, cfg: float = 1.0, keep_masks: bool = False,
           progress: bool = False) -> Samples:
    """Denoise ``noise`` ``(B, C, H, W)`` with ``scheduler`` (a diffusers scheduler for an
    epsilon-predicting UNet; a copy is made) in ``steps`` steps, with self-attention guidance.

    With a deterministic scheduler (DDIM, eta = 0) a sample depends only on its own noise."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError("SAG here needs an epsilon-predicting model (prediction_type='epsilon')")
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    masks = []
    for t in progress_bar(sched.timesteps, desc="sag", disable=not progress):
        xin = sched.scale_model_input(x, t)
        eps, mask = guided_eps(unet, sched, xin, t, sag, context, uncond_context, cfg)
        if mask is not None:
            masks.append(mask.cpu())
        x = sched.step(eps, t, x).prev_sample
    if not masks:
        return Samples(x, torch.zeros(len(x)))
    m = torch.stack(masks)
    return Samples(x, m.float().mean((0, 2)), m if keep_masks else None)


@torch.no_grad()
def trajectory_masks(unet, scheduler, noise: torch.Tensor, sources=("column_sum", "tokenrank"),
                     caps=(None, 0.4), steps: int = 20, layer: str = "decoder",
                     alpha: float = DEFAULT_ALPHA, context=None) -> tuple[dict, tuple[int, int], torch.Tensor,
                                                                          torch.Tensor]:
    """The masks each source would give along one unguided trajectory of ``noise`` ``(B, C, H, W)``
    (``context``: text states of a conditional UNet).

    Returns ``({name: (steps, B, h, w) bool}, grid, the final samples (B, C, H, W), the predicted
    clean images x0 of every step (steps, B, C, H, W))``: x0 is what SAG blurs inside the mask.
    ``caps``: one cap per source; a name is the source, with ``"@cap"`` when it has a cap (e.g.
    ``"tokenrank@0.4"``), so one source may appear with several caps."""
    if len(caps) != len(sources):
        raise ValueError(f"one cap per source: {len(sources)} sources, {len(caps)} caps")
    names = [s if c is None else f"{s}@{c:g}" for s, c in zip(sources, caps)]
    if len(set(names)) != len(names):
        raise ValueError(f"each (source, cap) must appear once, got {names}")
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    x, out, x0s = noise * sched.init_noise_sigma, {n: [] for n in names}, []
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        with capture(unet, layers=[sag_layer(unet, layer)], heads="mean", kind="self") as rec:
            eps = _eps(unet, xin, t, context)
        grid = rec.layouts[0].grid
        for n, s, c in zip(names, sources, caps):
            out[n].append(token_mask(rec.attentions[0], rec.layouts[0], s, c, alpha).reshape(-1, *grid))
        a = _alpha_bar(sched, t, xin)
        x0s.append((xin - (1 - a).sqrt() * eps) / a.sqrt())
        x = sched.step(eps, t, x).prev_sample
    return {n: torch.stack(v) for n, v in out.items()}, grid, x, torch.stack(x0s)
