"""ShapeWorld: a synthetic image world with exact ground truth.

Every image holds 1-3 flat-coloured shapes on a plain, noisy, striped or textured background.
The pixels and the masks come from the same rasterisation (a pixel belongs to an object when
its centre lies inside the shape, and the object drawn last wins), so masks are exact.

    batch = shapeworld(8, seed=0, split="train")
    batch.images   # (8, 3, 64, 64) float32 in [0, 1]
    batch.masks    # (8, 64, 64) int64: 0 = background, k = k-th object (largest first)
    batch.labels   # (8,) int64: index in CLASS_NAMES of the largest visible object
    batch.captions # ["a red star and a blue circle on stripes", ...]

Image ``i`` of ``(split, seed)`` depends only on ``(split, seed, i)``: ``shapeworld(10)[:5]``
equals ``shapeworld(5)``. The splits use disjoint seed streams.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

CLASS_NAMES = ["circle", "square", "triangle", "star", "cross", "heart"]
COLORS = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.88, 0.12),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.05),
}
COLOR_NAMES = list(COLORS)
BACKGROUNDS = ["plain", "noise", "stripes", "texture"]
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZE = 64
# The largest visible object is at least this many times larger (in pixels) than the next one,
# so `labels` is unambiguous.
MIN_AREA_RATIO = 1.5


@dataclass
class ShapeBatch:
    """A batch of ShapeWorld images with their ground truth (see the module docstring)."""

    images: torch.Tensor          # (n, 3, H, W) float32 in [0, 1]
    masks: torch.Tensor           # (n, H, W) int64, 0 = background, k = k-th object
    labels: torch.Tensor          # (n,) int64, class of the largest visible object
    shapes: list[list[str]]       # per image, object shape names, largest first (mask ids 1..k)
    colors: list[list[str]]       # per image, object colour names, same order
    backgrounds: list[str]        # per image, one of BACKGROUNDS
    captions: list[str]
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, idx) -> "ShapeBatch":
        """Slice or index-list a batch (``batch[:4]``, ``batch[[0, 3]]``)."""
        if isinstance(idx, int):
            idx = [idx]
        ids = list(range(len(self)))[idx] if isinstance(idx, slice) else list(idx)
        t = torch.as_tensor(ids, dtype=torch.long)
        pick = lambda xs: [xs[i] for i in ids]  # noqa: E731
        return ShapeBatch(self.images[t], self.masks[t], self.labels[t], pick(self.shapes),
                          pick(self.colors), pick(self.backgrounds), pick(self.captions),
                          list(self.class_names))

    def object_mask(self, i: int, k: int = 1) -> torch.Tensor:
        """``(H, W)`` bool mask of object ``k`` (1 = largest) in image ``i``."""
        return self.masks[i] == k

    def class_masks(self) -> torch.Tensor:
        """``(n, H, W)`` int64 semantic labels: 0 = background, ``1 + CLASS_NAMES index`` = the
        shape class of the object covering the pixel (``len(CLASS_NAMES) + 1`` classes)."""
        out = torch.zeros_like(self.masks)
        for i, shapes in enumerate(self.shapes):
            for k, name in enumerate(shapes, start=1):
                out[i][self.masks[i] == k] = 1 + self.class_names.index(name)
        return out

    def to(self, device) -> "ShapeBatch":
        self.images, self.masks, self.labels = (x.to(device) for x in (self.images, self.masks, self.labels))
        return self


# ----------------------------------------------------------------------------- shapes
# Each shape is an implicit test on centred, rotated, radius-normalised coordinates (u, v):
# inside(u, v) is True where the pixel centre lies inside a shape of "radius" 1.

def _polygon(u, v, verts):
    """Inside test for a convex polygon given counter-clockwise vertices."""
    inside = np.ones_like(u, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, np.roll(verts, -1, axis=0)):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _regular(k, r=1.0, phase=np.pi / 2):
    a = phase + 2 * np.pi * np.arange(k) / k
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _star(u, v):
    # Union of the inner pentagon and five triangles to the outer points.
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, np.pi / 2 + np.pi / 5)
    inside = _polygon(u, v, inner)
    for j in range(5):
        inside |= _polygon(u, v, np.stack([inner[j - 1], outer[j], inner[j]]))
    return inside


def _heart(u, v):
    x, y = 1.15 * u, 1.15 * v + 0.15
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


_SHAPES = {
    "circle": lambda u, v: u**2 + v**2 <= 0.92,
    "square": lambda u, v: (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8),
    "triangle": lambda u, v: _polygon(u, v, _regular(3, 1.1, np.pi / 2) + [0, -0.2]),
    "star": _star,
    "cross": lambda u, v: ((np.abs(u) <= 0.9) & (np.abs(v) <= 0.3)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.9)),
    "heart": _heart,
}
# Shapes drawn upright (a heart or a triangle upside down is still a heart, but keep them readable).
_MAX_TILT = {"circle": 0.0, "square": np.pi / 4, "triangle": 0.35, "star": np.pi / 5,
             "cross": np.pi / 4, "heart": 0.35}


def _rasterise(name, size, cx, cy, r, theta):
    """Bool (size, size) mask of shape ``name`` centred at (cx, cy) pixels with radius r."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = (xs - cx) / r, (cy - ys) / r  # v points up
    c, s = np.cos(theta), np.sin(theta)
    return _SHAPES[name](c * dx + s * dy, -s * dx + c * dy)


