"""Chapter 5's tables: DiffSeg with uniform or TokenRank anchors scored on labelled images
(paper Table 3): :func:`score_chains` (Hungarian-matched counts per image), :func:`bootstrap`
(intervals over images, paired differences), :func:`choose_threshold` (the merging threshold from a
validation sweep), :func:`anchor_stats` (where anchors lie), :func:`own_segment_mass` (where a
token's map lies), :func:`table_rows` (beside the paper's numbers).
"""
from __future__ import annotations

import numpy as np
import torch

from ..eval import stats
from ..eval.metrics import hungarian_counts, scores_from_counts
from ..methods.diffseg import segment_images

#: Paper Table 3 (COCO-Stuff-27, SD1.5): mACC and mIoU in percent per anchor strategy.
PAPER_TABLE3 = {"uniform": (72.50, 43.60), "tokenrank": (84.97, 44.87)}


def bootstrap(counts: dict, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Scores with bootstrap intervals over images, and paired differences between strategies.

    counts: ``{strategy: metrics.hungarian_counts(...)}`` on the same images in the same order
    (e.g. :func:`score_chains`; an ``n_segments`` entry is averaged into ``segments``).
    Images are resampled with replacement ``n_boot`` times (the same resamples for every
    strategy, :func:`chains_lite.eval.stats.bootstrap`); each resample's ``acc`` and ``miou`` come
    from its summed counts. Returns ``{strategy: {acc, miou, acc_ci, miou_ci}}`` and, for every
    later strategy against the first, ``"<b> - <a>"``: the difference, its interval and the share
    of resamples where it is <= 0 (a one-sided bootstrap p-value for "b beats a").
    """
    names = list(counts)
    segments = {s: c.get("n_segments") for s, c in counts.items()}
    n = {len(c["pixels"]) for c in counts.values()}
    if len(n) != 1:
        raise ValueError(f"strategies were scored on different numbers of images: {sorted(n)}")
    n = n.pop()
    keys = ("tp", "fp", "fn", "pixels")

    def scores(c, idx):  # acc and miou of the summed counts of the images idx
        s = scores_from_counts({k: np.asarray(c[k]) if idx is None else np.asarray(c[k])[idx] for k in keys})
        return {"acc": s["acc"], "miou": s["miou"]}

    point, draws = stats.bootstrap(counts, scores, n, n_boot, seed)
    table = {}
    for s in names:
        table[s] = dict(acc=point[s]["acc"], miou=point[s]["miou"],
                        acc_ci=list(stats.interval(draws[s]["acc"], level)),
                        miou_ci=list(stats.interval(draws[s]["miou"], level)), n_images=n)
        if segments[s] is not None:
            table[s]["segments"] = float(np.mean(segments[s]))
    a = names[0]
    for b in names[1:]:
        d = {m: draws[b][m] - draws[a][m] for m in ("acc", "miou")}
        table[f"{b} - {a}"] = dict(
            acc=table[b]["acc"] - table[a]["acc"], miou=table[b]["miou"] - table[a]["miou"],
            acc_ci=list(stats.interval(d["acc"], level)), miou_ci=list(stats.interval(d["miou"], level)),
            acc_p=float((d["acc"] <= 0).mean()), miou_p=float((d["miou"] <= 0).mean()))
    return table


def choose_threshold(sweep: dict, strategy: str = "uniform", metric: str = "miou"):
    """The threshold of ``sweep`` ``{threshold: {strategy: {metric: value}}}`` (validation scores,
    e.g. :func:`chains_lite.eval.metrics.scores_from_counts` per strategy) with the highest
    ``metric`` for ``strategy``; among equal scores, the smallest threshold."""
    if not sweep:
        raise ValueError("the sweep is empty: no threshold to choose from")
    missing = [t for t, v in sweep.items() if strategy not in v or metric not in v[strategy]]
    if missing:
        raise ValueError(f"thresholds {missing} have no {metric!r} for strategy {strategy!r}")
    return max(sorted(sweep), key=lambda t: (sweep[t][strategy][metric], -t))


def score_chains(chains: torch.Tensor, gt: torch.Tensor, n_classes: int,
                 strategies=("uniform", "tokenrank"), **kw) -> dict:
    """Segment every chain of ``chains`` ``(B, n, n)`` with every strategy and score it against
    class maps ``gt`` ``(B, H, W)`` (:func:`chains_lite.eval.metrics.hungarian_counts`).

    Returns ``{strategy: dict(tp, fp, fn, pixels, n_segments)}``, per-image arrays in image order
    (``kw``: options of :func:`segment`, e.g. ``threshold``)."""
    if len(chains) != len(gt):
        raise ValueError(f"{len(chains)} chains but {len(gt)} ground-truth maps")
    out = {}
    for s, segs in segment_images(chains, tuple(gt.shape[-2:]), strategies, **kw).items():
        out[s] = hungarian_counts(torch.stack([seg.labels for seg in segs]), gt, n_classes)
        out[s]["n_segments"] = np.array([seg.n_segments for seg in segs])
    return out


def anchor_stats(chains: torch.Tensor, gt: torch.Tensor, strategy: str, **kw) -> dict:
    """Where a strategy's anchors lie, over chains ``(B, n, n)`` (``n = S^2``) with class maps ``gt``
    ``(B, H, W)`` (class 0: background): ``spread``, the mean over images and tokens of the distance
    (token units) from a token to its nearest anchor; ``coverage``, the share of the images'
    objects (non-background classes) with at least one anchor on them (``gt`` resampled to the
    token grid by nearest neighbours). ``kw``: options of :func:`chains_lite.methods.diffseg.anchors`."""
    from ..methods.diffseg import anchors
    if len(chains) != len(gt):
        raise ValueError(f"{len(chains)} chains but {len(gt)} ground-truth maps")
    size = int(round(chains.shape[-1] ** 0.5))
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    tokens = torch.stack([rows.flatten(), cols.flatten()], 1).float()
    small = _token_classes(gt, size)
    spread, covered, objects = [], 0, 0
    for A, g in zip(chains, small):
        pts = anchors(A, size, strategy, **kw)
        spread.append(torch.cdist(tokens, pts.float()).min(1).values.mean().item())
        on = set(g[pts[:, 0], pts[:, 1]].tolist())
        classes = [c for c in g.unique().tolist() if c != 0]
        covered += sum(c in on for c in classes)
        objects += len(classes)
    return {"spread": float(np.mean(spread)), "coverage": covered / objects if objects else float("nan")}


def _token_classes(gt: torch.Tensor, size: int) -> torch.Tensor:
    """Class maps ``(B, H, W)`` -> ``(B, size, size)`` on the token grid (nearest neighbours)."""
    return torch.nn.functional.interpolate(gt[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def own_segment_mass(chains: torch.Tensor, gt: torch.Tensor) -> dict:
    """Whether a token's map stays on its own segment, over chains ``(B, n, n)`` (``n = S^2``) with
    class maps ``gt`` ``(B, H, W)`` (class 0: background; resampled to the token grid by nearest
    neighbours).

    For every token: ``mass``, the share of its row's mass on the tokens of its own class in its
    image, and ``area``, the share of the image's tokens of that class (the mass a uniform row
    would put there). Returns ``{"object": ..., "background": ...}``, each ``{"mass", "area"}``
    averaged over the tokens of that kind in all images and ``"tokens"``, their number.
    """
    if chains.ndim != 3 or chains.shape[-1] != chains.shape[-2]:
        raise ValueError(f"chains must be (B, n, n), got {tuple(chains.shape)}")
    if len(chains) != len(gt):
        raise ValueError(f"{len(chains)} chains but {len(gt)} ground-truth maps")
    size = int(round(chains.shape[-1] ** 0.5))
    if size * size != chains.shape[-1]:
        raise ValueError(f"{chains.shape[-1]} tokens do not make a square grid")
    labels = _token_classes(gt, size).flatten(1).to(chains.device)       # (B, n)
    same = (labels[:, :, None] == labels[:, None, :]).to(chains.dtype)   # (B, n, n)
    mass = (chains * same).sum(-1).double().cpu()                        # (B, n)
    area = same.mean(-1).double().cpu()
    out = {}
    for kind, where in (("object", labels.cpu() != 0), ("background", labels.cpu() == 0)):
        k = int(where.sum())
        out[kind] = {"mass": mass[where].mean().item() if k else float("nan"),
                     "area": area[where].mean().item() if k else float("nan"), "tokens": k}
    return out


def table_rows(res: dict, strategies, paper: bool = True) -> tuple[list[str], list[list]]:
    """:func:`bootstrap` results as ``(columns, rows)`` for
    :func:`chains_lite.viz.tables.markdown_table`: per strategy pixel accuracy and mIoU in percent
    with their 95 % intervals, segments per image and (``paper``) Table 3's numbers; then each
    paired difference against the first strategy in percentage points, signed, its label holding
    the one-sided bootstrap p-values (accuracy / mIoU) of "no gain"."""
    pct = lambda v, lo, hi, signed=False: {"value": v, "low": lo, "high": hi, "scale": 100, "signed": signed}  # noqa: E731
    columns = ["anchors", "pixel accuracy (%)", "mIoU (%)", "segments / image"]
    columns += ["paper accuracy (%)", "paper mIoU (%)"] if paper else []
    rows = []
    for s in strategies:
        r = res[s]
        row = [s, pct(r["acc"], *r["acc_ci"]), pct(r["miou"], *r["miou_ci"]), r.get("segments", float("nan"))]
        rows.append(row + ([str(v) for v in PAPER_TABLE3.get(s, ("–", "–"))] if paper else []))  # as printed
    for s in strategies[1:]:
        d = res[f"{s} - {strategies[0]}"]
        row = [f"{s} - {strategies[0]} (points; p = {d['acc_p']:.2f} / {d['miou_p']:.2f})",
               pct(d["acc"], *d["acc_ci"], signed=True), pct(d["miou"], *d["miou_ci"], signed=True), "–"]
        rows.append(row + (["–", "–"] if paper else []))
    return columns, rows
