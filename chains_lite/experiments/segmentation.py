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
from ..eval.stats import wilcoxon_greater
from ..methods.segmentation import (PAPER_METHOD, Setting, encode_inputs, noised_attention, start_vectors,
                                    step_tokenrank, task_maps, word_map, word_maps, word_tokens)

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


def evaluate(loaded, images: torch.Tensor, masks, captions: list[str],
             words, settings=(Setting(),), batch_size: int = 16, size: int = 224,
             resize: str = "nearest", progress: bool = True, keep_maps: bool = False, **kw) -> dict:
    """Score settings on a dataset with :func:`binary_segmentation` (Chefer et al. protocol).

    masks: ``(N, H', W')`` ground truth, nonzero = the word's object. ``kw``: for
    :func:`word_maps` (``t``, ``steps``, ``layers``, ``seed``, ``store``, ``encoder``). Returns
    ``{setting.name: {"acc", "miou", "map", "miou_acc_2_minus_acc", "n"}}`` plus ``"time_s"``
    and, with ``keep_maps``, ``"maps"``: ``{setting.name: (N, h, w)}``.

    Several tasks on the same passes (:func:`~chains_lite.methods.segmentation.task_maps`):
    ``words`` and ``masks`` as dicts ``{task: ...}`` with the same keys, e.g. each image's shape
    word and colour word with their masks; then the scores (and ``"maps"``) are ``{task: {...}}``.
    """
    settings = [Setting.parse(s) if isinstance(s, str) else s for s in settings]
    several = isinstance(words, dict)
    tasks, masks = (words, masks) if several else ({"": words}, {"": masks})
    if set(tasks) != set(masks):
        raise ValueError(f"words and masks must name the same tasks, got {sorted(tasks)} and {sorted(masks)}")
    t0 = time.perf_counter()
    maps = {s.name: [] for s in settings}
    for i in progress_bar(range(0, len(images), batch_size), desc="segmentation", disable=not progress):
        sl = slice(i, i + batch_size)
        got = task_maps(loaded, images[sl], captions[sl], {k: w[sl] for k, w in tasks.items()}, settings,
                        **kw)
        for k in maps:   # one {task: batch maps} per batch and setting
            maps[k].append({task: got[task][k].cpu() for task in tasks})
    maps = {task: {k: torch.cat([b[task] for b in v]) for k, v in maps.items()} for task in tasks}
    out = {task: {k: binary_segmentation(v, masks[task], size=size, resize=resize) for k, v in per.items()}
           for task, per in maps.items()}
    if keep_maps:
        for task in out:
            out[task]["maps"] = maps[task]
    out = out if several else out[""]
    out["time_s"] = time.perf_counter() - t0
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


def class_word_task(batch, kind: str = "shape"):
    """A ShapeWorld batch as a segmentation task: the class word of each image's largest shape,
    and as ground truth the mask of every object of that class (the caption's word names all of
    them). ``kind="color"``: the largest object's colour word and every object of that colour.
    Returns ``(batch, masks (n, H, W) bool, words)``."""
    if kind not in ("shape", "color"):
        raise ValueError(f"kind must be 'shape' or 'color', got {kind!r}")
    names = batch.shapes if kind == "shape" else batch.colors
    words = [s[0] for s in names]
    masks = torch.stack([sum(batch.masks[i] == k + 1 for k, s in enumerate(objs) if s == words[i])
                         for i, objs in enumerate(names)]).bool()
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


