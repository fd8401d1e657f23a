"""Chapter 6's tables: masking curves of a dataset as per-image records (for
:func:`chains_lite.experiments.runner.run`), their AUC beside the paper's Table 4, and linear probes
over seeds (Tables 5-6).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..methods.masking import FRACTIONS, STRATEGIES, batch_hits, check_fractions, default_layers, normalized_auc
from ..core.seeding import item_seed
from ..eval.stats import resample_indices
from ..methods.probing import linear_probe


#: Paper Table 4: AUC (lower = bigger drop) of the full models on ImageNet, per strategy, for
#: (ViT, CLIP, DINOv1, DINOv2).
PAPER_TABLE4 = {"random": (0.79, 0.80, 0.88, 0.89), "center_row": (0.33, 0.47, 0.45, 0.70),
                "column_sum": (0.27, 0.49, 0.47, 0.71), "cls_row": (0.33, 0.53, 0.56, 0.70),
                "tokenrank": (0.26, 0.46, 0.44, 0.64)}


def masking_records(model, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int],
                    classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    strategies: Sequence[str] = STRATEGIES, fractions: Sequence[float] = FRACTIONS,
                    layers: Sequence[int] | None = None, fractions_per_pass: int | None = None) -> list[dict]:
    """Per-image records of :func:`~chains_lite.methods.masking.masking_curves` for :func:`chains_lite.experiments.runner.run`: one
    ``{"clean": 0 or 1, "correct": {strategy: [0 or 1 per fraction]}}`` per image of ``images``
    ``(B, 3, H, W)`` (one batch). ``seeds``: one int per image (see
    :func:`chains_lite.core.seeding.item_seed`); a :data:`~chains_lite.methods.masking.RANDOMIZED` strategy scores image ``b`` with
    its own generator seeded ``seeds[b]``, so its record does not depend on the batch or on the
    other strategies. :func:`merge_masking_records` turns records into curves.
    """
    check_fractions(fractions)
    if len(seeds) != len(images):
        raise ValueError(f"seeds must give one int per image ({len(images)}), got {len(seeds)}")
    layers = default_layers(model) if layers is None else sorted(layers)
    clean, hits = batch_hits(model, images, labels, classify or model, strategies, fractions, layers,
                           fractions_per_pass, seeds=list(seeds))
    return [{"clean": int(clean[b]), "correct": {s: hits[s][:, b].int().tolist() for s in strategies}}
            for b in range(len(images))]


def merge_masking_records(records: list[dict], fractions: Sequence[float], layers: Sequence[int]) -> dict:
    """:func:`~chains_lite.methods.masking.masking_curves`'s dict from the :func:`masking_records` of a whole dataset: the
    accuracies are correct counts summed over images, divided by their number."""
    if not records:
        raise ValueError("no images: records is empty")
    n = len(records)
    out = {"clean_accuracy": sum(r["clean"] for r in records) / n, "fractions": list(fractions),
           "layers": list(layers), "n_images": n}
    for s in records[0]["correct"]:
        out[s] = [sum(r["correct"][s][j] for r in records) / n for j in range(len(fractions))]
    return out


def auc_bootstrap(records: list[dict], fractions: Sequence[float], n_boot: int = 1000,
                  seed: int = 0) -> tuple[dict, dict]:
    """:func:`auc_table` of :func:`masking_records` with its bootstrap over the images.

    Returns ``(point, draws)``: ``{strategy: AUC}`` on all images and ``{strategy: (n_boot,)}``
    on resamples of the images (every strategy on the same resamples, so differences between
    strategies are paired). A resample's AUC divides by that resample's clean accuracy (NaN
    when no image of it is right unmasked).
    """
    check_fractions(fractions)
    if not records:
        raise ValueError("no images: records is empty")
    f = np.asarray(fractions, dtype=float)
    clean = np.array([r["clean"] for r in records], dtype=float)                    # (N,)
    idx = resample_indices(len(records), n_boot, seed)                             # (n_boot, N)

    def auc(acc, clean_acc):  # acc (..., F), clean_acc (...,)
        return np.trapezoid(acc / clean_acc[..., None], f, axis=-1) / (f[-1] - f[0])
    point, draws = {}, {}
    with np.errstate(divide="ignore", invalid="ignore"):  # no image right clean: NaN
        for s in records[0]["correct"]:
            c = np.array([r["correct"][s] for r in records], dtype=float)         # (N, F)
            point[s] = float(auc(c.mean(0), clean.mean()))
            draws[s] = auc(c[idx].mean(1), clean[idx].mean(1))
    return point, draws


def masking_aucs(model, images: torch.Tensor, labels: torch.Tensor,
                 classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 strategies: Sequence[str] = STRATEGIES, fractions: Sequence[float] = FRACTIONS,
                 layers: Sequence[int] | None = None, batch_size: int = 100, seed: int = 0,
                 n_boot: int = 1000) -> tuple[dict, dict]:
    """AUC per strategy with its bootstrap over images: :func:`masking_records` of ``images``
    ``(N, 3, H, W)`` in batches (image ``i`` seeded :func:`~chains_lite.core.seeding.item_seed`
    ``(seed, i)``), then :func:`auc_bootstrap`. Two calls on the same images and ``seed`` resample
    the same images, so their AUCs can be compared pair by pair."""
    records = []
    for i in range(0, len(images), batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        records += masking_records(model, x, y, [item_seed(seed, i + b) for b in range(len(x))],
                                   classify, strategies, fractions, layers)
    return auc_bootstrap(records, fractions, n_boot, seed)


def auc_table(curves: dict) -> dict:
    """``{strategy: normalized AUC}`` for the output of :func:`~chains_lite.methods.masking.masking_curves`."""
    skip = {"clean_accuracy", "fractions", "layers", "n_images"}
    return {s: normalized_auc(curves["fractions"], acc, curves["clean_accuracy"])
            for s, acc in curves.items() if s not in skip}


#: Paper Table 5 (App. B): linear-probe test accuracy (%) on Imagenette, mean ± std over 5 seeds,
#: per visualisation, for (DINOv1, DINOv2, CLIP); ViT-B models, all layers and heads. Keys are
#: the probe methods of :mod:`chains_lite.methods.probing` (the paper's "Rand. Token", "Center
#: Token", "Column Sum", "TokenRank", "CLS Token").
PAPER_TABLE5 = {"random_row": ((67.33, 3.12), (63.32, 6.04), (57.65, 2.66)),
                "center_row": ((66.32, 3.08), (75.34, 1.85), (68.42, 2.66)),
                "column_sum": ((75.64, 2.74), (90.76, 2.21), (73.73, 2.98)),
                "tokenrank": ((77.31, 2.50), (92.73, 1.51), (73.88, 2.86)),
                "cls_row": ((81.53, 2.44), (94.07, 0.97), (72.46, 3.40))}
PAPER_TABLE5_MODELS = ("DINOv1", "DINOv2", "CLIP")
#: Paper Table 6 (App. B): linear-probe accuracy (%) of per-layer TokenRank vectors after mixing
#: the heads, per head weighting, for (CLIP, DINOv1, DINOv2).
PAPER_TABLE6 = {"uniform": (49.07, 53.50, 71.62), "random": (44.07, 47.21, 50.29),
                "lambda2": (49.07, 53.55, 72.36)}
PAPER_TABLE6_MODELS = ("CLIP", "DINOv1", "DINOv2")
#: Paper Table 9 (App. E.1), linear-probing half: one-sided Wilcoxon test of "λ2 weighting beats
#: uniform weighting", (statistic, p-value) per model.
PAPER_TABLE9_PROBING = {"DINOv1": (45.0, 0.002), "DINOv2": (42.0, 0.010), "CLIP": (45.0, 0.002)}


def probe_table(features: dict, labels: dict, seeds: Sequence[int] = range(5), **probe_kw) -> dict:
    """Probe every feature set over seeds.

    features: ``{split: {method: (N, F)}}`` and labels ``{split: (N,)}`` for splits ``train``,
    ``val``, ``test``. Returns ``{method: [test accuracy per seed]}``.
    """
    out = {}
    for m in features["train"]:
        data = {s: (features[s][m], labels[s]) for s in ("train", "val", "test")}
        out[m] = [linear_probe(data["train"], data["val"], data["test"], seed=s, **probe_kw)["test_accuracy"]
                  for s in seeds]
    return out
