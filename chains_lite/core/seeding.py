"""Randomness per item: an item's seed, and so its noise, depends on the run's seed and the
item's index alone, never on the batch, order or process it is computed in.

Every chapter that draws per-item noise (FLUX's noising, DiffSeg's, SAG's initial latents) and
every random score of a dataset-scale run (:mod:`chains_lite.experiments.runner`) goes through
:func:`item_seed`, so a run split over batches or GPUs gives the one-process result.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch


def item_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` in a run seeded with ``seed``: a 63-bit int from
    ``numpy.random.SeedSequence([seed, index])`` (distinct streams for distinct pairs; the same
    on every process, in every order)."""
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seeded_noise(shape: Sequence[int], seeds: Iterable[int]) -> torch.Tensor:
    """``(len(seeds), *shape)`` standard normal noise, item ``b``'s from a generator seeded ``seeds[b]``."""
    out = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(out) if out else torch.empty(0, *shape)


def item_noise(shape: Sequence[int], indices: Iterable[int], seed: int = 0) -> torch.Tensor:
    """``(len(indices), *shape)`` standard normal noise, item ``i``'s drawn from its own seed
    :func:`item_seed` ``(seed, i)``: an item gets the same noise in any batch, order or process."""
    return seeded_noise(shape, [item_seed(seed, i) for i in indices])
