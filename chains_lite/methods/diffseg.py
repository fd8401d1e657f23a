"""DiffSeg: unsupervised segmentation from a diffusion UNet's self-attention, with uniform or
TokenRank anchors (Tian et al., CVPR 2024; paper Sec. 5.4, App. A.3, Table 3).

    attns, grids = self_attention(unet, x0, scheduler)     # one forward pass, every layer
    A = aggregate(attns, grids)                            # (B, S*S, S*S): one chain per image
                                                           # (image_chains: both)
    seg = segment(A[0], image_size=512, strategy="tokenrank")
    seg.labels                                             # (512, 512) segment ids

0. **Capture** (:func:`self_attention`). DiffSeg's protocol (``protocol="clean"``, the default):
   the UNet gets the *clean* input ``x0`` (SD: the VAE latent) with the embedding of timestep 300
   and the empty prompt; no noise is added. ``protocol="noised"`` instead noises ``x0`` to that
   timestep with the scheduler (``q(x_t | x_0)``), with noise seeded per image in
   :func:`image_chains`.
1. **Aggregation** (:func:`aggregate`). Each layer's self-attention (heads averaged) is a chain
   on its own token grid. Layers of one resolution are averaged; each resolution's attention maps
   (rows) are upsampled bilinearly to the finest grid ``S x S`` and renormalised, and each query
   is repeated over the fine tokens it covers; the resolutions are summed with weights
   proportional to their side (DiffSeg's "proportional aggregation"). Rows still sum to 1: the
   aggregate is again a Markov chain.
2. **Anchors** (:func:`anchors`). ``"uniform"``: DiffSeg's grid of ``per_side x per_side``
   tokens (16 x 16 on SD's 64 x 64). ``"tokenrank"`` (the paper) or any name of
   :mod:`chains_lite.core.scores`: tokens in descending score, each kept only if it lies at least
   ``min_distance`` token units from every anchor already kept, then, if too few were kept, the
   best-scored remaining tokens by score alone; as many anchors as the uniform grid has.
3. **Merging** (:func:`merge`). Distances are DiffSeg's symmetric KL,
   ``(KL(x||y) + KL(y||x)) / 2``. First round: each anchor's map becomes the mean of every
   token's map within ``threshold`` of it (the result does not depend on the order of the
   anchors). Later rounds: in order, each map not yet absorbed absorbs every map within
   ``threshold`` and is replaced by their mean (greedy: the order matters when clusters chain).
4. **Non-maximum suppression** (:func:`nms`): merged maps upsampled bilinearly to the image,
   each pixel takes the index of its largest map.

The aggregate is dense (SD1.5: 4096 x 4096 in float32, 64 MB per image). Layers may come as
dense ``(B, H, n, n)`` tensors or as matrix-free chains (``capture(..., store="qk")``); a
matrix-free layer is made dense only after its heads are averaged, one layer at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..capture import capture
from ..core.layout import TokenLayout
from ..core.numerics import is_lazy
from ..core.scores import NAMES as SCORE_NAMES
from ..core.scores import token_scores
from ..core.seeding import item_noise

#: Anchor strategies: DiffSeg's uniform grid, or tokens ranked by a score of the registry.
STRATEGIES = ("uniform",) + SCORE_NAMES
DISTANCES = ("euclidean", "chebyshev")
#: DiffSeg's KL thresholds (its benchmark notebook): merging rounds use the same value.
KL_THRESHOLD = {"coco-stuff": 1.1, "cityscapes": 0.9}
#: Lite mode (``shapes-unet``, 16 x 16 tokens): the threshold that scored best for the uniform grid
#: on ShapeWorld validation images (``benchmarks/diffseg.py --sweep``); a 256-token chain's
#: distances are on another scale than SD's 4096-token ones.
LITE_THRESHOLD = 0.05
ITERATIONS = 3
#: The timestep (of 1000) whose embedding the UNet gets in DiffSeg's one forward pass.
TIMESTEP = 300
#: What the UNet sees: ``"clean"`` (DiffSeg: ``x0`` itself at :data:`TIMESTEP`'s embedding) or
#: ``"noised"`` (``x0`` noised to that timestep by the scheduler).
PROTOCOLS = ("clean", "noised")


# ----------------------------------------------------------------------------- capture
@torch.no_grad()
def self_attention(unet, x0: torch.Tensor, scheduler=None, timestep: int = TIMESTEP, cond: dict | None = None,
                   generator: torch.Generator | None = None, store: str = "probs",
                   noise: torch.Tensor | None = None, protocol: str = "clean"):
    """Record every self-attention layer of a diffusers UNet in one forward pass over model inputs
    ``x0`` ``(B, C, h, w)`` at ``timestep``.

    ``protocol="clean"`` (DiffSeg's): the UNet sees ``x0`` itself with the timestep's embedding;
    ``scheduler``, ``generator`` and ``noise`` are not used. ``protocol="noised"``: the UNet sees
    ``scheduler.add_noise(x0, noise, timestep)``, ``noise`` ``(B, C, h, w)`` (default: drawn from
    ``generator``). ``cond``: extra keyword arguments of the UNet call (SD: ``encoder_hidden_states``
    of the empty prompt). ``store="probs"`` records head-averaged probabilities ``(B, n, n)`` per
    layer; ``"qk"`` records matrix-free chains ``(B, H, n, n)`` (for layers too large to hold per head).
    Returns ``(attentions, grids)``: per layer, its chain and its token grid ``(h, w)``.
    """
    if store not in ("probs", "qk"):
        raise ValueError(f"store must be 'probs' or 'qk', got {store!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    t = torch.full((len(x0),), int(timestep), device=x0.device, dtype=torch.long)
    if protocol == "noised":
        if scheduler is None:
            raise ValueError("protocol='noised' needs the scheduler that noises x0")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator)
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        xt = scheduler.add_noise(x0, noise.to(x0.device, x0.dtype), t)
    else:
        xt = x0
    heads = "mean" if store == "probs" else "all"
    with capture(unet, kind="self", heads=heads, store=store) as rec:
        unet(xt, t, **(cond or {}))
    attns = [a[:, 0] for a in rec.attentions] if store == "probs" else rec.lazy()
    return attns, [layout.grid for layout in rec.layouts]


@torch.no_grad()
def image_chains(unet, scheduler, x0: torch.Tensor, indices, seed: int = 0, timestep: int = TIMESTEP,
                 cond: dict | None = None, protocol: str = "clean"):
    """The aggregated chains ``(B, S*S, S*S)`` of inputs ``x0`` ``(B, C, h, w)`` whose images are
    items ``indices`` of a dataset, by :func:`self_attention` under ``protocol``. With
    ``"noised"``, each image gets :func:`~chains_lite.core.seeding.item_noise` of its own index and
    ``seed``, so an image's chain does not depend on its batch. Returns ``(chains, grids)`` (grids
    per layer)."""
    noise = item_noise(x0.shape[1:], indices, seed) if protocol == "noised" else None
    attns, grids = self_attention(unet, x0, scheduler, timestep, cond, noise=noise, protocol=protocol)
    return aggregate(attns, grids), grids


# ----------------------------------------------------------------------------- aggregation
def _head_mean(A) -> torch.Tensor:
    """``(B, n, n)`` or ``(B, H, n, n)`` (dense or matrix-free) -> dense ``(B, n, n)`` float32."""
    if is_lazy(A):
        if A.ndim != 4:
            raise ValueError(f"a matrix-free layer must be (B, H, n, n), got {tuple(A.shape)}")
        b, h = A.shape[:2]
        return A.mix(torch.full((b, h), 1.0 / h, device=A.device), dim=1).dense().float()
    A = torch.as_tensor(A).float()
    if A.ndim == 4:
        A = A.mean(1)
    if A.ndim != 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"each layer must be (B, n, n) or (B, H, n, n), got {tuple(A.shape)}")
    return A


def aggregate(attentions, grids, size: int | None = None) -> torch.Tensor:
    """One chain per image from self-attention at several resolutions (DiffSeg's aggregation).

    attentions: per layer ``(B, n_l, n_l)`` or ``(B, H, n_l, n_l)`` (heads are averaged), dense or
    matrix-free; grids: per layer its square token grid ``(r_l, r_l)`` with ``n_l = r_l^2``.
    size: the side ``S`` of the output grid (default: the finest ``r_l``); every ``r_l`` must
    divide it. Returns ``(B, S*S, S*S)`` float32, row-stochastic, tokens row-major.
    """
    if len(attentions) != len(grids) or not attentions:
        raise ValueError(f"need one grid per layer and at least one layer, got {len(attentions)} "
                         f"layers and {len(grids)} grids")
    by_side: dict[int, list[torch.Tensor]] = {}
    for A, grid in zip(attentions, grids):
        if grid is None or len(grid) != 2 or grid[0] != grid[1]:
            raise ValueError(f"DiffSeg needs square token grids, got {grid}")
        A = _head_mean(A)
        if A.shape[-1] != grid[0] * grid[1]:
            raise ValueError(f"a layer with grid {grid} must have {grid[0] * grid[1]} tokens, got {A.shape[-1]}")
        by_side.setdefault(int(grid[0]), []).append(A)
    size = max(by_side) if size is None else int(size)
    batch = {A.shape[0] for As in by_side.values() for A in As}
    if len(batch) != 1:
        raise ValueError(f"layers disagree on the batch size: {sorted(batch)}")
    out = None
    total = sum(by_side)
    for r, As in sorted(by_side.items()):
        if size % r:
            raise ValueError(f"grid side {r} does not divide the output side {size}")
        f = size // r
        P = torch.stack(As).mean(0)                                  # (B, r*r, r*r)
        b = P.shape[0]
        maps = P.reshape(b * r * r, 1, r, r)
        if f > 1:
            maps = F.interpolate(maps, scale_factor=f, mode="bilinear", align_corners=False)
        maps = maps.reshape(b, r * r, size * size)
        maps = maps / maps.sum(-1, keepdim=True)                     # each map sums to 1 again
        maps = maps.reshape(b, r, r, size * size)
        maps = maps.repeat_interleave(f, 1).repeat_interleave(f, 2)  # queries cover f x f tokens
        term = (r / total) * maps.reshape(b, size * size, size * size)
        out = term if out is None else out + term
    return out


# ----------------------------------------------------------------------------- anchors
def uniform_grid(size: int, per_side: int) -> torch.Tensor:
    """DiffSeg's anchor grid: ``(per_side^2, 2)`` (row, col) tokens of an ``size x size`` grid,
    evenly spaced by ``(size - 1) // (per_side - 1)`` and centred."""
    if not 2 <= per_side <= size:
        raise ValueError(f"per_side must be in [2, size={size}], got {per_side}")
    step = (size - 1) // (per_side - 1)
    start = (size - 1 - step * (per_side - 1)) // 2
    line = start + step * torch.arange(per_side)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], 1)