# ----------------------------------------------------------------------------- backgrounds

def _background(kind, size, rng):
    """(3, size, size) float background: muted colours, so the saturated objects stand out."""
    base = rng.uniform(0.25, 0.6) + rng.uniform(-0.08, 0.08, size=3)
    img = np.broadcast_to(base[:, None, None], (3, size, size)).copy()
    ys, xs = np.mgrid[0:size, 0:size] / size
    if kind == "noise":
        img += rng.normal(0, 0.08, size=(1, size, size))
    elif kind == "stripes":
        a, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.2)
        phase = (np.cos(a) * xs + np.sin(a) * ys) / period
        img += np.where((phase % 1.0) < 0.5, 0.12, -0.12)[None]
    elif kind == "texture":
        # Smooth blobs: a sum of a few random low-frequency waves.
        t = np.zeros((size, size))
        for _ in range(6):
            f = rng.uniform(2, 7, size=2) * rng.choice([-1, 1], size=2)
            t += np.sin(2 * np.pi * (f[0] * xs + f[1] * ys) + rng.uniform(0, 2 * np.pi))
        img += 0.05 * t[None]
    return img


# ----------------------------------------------------------------------------- one image

def _draw(rng, size):
    """One image: returns (image (3,H,W), mask (H,W), shapes, colors, background)."""
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    n_obj = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    while True:  # rejection: the largest visible object must clearly be the largest
        names = [CLASS_NAMES[i] for i in rng.integers(len(CLASS_NAMES), size=n_obj)]
        colors = [COLOR_NAMES[i] for i in rng.choice(len(COLOR_NAMES), size=n_obj, replace=False)]
        r0 = rng.uniform(0.2, 0.3) * size
        radii = [r0] + list(rng.uniform(0.3, 0.65, size=n_obj - 1) * r0)
        mask = np.zeros((size, size), dtype=np.int64)
        for k, (name, r) in enumerate(zip(names, radii), start=1):
            cx, cy = rng.uniform(r, size - r, size=2)
            tilt = rng.uniform(-_MAX_TILT[name], _MAX_TILT[name])
            mask[_rasterise(name, size, cx, cy, r, tilt)] = k  # smaller objects on top
        areas = np.bincount(mask.ravel(), minlength=n_obj + 1)[1:]
        if areas.min() >= 6 and (n_obj == 1 or areas[0] >= MIN_AREA_RATIO * areas[1:].max()):
            break
    img = _background(bg, size, rng)
    for k, c in enumerate(colors, start=1):
        rgb = np.clip(np.array(COLORS[c]) + rng.uniform(-0.05, 0.05, size=3), 0, 1)
        img[:, mask == k] = rgb[:, None]
    return np.clip(img, 0, 1).astype(np.float32), mask, names, colors, bg


def caption(shapes, colors, background) -> str:
    """'a red star and an orange circle on stripes' (objects largest first)."""
    objs = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for s, c in zip(shapes, colors)]
    body = objs[0] if len(objs) == 1 else ", ".join(objs[:-1]) + " and " + objs[-1]
    return f"{body} on {background}"


def shapeworld(n: int, seed: int = 0, split: str = "train", size: int = DEFAULT_SIZE) -> ShapeBatch:
    """Generate ``n`` ShapeWorld images deterministically.

    Args:
        n: number of images.
        seed: seed of the stream; image ``i`` depends only on ``(split, seed, i)``.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint seed streams).
        size: image side H = W in pixels (default 64).

    Returns:
        :class:`ShapeBatch` with ``images`` ``(n, 3, size, size)``, ``masks`` ``(n, size, size)``,
        ``labels`` ``(n,)`` and per-image ``shapes``, ``colors``, ``backgrounds``, ``captions``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    imgs, masks, shapes, colors, bgs = [], [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([SPLITS[split], seed, i])
        im, m, s, c, b = _draw(rng, size)
        imgs.append(im), masks.append(m), shapes.append(s), colors.append(c), bgs.append(b)
    labels = [CLASS_NAMES.index(s[0]) for s in shapes]
    return ShapeBatch(
        images=torch.from_numpy(np.stack(imgs)) if n else torch.zeros(0, 3, size, size),
        masks=torch.from_numpy(np.stack(masks)) if n else torch.zeros(0, size, size, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        shapes=shapes, colors=colors, backgrounds=bgs,
        captions=[caption(s, c, b) for s, c, b in zip(shapes, colors, bgs)],
    )