# ----------------------------------------------------------------------------- explanations, measured
def _grid_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` masks -> ``(N, h, w)`` the fraction of each patch the object covers."""
    m = masks.float()[:, None]
    return torch.nn.functional.adaptive_avg_pool2d(m, grid)[:, 0]


def map_mass(maps: torch.Tensor, masks: torch.Tensor, reference: torch.Tensor | None = None) -> dict:
    """Where a set of maps puts its mass, against the ground truth (App. C.1's account, measured).

    maps: ``(N, h, w)`` non-negative maps; masks: ``(N, H, W)`` ground truth (H, W multiples of
    h, w); reference: optional ``(N, h, w)`` maps to correlate with (e.g. the chain's steady state).
    Returns, in percent where it is a share, means over the N images:

    * ``enrichment``: the map's share of mass on the object (patches weighted by the fraction
      the object covers) divided by the object's share of the area: 1 = no preference, above 1
      the object, below 1 the background;
    * ``inverted``: % of images whose mean map value on object patches (covered > 1/2) is below
      the mean on the other patches (the map is brighter in the background);
    * ``corr``: mean Pearson correlation with ``reference`` over images (with ``reference``).
    """
    maps = torch.as_tensor(maps, dtype=torch.float64)
    if maps.ndim != 3 or masks.ndim != 3 or len(maps) != len(masks):
        raise ValueError(f"need maps (N, h, w) and masks (N, H, W), got {tuple(maps.shape)}, {tuple(masks.shape)}")
    if (maps < 0).any():
        raise ValueError("maps must be non-negative (a distribution of mass)")
    cover = _grid_masks(masks, maps.shape[-2:]).double()
    area = cover.flatten(1).mean(1)
    if (area == 0).any():
        raise ValueError("an image has no object pixel: its enrichment is not defined")
    share = (maps * cover).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp_min(1e-300)
    obj = cover > 0.5
    inverted = []
    for m, o in zip(maps, obj):
        inverted.append(bool(o.any() and (~o).any() and m[o].mean() < m[~o].mean()))
    out = dict(enrichment=float((share / area).mean()), inverted=100 * sum(inverted) / len(inverted),
               n=len(maps))
    if reference is not None:
        a = maps.flatten(1) - maps.flatten(1).mean(1, keepdim=True)
        b = torch.as_tensor(reference, dtype=torch.float64).flatten(1)
        b = b - b.mean(1, keepdim=True)
        out["corr"] = float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)).mean())
    return out


#: incoming and outgoing maps by number of bounces (inf: the steady state), as setting names
DRIFT = {"incoming": {1: "row_select:lambda2", 2: "incoming_2:lambda2", 3: "incoming_3:lambda2",
                      "inf": "tokenrank_in:lambda2"},
         "outgoing": {1: "column_select:lambda2", 2: "outgoing_2:lambda2", 3: "outgoing_3:lambda2",
                      "inf": "tokenrank_out:lambda2"}}


def bounce_drift(results: dict, masks: torch.Tensor) -> dict:
    """App. C.1's account tested on :func:`evaluate`'s output (run with ``keep_maps`` and every
    setting of :data:`DRIFT`): per direction and n in 1, 2, 3, inf, the scores of
    :func:`binary_segmentation` and :func:`map_mass` (``corr``: with that direction's steady
    state). Returns ``{direction: {n: {"acc", "miou", "map", "enrichment", "inverted", "corr"}}}``.
    """
    maps = results["maps"]
    missing = [k for d in DRIFT.values() for k in d.values() if k not in maps]
    if missing:
        raise ValueError(f"evaluate these settings with keep_maps=True first: {missing}")
    out = {}
    for direction, by_n in DRIFT.items():
        steady = maps[by_n["inf"]]
        out[direction] = {n: {**{m: results[k][m] for m in ("acc", "miou", "map")},
                              **map_mass(maps[k], masks, steady)} for n, k in by_n.items()}
    return out


def seed_runs(loaded, images, masks, captions, words, settings, seeds, **kw) -> list[dict]:
    """:func:`evaluate` once per noise seed in ``seeds`` (the paper's Table 8 uses 5): a list of
    its results, one per seed, each with per-image APs ``"ap": {setting.name: (N,)}`` (for paired
    tests over images). ``kw``: for :func:`evaluate` (``batch_size``, ``t``, ``steps``, ...)."""
    if not seeds:
        raise ValueError("seeds is empty")
    size, resize = kw.get("size", 224), kw.get("resize", "nearest")
    runs = []
    for seed in seeds:
        r = evaluate(loaded, images, masks, captions, words, settings, seed=seed, keep_maps=True, **kw)
        maps = r.pop("maps")
        r["ap"] = {k: torch.tensor([c["ap"] for c in segmentation_counts(v, masks, size=size, resize=resize)])
                   for k, v in maps.items()}
        runs.append(r)
    return runs


def over_seeds(runs: list[dict], setting: str, metric: str) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1, as over the paper's 5 runs) of ``metric`` of
    ``setting`` over :func:`seed_runs`' runs."""
    v = torch.tensor([r[setting][metric] for r in runs], dtype=torch.float64)
    if len(v) < 2:
        raise ValueError("a standard deviation over seeds needs at least 2 runs")
    return float(v.mean()), float(v.std())


def wilcoxon_seeds(runs: list[dict], a: str, b: str, metrics=("acc", "miou", "map")) -> dict:
    """Table 9's test: one-sided Wilcoxon signed-rank p-value for "setting ``a`` > setting ``b``"
    on each metric, paired by seed over :func:`seed_runs`' runs, and how many seeds ``a`` wins.
    Returns ``{metric: {"p", "wins", "n"}}``."""
    out = {}
    for m in metrics:
        x = [r[a][m] for r in runs]
        y = [r[b][m] for r in runs]
        out[m] = dict(p=wilcoxon_greater(x, y), wins=sum(u > v for u, v in zip(x, y)), n=len(runs))
    return out


def denoising_tokenrank(loaded, captions: list[str], steps: int = 8, seed: int = 0, size: int | None = None,
                        heads: str = "lambda2", **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's Fig. 17: generate from pure noise (t = 1, ``steps`` Euler steps) with each
    caption and take the incoming TokenRank of every step's chain (image part).

    size: the image side (default: 32 for ``shapes-flux``, 512 for FLUX). ``kw``: for
    :func:`~chains_lite.methods.segmentation.noised_attention` (``blocks``, ``layers``).
    Returns ``(maps (steps, B, h, w), images (B, 3, size, size) in [0, 1])``: the generated images.
    """
    full = getattr(loaded, "mode", "lite") == "full"
    size = size or (512 if full else 32)
    blank = torch.zeros(len(captions), 3, size, size)   # at t = 1 the clean image is ignored
    inputs = encode_inputs(loaded, blank, list(captions), None)
    recs = noised_attention(loaded, inputs, t=1.0, steps=steps, seed=seed, per_step=True, **kw)
    return step_tokenrank(recs, heads).cpu(), decode_latents(loaded, recs[-1].latents, size)


def decode_latents(loaded, x: torch.Tensor, size: int) -> torch.Tensor:
    """Packed latents ``(B, n_img, C)`` -> images ``(B, 3, size, size)`` in [0, 1]: ``shapes-flux``
    unpacks its pixels; FLUX.1 unpacks and runs its pipeline's VAE decoder."""
    from ..zoo.models import unpack
    pipe = getattr(loaded, "pipeline", None)
    if getattr(loaded, "mode", "lite") != "full" or pipe is None:
        return ((unpack(x.float().cpu(), size) + 1) / 2).clamp(0, 1)
    with torch.no_grad():
        lat = pipe._unpack_latents(x, size, size, pipe.vae_scale_factor)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        img = pipe.vae.decode(lat.to(pipe.vae.dtype)).sample
    return ((img.float().cpu() + 1) / 2).clamp(0, 1)


def step_correlations(maps: torch.Tensor) -> torch.Tensor:
    """``(steps, B, h, w)`` maps -> ``(B, steps, steps)`` Pearson correlations between steps."""
    v = torch.as_tensor(maps, dtype=torch.float64).flatten(2).transpose(0, 1)   # (B, steps, hw)
    v = v - v.mean(-1, keepdim=True)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return v @ v.transpose(-1, -2)


def cross_image_correlation(maps: torch.Tensor) -> float:
    """Mean Pearson correlation between the maps ``(B, h, w)`` of different images (B >= 2): what
    two unrelated maps share, the reference for :func:`step_correlations`."""
    if len(maps) < 2:
        raise ValueError("need at least 2 images")
    c = step_correlations(torch.as_tensor(maps)[:, None])[0]   # (B, B) with images as "steps"
    off = ~torch.eye(len(c), dtype=torch.bool)
    return float(c[off].mean())


def step_stability(maps: torch.Tensor) -> dict:
    """How early a generation's maps settle (the paper's Fig. 17): ``maps`` ``(steps, B, h, w)``,
    steps >= 3, B >= 2 images.

    Returns ``{"per_step"}``: ``(steps,)`` the mean over images of each step's Pearson correlation
    with the image's last-step map (:func:`step_correlations`); ``"first"``: its mean over the first
    half of the steps, ``"second"``: over the rest but the last; ``"unrelated"``: what the final
    maps of different images share (:func:`cross_image_correlation`); and ``"verdict"``:
    ``"late"`` when the first half shares no more than unrelated maps, ``"early"`` when it shares at
    least half of what the second half shares, else ``"later"``."""
    maps = torch.as_tensor(maps)
    if maps.ndim != 4 or len(maps) < 3:
        raise ValueError(f"maps must be (steps >= 3, B, h, w), got {tuple(maps.shape)}")
    per_step = step_correlations(maps)[:, :, -1].mean(0)             # (steps,)
    half = len(maps) // 2
    first, second = float(per_step[:half].mean()), float(per_step[half:-1].mean())
    unrelated = cross_image_correlation(maps[-1])
    verdict = "late" if first <= unrelated else "early" if first >= second / 2 else "later"
    return {"per_step": per_step, "first": first, "second": second, "unrelated": unrelated,
            "verdict": verdict}

