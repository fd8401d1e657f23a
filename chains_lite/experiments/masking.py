"""Chapter 6's tables: masking curves of a dataset as per-image records (for
:func:`chains_lite.experiments.runner.run`), their AUC beside the paper's Table 4, and linear probes
over seeds (Tables 5-6).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..methods.masking import FRACTIONS, STRATEGIES, batch_hits, check_fractions, default_layers, normalized_auc
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


def auc_table(curves: dict) -> dict:
    """``{strategy: normalized AUC}`` for the output of :func:`~chains_lite.methods.masking.masking_curves`."""
    skip = {"clean_accuracy", "fractions", "layers", "n_images"}
    return {s: normalized_auc(curves["fractions"], acc, curves["clean_accuracy"])
            for s, acc in curves.items() if s not in skip}


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
