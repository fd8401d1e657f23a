"""Zero-shot segmentation with multi-bounce attention in FLUX (paper Sec. 5.1, Table 1, supp. Table 7).

A caption word is a state of the joint text+image chain (:mod:`chains_lite.flux`). Start a
distribution on its token(s) and bounce:

* ``row_select``    — one incoming bounce: what the word attends to;
* ``column_select`` — one outgoing bounce (column-normalised chain): which patches attend to the word;
* ``incoming_2``, ``incoming_3`` — 2 or 3 incoming bounces;
* ``outgoing_2``, ``outgoing_3`` — 2 or 3 outgoing bounces; ``outgoing_2`` with λ2-weighted heads
  is the paper's method.

The map is the image-token part of the result, as the image grid. A :class:`Setting` names one
row of the ablation (method, head mixing, double- or single-stream blocks); :func:`evaluate`
scores settings on a dataset with :func:`chains_lite.metrics.binary_segmentation`.

The pipeline functions take a loaded model: anything with ``.model`` (the FLUX transformer) and
``.encode(images, captions) -> inputs`` (:class:`chains_lite.zoo.Loaded` for ``shapes-flux`` and
FLUX.1), or pass ``encoder(loaded, images, captions) -> inputs`` yourself; this module does not
import the zoo.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import scores
from .capture import TokenLayout
from .flux import BLOCKS, HEAD_MIX, noised_attention
# the dataset's reader, here for the callers that find it under segmentation
from .imagenet_segmentation import imagenet_segmentation_size, load_imagenet_segmentation  # noqa: F401
from .metrics import binary_segmentation, merge_segmentation_counts, segmentation_counts

METHODS = scores.select("row_select", "column_select", "incoming_2", "incoming_3", "outgoing_2",
                        "outgoing_3")
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
        return ":".join([self.method, self.heads] + ([self.blocks] if self.blocks != "double" else []))


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
    ``method`` (one of :data:`METHODS`, see :mod:`chains_lite.scores`) says and return the image
    part as a grid ``(..., h, w)`` (sums to at most 1: the rest is on text)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(METHODS)}")
    return layout.to_grid(scores.token_scores(A, method, layout, start=start))


# ----------------------------------------------------------------------------- images -> maps
def _encode(loaded, images, captions, encoder=None):
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

    loaded: the FLUX transformer or a loaded zoo model (see :func:`~chains_lite.flux.noised_attention`).
    images: ``(B, 3, H, W)`` in [0, 1] (32 x 32 ShapeWorld for ``shapes-flux``; multiples of 16
    for FLUX); ``captions``, ``words``: one each per image. ``encoder``: ``(loaded, images,
    captions) -> inputs`` (default: ``loaded.encode(images, captions)``). One noised forward pass
    (``steps`` model calls from ``t``) per block kind; settings that share it reuse its attention.
    """
    settings = [Setting.parse(s) if isinstance(s, str) else s for s in settings]
    if not (len(images) == len(captions) == len(words)):
        raise ValueError("images, captions and words must have the same length")
    inputs = _encode(loaded, images, captions, encoder)
    token_lists = [word_tokens(inputs.tokens, i, c, w) for i, (c, w) in enumerate(zip(captions, words))]
    out = {}
    for blocks in dict.fromkeys(s.blocks for s in settings):
        rec = noised_attention(loaded, inputs, t, steps, blocks, layers, store, seed)
        start = start_vectors(token_lists, rec.layout.patch_start + rec.layout.n_patches)
        chains = {}
        for s in settings:
            if s.blocks != blocks:
                continue
            if s.heads not in chains:
                chains[s.heads] = rec.chain(s.heads)
            out[s.name] = word_map(chains[s.heads], rec.layout, start, s.method)
    return out


def segment(loaded, image: torch.Tensor, caption: str, word: str, method: str = PAPER_METHOD,
            heads: str = "lambda2", blocks: str = "double", **kw) -> torch.Tensor:
    """The map ``(h, w)`` of ``word`` for one image ``(3, H, W)`` and its caption (see
    :func:`word_maps` for ``t``, ``steps``, ``layers``, ``seed``, ``encoder``)."""
    s = Setting(method, heads, blocks)
    return word_maps(loaded, torch.as_tensor(image)[None], [caption], [word], [s], **kw)[s.name][0]


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
    for i in tqdm(range(0, len(images), batch_size), desc="segmentation", disable=not progress):
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
    """Per-image records of :func:`evaluate` for :func:`chains_lite.runner.run`: one
    ``{setting.name: segmentation_counts}`` per image of one batch (see
    :func:`chains_lite.metrics.segmentation_counts`). ``kw``: for :func:`word_maps`; pass
    ``seed`` as one int per image (:func:`chains_lite.runner.item_seed`) so an image's noise
    does not depend on its batch. :func:`merge_records` gives :func:`evaluate`'s scores.
    """
    maps = word_maps(loaded, images, captions, words, settings, **kw)
    per = {k: segmentation_counts(v.cpu(), masks, size=size, resize=resize) for k, v in maps.items()}
    return [{k: per[k][b] for k in per} for b in range(len(images))]


def evaluate_batches(loaded, batches, settings=(Setting(),), size: int = 224, resize: str = "nearest",
                     progress: bool = True, total: int | None = None, **kw) -> dict:
    """:func:`evaluate`'s scores over a stream of batches, holding one batch at a time.

    batches: an iterable of ``(images, masks, captions, words)`` (e.g. built from
    :meth:`chains_lite.imagenet_segmentation.ImageNetSegmentation.batches`); ``total``: the
    number of batches, for the progress bar. ``kw``: for :func:`word_maps`. Returns
    ``{setting.name: {"acc", "miou", "map", "miou_acc_2_minus_acc", "n"}, "time_s": ...}``.
    """
    settings = [Setting.parse(s) if isinstance(s, str) else s for s in settings]
    t0, records = time.perf_counter(), []
    for images, masks, captions, words in tqdm(batches, total=total, desc="segmentation",
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


# ----------------------------------------------------------------------------- datasets
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
    for :func:`word_maps` (``kw`` goes to :func:`~chains_lite.flux.noised_attention`).

    Returns :func:`binary_segmentation` over all (word, object) pairs, at the image resolution.
    """
    if kind not in ("shape", "color"):
        raise ValueError(f"kind must be 'shape' or 'color', got {kind!r}")
    setting = Setting.parse(setting) if isinstance(setting, str) else setting
    maps, gts = [], []
    keep = [i for i, s in enumerate(batch.shapes) if len(s) >= n_objects and len(set(s)) == len(s)]
    for i in tqdm(keep, desc=f"{kind} words", disable=not progress):
        words = batch.shapes[i] if kind == "shape" else batch.colors[i]
        inputs = _encode(loaded, batch.images[i][None], [batch.captions[i]], encoder)
        rec = noised_attention(loaded, inputs, blocks=setting.blocks, **kw)
        chain = rec.chain(setting.heads)
        start = start_vectors([word_tokens(inputs.tokens, 0, batch.captions[i], w) for w in words],
                              chain.shape[-1])
        maps.append(word_map(chain[0], rec.layout, start, setting.method))
        gts += [batch.masks[i] == k + 1 for k in range(len(words))]
    if not maps:
        raise ValueError(f"no image in the batch has {n_objects} or more objects of distinct shapes")
    return binary_segmentation(torch.cat(maps), torch.stack(gts), size=batch.images.shape[-1])


# ----------------------------------------------------------------------------- reporting
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
