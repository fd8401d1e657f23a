"""Chapter 5's tables: DiffSeg with uniform or TokenRank anchors scored on labelled images
(paper Table 3): :func:`score_chains` (Hungarian-matched counts per image), :func:`bootstrap`
(intervals over images, paired differences), :func:`format_table` (beside the paper's numbers).
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


def format_table(res: dict, strategies, mode: str) -> str:
    """A markdown table of :func:`bootstrap` results (in percent, 95 % intervals, paired
    differences against the first strategy) beside the paper's Table 3."""
    lines = [f"| anchors | mACC ({mode}) | mIoU ({mode}) | segments / image | paper mACC | paper mIoU |",
             "|---|---|---|---|---|---|"]
    for s in strategies:
        r = res[s]
        paper = PAPER_TABLE3.get(s, ("", ""))
        lines.append(f"| {s} | {100 * r['acc']:.1f} [{100 * r['acc_ci'][0]:.1f}, {100 * r['acc_ci'][1]:.1f}] "
                     f"| {100 * r['miou']:.1f} [{100 * r['miou_ci'][0]:.1f}, {100 * r['miou_ci'][1]:.1f}] "
                     f"| {r.get('segments', float('nan')):.2f} | {paper[0]} | {paper[1]} |")
    for s in strategies[1:]:
        d = res[f"{s} - {strategies[0]}"]
        lines.append(f"| {s} - {strategies[0]} | {100 * d['acc']:+.1f} [{100 * d['acc_ci'][0]:+.1f}, "
                     f"{100 * d['acc_ci'][1]:+.1f}] p={d['acc_p']:.3f} | {100 * d['miou']:+.1f} "
                     f"[{100 * d['miou_ci'][0]:+.1f}, {100 * d['miou_ci'][1]:+.1f}] p={d['miou_p']:.3f} | | | |")
    return "\n".join(lines)