def _distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances between (row, col) points ``a`` ``(k, 2)`` and ``b`` ``(m, 2)``: ``(k, m)``."""
    d = (a[:, None, :] - b[None, :, :]).abs().float()
    return d.max(-1).values if metric == "chebyshev" else d.pow(2).sum(-1).sqrt()


def spaced_top(score: torch.Tensor, size: int, count: int, min_distance: float,
               metric: str = "euclidean") -> torch.Tensor:
    """The paper's TokenRank grid from any per-token score ``(size*size,)``: ``(count, 2)``
    (row, col) tokens, best first; each kept only if at least ``min_distance`` from every one kept
    before (``metric``: ``"euclidean"`` or ``"chebyshev"`` token units), then filled up to ``count``
    with the best-scored remaining tokens."""
    if metric not in DISTANCES:
        raise ValueError(f"metric must be one of {DISTANCES}, got {metric!r}")
    if score.shape != (size * size,):
        raise ValueError(f"score must be ({size * size},), got {tuple(score.shape)}")
    if not 1 <= count <= size * size:
        raise ValueError(f"count must be in [1, {size * size}], got {count}")
    order = torch.argsort(score.double(), descending=True, stable=True)
    points = torch.stack([order // size, order % size], 1)
    kept: list[int] = []
    for i in range(len(order)):
        if len(kept) == count:
            break
        if not kept or _distance(points[i:i + 1], points[kept], metric).min() >= min_distance:
            kept.append(i)
    taken = set(kept)
    kept += [i for i in range(len(order)) if i not in taken][:count - len(kept)]
    return points[kept]


def anchors(A: torch.Tensor, size: int, strategy: str = "uniform", per_side: int | None = None,
            min_distance: float | None = None, metric: str = "euclidean",
            generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """Anchor tokens ``(K, 2)`` (row, col) of one aggregated chain ``A`` ``(size*size, size*size)``.

    ``per_side``: the uniform grid's side (default ``size // 4``: 16 on SD's 64 x 64 grid), so
    ``K = per_side^2`` for every strategy. ``min_distance``: the spacing rule of score-ranked
    anchors in token units (default ``5 * size / 64``: the paper's 5 units on SD's 64 x 64 grid,
    scaled to this grid). ``options``: passed to the score (e.g. ``alpha`` for TokenRank).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown anchor strategy {strategy!r}; choose from {STRATEGIES}")
    per_side = per_side or max(2, size // 4)
    grid = uniform_grid(size, per_side)
    if strategy == "uniform":
        return grid
    min_distance = 5 * size / 64 if min_distance is None else float(min_distance)
    score = token_scores(A, strategy, TokenLayout(grid=(size, size)), generator, **options)
    return spaced_top(score, size, len(grid), min_distance, metric)


# ----------------------------------------------------------------------------- merging and NMS
def symmetric_kl(X: torch.Tensor, Y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """DiffSeg's distance ``(KL(x||y) + KL(y||x)) / 2`` between the rows of ``X`` ``(k, n)`` and of
    ``Y`` ``(m, n)`` (distributions): ``(k, m)``; entries are clamped to ``eps`` before the log."""
    lx, ly = X.clamp_min(eps).log(), Y.clamp_min(eps).log()
    hx, hy = (X * lx).sum(-1), (Y * ly).sum(-1)
    return (0.5 * (hx[:, None] + hy[None, :] - X @ ly.T - lx @ Y.T)).clamp_min(0)


def _merge_first(A: torch.Tensor, idx: torch.Tensor, threshold: float, block: int = 1024) -> torch.Tensor:
    """Each anchor map -> the mean of every row of ``A`` within ``threshold`` of it."""
    X = A[idx]
    total = torch.zeros_like(X)
    count = torch.zeros(len(idx), 1, dtype=A.dtype, device=A.device)
    for s in range(0, A.shape[0], block):  # rows in blocks: the (K, n) distances, not (K, n, n)
        rows = A[s:s + block]
        near = (symmetric_kl(X, rows) < threshold).to(A.dtype)
        total += near @ rows
        count += near.sum(1, keepdim=True)
    return total / count  # every anchor is within 0 of itself: count >= 1


def _merge_greedy(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """In order, each map not yet absorbed takes the mean of all maps within ``threshold``."""
    near = symmetric_kl(maps, maps) < threshold
    absorbed = torch.zeros(len(maps), dtype=torch.bool, device=maps.device)
    merged = []
    for i in range(len(maps)):
        if absorbed[i]:
            continue
        absorbed |= near[i]
        merged.append(maps[near[i]].mean(0))
    return torch.stack(merged)


def merge(A: torch.Tensor, anchor_tokens: torch.Tensor, size: int, threshold: float = KL_THRESHOLD["coco-stuff"],
          iterations: int = ITERATIONS) -> list[torch.Tensor]:
    """Iterative attention merging from anchors: the maps after each round, ``[(K_1, n), ...]``.

    A: ``(n, n)`` one aggregated chain, ``n = size^2``; anchor_tokens: ``(K, 2)`` (row, col).
    Round 1 averages, per anchor, the maps of all tokens within ``threshold`` (symmetric KL);
    rounds 2..``iterations`` merge the maps greedily among themselves.
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    idx = anchor_tokens[:, 0] * size + anchor_tokens[:, 1]
    history = [_merge_first(A, idx.to(A.device), threshold)]
    for _ in range(iterations - 1):
        history.append(_merge_greedy(history[-1], threshold))
    return history


def nms(maps: torch.Tensor, size: int, image_size: int | tuple[int, int]) -> torch.Tensor:
    """Label map ``(H, W)`` int64: each pixel takes the index of its largest merged map
    (``maps`` ``(K, size*size)``, upsampled bilinearly to ``image_size``)."""
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    up = F.interpolate(maps.reshape(1, -1, size, size).float(), size=image_size, mode="bilinear",
                       align_corners=False)
    return up[0].argmax(0)


# ----------------------------------------------------------------------------- the method
@dataclass
class Segmentation:
    """One image's DiffSeg result: ``labels`` ``(H, W)`` segment ids, the ``anchors`` ``(K, 2)``
    (row, col) on the token grid, and the merged maps after each round (``history``)."""

    labels: torch.Tensor
    anchors: torch.Tensor
    history: list[torch.Tensor] = field(default_factory=list)

    @property
    def n_segments(self) -> int:
        return len(self.history[-1])


def _check_chain(A: torch.Tensor) -> int:
    A = torch.as_tensor(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be one aggregated chain (n, n), got {tuple(A.shape)}")
    size = math.isqrt(A.shape[0])
    if size * size != A.shape[0]:
        raise ValueError(f"A must live on a square token grid, got n = {A.shape[0]}")
    if not torch.isfinite(A).all() or (A < 0).any():
        raise ValueError("A holds NaN, inf or negative entries")
    if not torch.allclose(A.sum(-1), torch.ones((), dtype=A.dtype), atol=1e-4):
        raise ValueError("A's rows must sum to 1 (an aggregated chain)")
    return size


def segment(A: torch.Tensor, image_size: int | tuple[int, int], strategy: str = "uniform",
            threshold: float = KL_THRESHOLD["coco-stuff"], iterations: int = ITERATIONS,
            per_side: int | None = None, min_distance: float | None = None, metric: str = "euclidean",
            generator: torch.Generator | None = None, **options) -> Segmentation:
    """DiffSeg on one aggregated chain ``A`` ``(n, n)`` (``n = S^2``): anchors by ``strategy``
    (see :func:`anchors`), merging (:func:`merge`), NMS to ``image_size``."""
    size = _check_chain(A)
    pts = anchors(A, size, strategy, per_side, min_distance, metric, generator, **options)
    history = merge(A.float(), pts, size, threshold, iterations)
    return Segmentation(nms(history[-1], size, image_size), pts, history)


# ----------------------------------------------------------------------------- evaluation
def segment_images(A: torch.Tensor, image_size, strategies=("uniform", "tokenrank"), **kw) -> dict:
    """:func:`segment` for every chain of ``A`` ``(B, n, n)`` and every anchor strategy:
    ``{strategy: [Segmentation, ...]}`` (``kw``: options of :func:`segment`)."""
    if A.ndim != 3:
        raise ValueError(f"A must be (B, n, n), got {tuple(A.shape)}")
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown anchor strategy {s!r}; choose from {STRATEGIES}")
    return {s: [segment(a, image_size, s, **kw) for a in A] for s in strategies}


