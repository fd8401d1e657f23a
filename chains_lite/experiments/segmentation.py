"""Chapter 3's tables: multi-bounce segmentation scored on a dataset (paper Table 1, supp. Table 7).

Maps come from :func:`chains_lite.methods.segmentation.word_maps`; :func:`evaluate` scores
settings with :func:`chains_lite.eval.metrics.binary_segmentation` (the Chefer et al. protocol),
:func:`segmentation_records` gives per-image counts for :func:`chains_lite.experiments.runner.run`,
:func:`table` prints measured numbers beside the paper's.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from ..core.progress import progress_bar

from ..eval.metrics import binary_segmentation, merge_segmentation_counts, segmentation_counts
from ..methods.segmentation import (PAPER_METHOD, Setting, encode_inputs, noised_attention, start_vectors,
                                    word_map, word_maps, word_tokens)

#: Supplementary Table 7 (and Table 1) of the paper: its rows as settings, with the paper's numbers
#: (FLUX.1-schnell on ImageNet-Segmentation, 4,276 images; Acc, mIoU, mAP in percent).
TABLE7 = {
    "row-select (n=1)": (Setting("row_select"), (73.96, 54.65, 82.64)),
    "column-select (n=1)": (Setting("column_select"), (80.55, 64.02, 87.20)),
    "single-channel": (Setting(PAPER_METHOD, blocks="single"), (69.63, 51.73, 80.50)),
    "incoming (n=2)": (Setting("incoming_2"), (83.73, 69.58, 93.68)),
    "incoming (n=3)": (Setting("incoming_3"), (82.93, 68.81, 94.01)),
    "outgoing (n=3)": (Setting("outgoing_3"), (79.25, 63.32, 89.80)),
    "w/o λ2": (Setting(PAPER_METHOD, heads="uniform"), (84.00, 70.02, 94.28)),
    "outgoing (n=2)* (ours)": (Setting(PAPER_METHOD), (84.12, 70.20, 94.29)),
}


#: Table 1's ConceptAttention row, for reference (its mIoU is Acc / (2 - Acc), see metrics).
CONCEPT_ATTENTION = (83.07, 71.04, 90.45)


def evaluate(loaded, images: torch.Tensor, masks: torch.Tensor, captions: list[str],
             words: list[str], settings=(Setting(),), batch_size: int = 16, size: int = 224,
             resize: str = "nearest", progress: bool = True, keep_maps: bool = False, **kw) -> dict:
    """Score settings on a dataset with :func:`binary_segmentation` (Chefer et al. protocol).

    masks: ``(N, H', W')`` ground truth, nonzero = the word's object. ``kw``: for
    :func:`word_maps` (``t``, ``steps``, ``layers``, ``seed``, ``store``, ``encoder``). Returns
    ``{setting.name: {"acc", "miou", "map", "miou_acc_2_minus_acc", "n"}}`` plus ``"time_s"``
    and, with ``keep_maps``, ``"maps"``: ``{setting.name: (N, h, w)}``.
    """
    settings = [Setting.parse(s) if isinstance(s, str) else s for s in settings]
    t0 = time.perf_counter()
    maps = {s.name: [] for s in settings}
    for i in progress_bar(range(0, len(images), batch_size), desc="segmentation", disable=not progress):
        sl = slice(i, i + batch_size)
        got = word_maps(loaded, images[sl], captions[sl], words[sl], settings, **kw)
        for k, v in got.items():
            maps[k].append(v.cpu())
    maps = {k: torch.cat(v) for k, v in maps.items()}
    out = {k: binary_segmentation(v, masks, size=size, resize=resize) for k, v in maps.items()}
    out["time_s"] = time.perf_counter() - t0
    if keep_maps:
        out["maps"] = maps
    return out


def segmentation_records(loaded, images: torch.Tensor, masks: torch.Tensor, captions: list[str],
                         words: list[str], settings=(Setting(),), size: int = 224,
                         resize: str = "nearest", **kw) -> list[dict]:
    """Per-image records of :func:`evaluate` for :func:`chains_lite.experiments.runner.run`: one
    ``{setting.name: segmentation_counts}`` per image of one batch (see
    :func:`chains_lite.eval.metrics.segmentation_counts`). ``kw``: for :func:`word_maps`; pass
    ``seed`` as one int per image (:func:`chains_lite.core.seeding.item_seed`) so an image's noise
    does not depend on its batch. :func:`merge_records` gives :func:`evaluate`'s scores.
    """
    maps = word_maps(loaded, images, captions, words, settings, **kw)
    per = {k: segmentation_counts(v.cpu(), masks, size=size, resize=resize) for k, v in maps.items()}
    return [{k: per[k][b] for k in per} for b in range(len(images))]


def evaluate_batches(loaded, batches, settings=(Setting(),), size: int = 224, resize: str = "nearest",
                     progress: bool = True, total: int | None = None, **kw) -> dict:
    """:func:`evaluate`'s scores over a stream of batches, holding one batch at a time.

    batches: an iterable of ``(images, masks, captions, words)`` (e.g. built from
    :meth:`chains_lite.zoo.datasets.ImageNetSegmentation.batches`); ``total``: the
    number of batches, for the progress bar. ``kw``: for :func:`word_maps`. Returns
    ``{setting.name: {"acc", "miou", "map", "miou_acc_2_minus_acc", "n"}, "time_s": ...}``.
    """
    settings = [Setting.parse(s) if isinstance(s, str) else s for s in settings]
    t0, records = time.perf_counter(), []
    for images, masks, captions, words in progress_bar(batches, total=total, desc="segmentation",
                                               disable=not progress):
        records += segmentation_records(loaded, images, masks, captions, words, settings, size=size,
                                        resize=resize, **kw)
    out = merge_records(records)
    out["time_s"] = time.perf_counter() - t0
    return out


def merge_records(records: list[dict]) -> dict:
    """``{setting.name: binary_segmentation dict}`` from the :func:`segmentation_records` of a
    whole dataset, in image order (confusion counts summed, per-image APs averaged)."""
    if not records:
        raise ValueError("no images: records is empty")
    return {k: merge_segmentation_counts([r[k] for r in records]) for k in records[0]}


def class_word_task(batch):
    """A ShapeWorld batch as a segmentation task: the class word of each image's largest shape,
    and as ground truth the mask of every object of that class (the caption's word names all of
    them). Returns ``(batch, masks (n, H, W) bool, words)``."""
    words = [s[0] for s in batch.shapes]
    masks = torch.stack([sum(batch.masks[i] == k + 1 for k, s in enumerate(shapes) if s == words[i])
                         for i, shapes in enumerate(batch.shapes)]).bool()
    return batch, masks, words


def word_object_scores(loaded, batch, kind: str = "shape", setting=Setting(), n_objects: int = 2,
                       progress: bool = True, encoder: Callable | None = None, **kw) -> dict:
    """Part segmentation on ShapeWorld, measured: for every image of ``batch`` with at least
    ``n_objects`` objects of distinct shapes, the map of each object's word (its shape name, or its
    colour name with ``kind="color"``) against that object's mask alone. ``encoder``, ``kw``: as
    for :func:`word_maps` (``kw`` goes to :func:`~chains_lite.methods.segmentation.noised_attention`).

    Returns :func:`binary_segmentation` over all (word, object) pairs, at the image resolution.
    """
    if kind not in ("shape", "color"):
        raise ValueError(f"kind must be 'shape' or 'color', got {kind!r}")
    setting = Setting.parse(setting) if isinstance(setting, str) else setting
    maps, gts = [], []
    keep = [i for i, s in enumerate(batch.shapes) if len(s) >= n_objects and len(set(s)) == len(s)]
    for i in progress_bar(keep, desc=f"{kind} words", disable=not progress):
        words = batch.shapes[i] if kind == "shape" else batch.colors[i]
        inputs = encode_inputs(loaded, batch.images[i][None], [batch.captions[i]], encoder)
        rec = noised_attention(loaded, inputs, blocks=setting.blocks, **kw)
        chain = rec.chain(setting.heads)
        start = start_vectors([word_tokens(inputs.tokens, 0, batch.captions[i], w) for w in words],
                              chain.shape[-1])
        maps.append(word_map(chain[0], rec.layout, start, setting.method))
        gts += [batch.masks[i] == k + 1 for k in range(len(words))]
    if not maps:
        raise ValueError(f"no image in the batch has {n_objects} or more objects of distinct shapes")
    return binary_segmentation(torch.cat(maps), torch.stack(gts), size=batch.images.shape[-1])


def table(results: dict, mode: str, rows: dict | None = None) -> str:
    """Measured numbers beside the paper's, one line per setting, labelled with ``mode``.

    results: :func:`evaluate`'s output. rows: ``{label: (Setting, paper numbers)}``
    (default :data:`TABLE7`, restricted to the settings in ``results``; settings not in it get
    their own name and no paper numbers).
    """
    rows = dict(TABLE7 if rows is None else rows)
    named = {s.name for s, _ in rows.values()}
    measured = [k for k in results if isinstance(results[k], dict) and "acc" in results[k]]
    for k in measured:
        if k not in named:
            rows[k] = (Setting.parse(k), None)
    head = (f"{'setting':<24} {mode + ' Acc':>9} {'mIoU':>6} {'mAP':>6} {'A/(2-A)':>8} | "
            f"{'paper Acc':>9} {'mIoU':>6} {'mAP':>6}")
    lines = [head, "-" * len(head)]
    for label, (s, paper) in rows.items():
        if s.name not in measured:
            continue
        r = results[s.name]
        p = "" if paper is None else f"{paper[0]:>9.2f} {paper[1]:>6.2f} {paper[2]:>6.2f}"
        lines.append(f"{label:<24} {r['acc']:>9.2f} {r['miou']:>6.2f} {r['map']:>6.2f} "
                     f"{r['miou_acc_2_minus_acc']:>8.2f} | {p}")
    return "\n".join(lines)
