"""Attention-like chains with planted structure and known ground truth (chapter 1's controlled case).

Tokens sit on a ``side x side`` grid (row-major). Rectangular *objects* are planted on it; every
other token is background. A *planted* head lets each token attend to a few tokens of its own
object (or of the background), plus a little to a few *hub* tokens that many tokens attend to, plus
a small uniform leak. Its objects are metastable states: a walker stays inside its object for about
``1 / (leak + hub_mass)`` bounces. A *noise* head is the softmax of Gaussian logits at a low
temperature: nearly uniform, so it mixes in a bounce or two (small ``|lambda_2|``).

The attention inside an object is *sparse* (``within`` tokens per row, default 3): one row, the
single bounce from a token, reaches only those few tokens of its object, while a few bounces
spread over the whole object before the leak carries them out. That is the gap between one step
and multi-bounce attention that chapter 1 measures; its ground truth is :attr:`PlantedChains.objects`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .chain import bounce

#: Default objects: ``(row, col, height, width)`` rectangles on a 12 x 12 grid.
OBJECTS = ((1, 1, 4, 5), (7, 1, 4, 4), (2, 7, 6, 4))


@dataclass(frozen=True)
class PlantedChains:
    """Heads with planted structure and their ground truth.

    A: ``(heads, n, n)`` float32, rows summing to 1; ``n = side * side``.
    objects: ``(n,)`` long, 0 for background and ``k`` for a token of object ``k`` (1-based).
    hubs: ``(hubs,)`` long, the hub tokens (all in the background).
    planted: ``(heads,)`` bool, True for a planted head, False for a noise head.
    """

    A: torch.Tensor
    side: int
    objects: torch.Tensor
    hubs: torch.Tensor
    planted: torch.Tensor

    @property
    def n(self) -> int:
        return self.side * self.side

    def mask(self, k: int) -> torch.Tensor:
        """``(n,)`` bool: the tokens of object ``k`` (1-based; 0 is the background)."""
        if not 0 <= k <= int(self.objects.max()):
            raise ValueError(f"object {k} does not exist; objects are 1..{int(self.objects.max())}")
        return self.objects == k

    def seed_maps(self, M: torch.Tensor, steps: int):
        """The maps from every object token after 1, ..., ``steps`` incoming bounces, with their
        ground truth.

        M: ``(n, n)`` right-stochastic (one head, or a mixture of :attr:`A`'s heads). Returns
        ``maps`` ``(steps, t, side, side)`` float32: ``maps[k - 1, s]`` is ``e_i^T M^k`` (Eq. 4,
        :func:`chains_lite.core.chain.bounce`) for the ``s``-th of the ``t`` object tokens ``i``;
        and ``truth`` ``(t, side, side)`` bool, the object each of those tokens belongs to.
        """
        if M.shape != (self.n, self.n):
            raise ValueError(f"M must be one chain of shape ({self.n}, {self.n}), got {tuple(M.shape)}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        tokens = torch.nonzero(self.objects > 0).flatten()
        starts = torch.eye(self.n, dtype=M.dtype)[tokens]                      # (t, n) one-hot
        maps = bounce(M, starts, steps, return_all=True).transpose(0, 1)       # (steps, t, n)
        truth = self.objects[tokens, None] == self.objects[None, :]
        return (maps.float().reshape(steps, -1, self.side, self.side),
                truth.view(-1, self.side, self.side))


def object_labels(side: int, objects=OBJECTS) -> torch.Tensor:
    """``(side * side,)`` long: 0 for background, ``k`` for the tokens of the ``k``-th rectangle
    ``(row, col, height, width)`` of ``objects``. Raises ``ValueError`` if a rectangle is empty,
    leaves the grid or overlaps another."""
    grid = torch.zeros(side, side, dtype=torch.long)
    for k, (r, c, h, w) in enumerate(objects, start=1):
        if h < 1 or w < 1 or r < 0 or c < 0 or r + h > side or c + w > side:
            raise ValueError(f"object {k} {(r, c, h, w)} is empty or leaves the {side} x {side} grid")
        if (grid[r:r + h, c:c + w] > 0).any():
            raise ValueError(f"object {k} {(r, c, h, w)} overlaps another object")
        grid[r:r + h, c:c + w] = k
    return grid.flatten()


def planted_chains(side: int = 12, objects=OBJECTS, hubs: int = 3, planted_heads: int = 4,
                   noise_heads: int = 4, within: int = 3, leak: float = 0.04, hub_mass: float = 0.04,
                   background_hub_mass: float = 0.3, noise_temperature: float = 0.5,
                   seed: int = 0) -> PlantedChains:
    """Planted heads then noise heads, with their ground truth (see the module docstring).

    A planted head's row ``i``: ``within`` distinct tokens of ``i``'s own object (or of the
    background for a background token), never ``i`` itself, share ``1 - leak - m`` with random
    weights; the ``hubs`` hub tokens share ``m`` (``hub_mass`` for object tokens,
    ``background_hub_mass`` for background tokens, hubs included); ``leak`` is spread uniformly
    over all ``n`` tokens, so every entry is positive. A noise head is
    ``softmax(noise_temperature * z)`` with ``z`` standard normal ``(n, n)``.
    Deterministic given ``seed``. Returns a :class:`PlantedChains` with ``A`` of shape
    ``(planted_heads + noise_heads, n, n)``.
    """
    labels = object_labels(side, objects)
    n = side * side
    background = torch.nonzero(labels == 0).flatten()
    sizes = torch.bincount(labels)
    if not 1 <= within < int(sizes.min()):
        raise ValueError(f"within must be in [1, smallest group size - 1 = {int(sizes.min()) - 1}], got {within}")
    if not 0 <= hubs <= len(background):
        raise ValueError(f"hubs must be in [0, {len(background)}] (the background tokens), got {hubs}")
    if planted_heads < 0 or noise_heads < 0 or planted_heads + noise_heads < 1:
        raise ValueError(f"need at least one head, got {planted_heads} planted and {noise_heads} noise")
    masses = (leak, hub_mass, background_hub_mass)
    if min(masses) < 0 or leak + max(hub_mass, background_hub_mass) >= 1 or (hubs == 0 and max(masses[1:]) > 0):
        raise ValueError(f"leak, hub_mass, background_hub_mass must be >= 0 with leak + hub mass < 1 "
                         f"(and 0 hub mass without hubs), got {masses}")
    g = torch.Generator().manual_seed(seed)
    hub_ids = background[torch.randperm(len(background), generator=g)[:hubs]].sort().values
    heads = [_planted_head(labels, hub_ids, within, leak, hub_mass, background_hub_mass, g)
             for _ in range(planted_heads)]
    heads += [torch.softmax(noise_temperature * torch.randn(n, n, generator=g, dtype=torch.float64), -1)
              for _ in range(noise_heads)]
    planted = torch.tensor([True] * planted_heads + [False] * noise_heads)
    return PlantedChains(torch.stack(heads).float(), side, labels, hub_ids, planted)


def _planted_head(labels, hub_ids, within, leak, hub_mass, background_hub_mass, g) -> torch.Tensor:
    n = len(labels)
    A = torch.full((n, n), leak / n, dtype=torch.float64)
    for i in range(n):
        group = torch.nonzero(labels == labels[i]).flatten()
        group = group[group != i]
        picks = group[torch.randperm(len(group), generator=g)[:within]]
        w = 0.5 + torch.rand(within, generator=g, dtype=torch.float64)
        m = hub_mass if labels[i] > 0 else background_hub_mass
        A[i, picks] += (1 - leak - m) * w / w.sum()
        if len(hub_ids):
            A[i, hub_ids] += m / len(hub_ids)
    return A
