"""How well a map localises ground truth: per-image AUROC and IoU at the mean threshold, the
dataset-level binary segmentation scores of the Chefer et al. protocol (chapter 3), and the
Hungarian-matched accuracy and mIoU of unsupervised segments (DiffSeg's benchmark, chapter 5).

Maps are scores per pixel (any resolution: :func:`resize_maps` brings them to the mask's);
masks are boolean foreground. :func:`auroc` and :func:`iou_at_mean` return one number per image, so
callers can average, take medians or run paired tests; :func:`binary_segmentation` returns the
three numbers that segmentation papers report.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

RESIZE = ("bilinear", "nearest")


def _check_pair(scores: torch.Tensor, masks: torch.Tensor):
    scores, masks = torch.as_tensor(scores), torch.as_tensor(masks)
    if scores.ndim != 3 or masks.ndim != 3 or scores.shape != masks.shape:
        raise ValueError(f"scores and masks must both be (N, H, W) with the same shape, got "
                         f"{tuple(scores.shape)} and {tuple(masks.shape)} (resize_maps first)")
    if not torch.isfinite(scores).all():  # in the input's dtype: large float64 scores are fine
        raise ValueError("scores contain NaN or inf")
    # float64 stays float64: beyond float32's range it would become inf and tie
    return scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32), masks.bool()


def resize_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(N, h, w)`` maps -> ``(N, *size)``; bilinear (default) or nearest upsampling."""
    if mode not in RESIZE:
        raise ValueError(f"mode must be one of {RESIZE}, got {mode!r}")
    maps = torch.as_tensor(maps).float()
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, h, w), got {tuple(maps.shape)}")
    kw = dict(align_corners=False) if mode == "bilinear" else {}
    return F.interpolate(maps[:, None], size=tuple(size), mode=mode, **kw)[:, 0]


def auroc(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image area under the ROC curve of ``scores`` ranking foreground above background.

    scores: ``(N, H, W)`` float; masks: ``(N, H, W)`` bool (True = foreground). Returns ``(N,)``:
    the probability that a random foreground pixel outscores a random background pixel (ties
    count one half; the Mann-Whitney U statistic). NaN for an image whose mask is all one class.
    """
    scores, masks = _check_pair(scores, masks)
    s = scores.flatten(1).double().numpy()
    y = masks.flatten(1).numpy()
    ranks = rankdata(s, axis=1)                # average ranks for ties
    pos = y.sum(1).astype(np.float64)
    neg = y.shape[1] - pos
    u = (ranks * y).sum(1) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (pos * neg)
    return torch.from_numpy(out).float()


def iou_at_mean(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of ``scores > mean(scores)`` with the foreground mask.

    scores: ``(N, H, W)``; masks: ``(N, H, W)`` bool. Returns ``(N,)`` in [0, 1] (each image's
    threshold is its own mean, as in the Chefer et al. protocol; 0 when both sets are empty).
    """
    scores, masks = _check_pair(scores, masks)
    # each image divided by its largest |score| first: the order and the mean threshold are the
    # same, and a sum of scores near the dtype's maximum cannot overflow
    scores = scores / scores.flatten(1).abs().amax(1).clamp_min(torch.finfo(scores.dtype).tiny)[:, None, None]
    pred = scores > scores.flatten(1).mean(1)[:, None, None]
    inter = (pred & masks).flatten(1).sum(1).float()
    union = (pred | masks).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision of ``scores`` ranking the positives of ``labels`` first (1-D tensors).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order
    (tied scores enter together), the step-wise area under the precision-recall curve that
    scikit-learn's ``average_precision_score`` computes. NaN when there is no positive.
    """
    s = torch.as_tensor(scores).double().flatten()
    labels = torch.as_tensor(labels)
    if not torch.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if labels.numel() != s.numel():
        raise ValueError(f"scores and labels must have one entry each, got {s.numel()} and {labels.numel()}")
    if labels.is_floating_point() and not torch.isfinite(labels).all():
        raise ValueError("labels contain NaN or inf")
    y = labels.bool().flatten()
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order].double()
    tp = torch.cumsum(y, 0)
    # the last position of each run of tied scores is where that threshold's counts are read
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last], torch.nonzero(last).flatten().double() + 1
    precision, recall = tp / seen, tp / n_pos
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


def _check_binary(masks: torch.Tensor) -> None:
    """Masks are bool, or numbers where 0 is background and a positive integer foreground (object
    ids); negative or fractional values (soft masks, ignore labels) are refused, not guessed."""
    if masks.dtype == torch.bool:
        return
    m = masks.double()
    if not torch.isfinite(m).all() or (m < 0).any() or (m != m.round()).any():
        raise ValueError("masks must be bool or non-negative integers (0 = background, nonzero = "
                         "foreground); got negative, fractional or non-finite values: threshold soft "
                         "masks and drop ignore labels first")


def _binarized(scores: torch.Tensor, masks: torch.Tensor, size: int, resize: str):
    """The Chefer et al. preprocessing of :func:`binary_segmentation`: ``(s, pred, gt)``, each
    ``(N, size * size)``: min-max normalised maps resized with ``resize``, ``s > mean(s)`` per
    image, and the masks resized nearest (bool)."""
    if resize not in RESIZE:
        raise ValueError(f"resize must be one of {RESIZE}, got {resize!r}")
    scores, masks = torch.as_tensor(scores), torch.as_tensor(masks)
    if scores.ndim != 3 or masks.ndim != 3 or len(scores) != len(masks):
        raise ValueError(f"scores must be (N, h, w) and masks (N, H, W) with the same N, got "
                         f"{tuple(scores.shape)} and {tuple(masks.shape)}")
    if len(scores) == 0:
        raise ValueError("no images: scores and masks are empty")
    if not torch.isfinite(scores).all():  # in the input's dtype: large float64 scores are fine
        raise ValueError("scores contain NaN or inf")
    _check_binary(masks)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    s = scores.double().flatten(1)
    lo, hi = s.amin(1, keepdim=True), s.amax(1, keepdim=True)
    s = torch.where(hi > lo, (s - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(s))
    s = resize_maps(s.reshape(scores.shape).float(), (size, size), resize).flatten(1)
    gt = resize_maps((masks != 0).float(), (size, size), "nearest").flatten(1) > 0.5
    pred = s > s.mean(1, keepdim=True)
    return s, pred, gt


def binary_segmentation(scores: torch.Tensor, masks: torch.Tensor, size: int = 224,
                        resize: str = "nearest") -> dict:
    """Pixel accuracy, mIoU and mAP of raw maps against binary masks (Chefer et al. protocol).

    scores: ``(N, h, w)`` raw maps at any resolution; masks: ``(N, H, W)`` ground truth (nonzero =
    foreground). As in the evaluation of ConceptAttention and the paper (Sec. 5.1, Table 1):

    * each map is min-max normalised to [0, 1] (a constant map becomes 0), then maps and masks
      are resized to ``size x size``: maps with ``resize`` (``"nearest"``, as in ConceptAttention's
      released code, or ``"bilinear"``), masks always nearest so they stay binary;
    * prediction = normalised map > its own mean;
    * ``acc``: correct pixels / all pixels, summed over the dataset;
    * ``miou``: the mean over the two classes (background, foreground) of
      sum(intersection) / sum(union) over the dataset (the standard mIoU);
    * ``map``: the mean over images of the average precision of the two-channel scores
      ``[1 - s, s]`` against the one-hot labels ``[1 - gt, gt]``, flattened together.

    Returns a dict of floats in percent: ``acc``, ``miou``, ``map`` and, to compare with the
    numbers ConceptAttention reports, ``miou_acc_2_minus_acc`` = Acc / (2 - Acc): what its released
    code computes as mIoU (no argmax over the two channels before the IoU histogram). It is not
    an IoU of the prediction; the standard one is ``miou``. Also ``n`` (images).
    """
    s, pred, gt = _binarized(scores, masks, size, resize)
    if not gt.any():  # every pixel background: a constant map would score 100 on all three
        raise ValueError("the masks hold no foreground pixel (after resizing to size x size): "
                         "accuracy, mIoU and mAP are not defined for a dataset without foreground")
    acc = (pred == gt).double().mean().item()
    ious = []
    for p, g in ((pred, gt), (~pred, ~gt)):
        inter, union = (p & g).sum().item(), (p | g).sum().item()
        ious.append(inter / union if union else 1.0)
    aps = [average_precision(torch.cat([1 - s[i], s[i]]), torch.cat([~gt[i], gt[i]]))
           for i in range(len(s))]
    return dict(acc=100 * acc, miou=100 * sum(ious) / 2, map=100 * float(np.mean(aps)),
                miou_acc_2_minus_acc=100 * acc / (2 - acc), n=len(s))


def segmentation_counts(scores: torch.Tensor, masks: torch.Tensor, size: int = 224,
                        resize: str = "nearest") -> list[dict]:
    """Per-image sufficient statistics of :func:`binary_segmentation`, for runs split over
    processes or resumed: one dict of ints (and the AP) per image of ``scores`` ``(N, h, w)`` and
    ``masks`` ``(N, H, W)``, with the same preprocessing. Keys: ``pixels``, ``correct``,
    ``inter_fg``, ``union_fg``, ``inter_bg``, ``union_bg``, ``foreground`` (pixel counts at
    ``size x size``) and ``ap`` (the image's two-channel average precision, a fraction).
    :func:`merge_segmentation_counts` of any split of the images, in image order, equals
    :func:`binary_segmentation` of them all.
    """
    s, pred, gt = _binarized(scores, masks, size, resize)
    ints = dict(correct=(pred == gt), inter_fg=pred & gt, union_fg=pred | gt,
                inter_bg=~pred & ~gt, union_bg=~pred | ~gt, foreground=gt)
    ints = {k: v.sum(1).tolist() for k, v in ints.items()}
    return [dict(pixels=s.shape[1], **{k: v[i] for k, v in ints.items()},
                 ap=average_precision(torch.cat([1 - s[i], s[i]]), torch.cat([~gt[i], gt[i]])))
            for i in range(len(s))]


def merge_segmentation_counts(counts: list[dict]) -> dict:
    """:func:`binary_segmentation`'s dict (percent) from the per-image :func:`segmentation_counts`
    of a whole dataset, in image order: pixel counts summed over images, then the ratios; mAP the
    mean of the per-image APs."""
    if not counts:
        raise ValueError("no images: counts is empty")
    total = {k: sum(c[k] for c in counts) for k in ("pixels", "correct", "inter_fg", "union_fg",
                                                   "inter_bg", "union_bg", "foreground")}
    if not total["foreground"]:
        raise ValueError("the masks hold no foreground pixel (after resizing to size x size): "
                         "accuracy, mIoU and mAP are not defined for a dataset without foreground")
    acc = total["correct"] / total["pixels"]
    ious = [total[f"inter_{c}"] / total[f"union_{c}"] if total[f"union_{c}"] else 1.0 for c in ("fg", "bg")]
    return dict(acc=100 * acc, miou=100 * sum(ious) / 2, map=100 * float(np.mean([c["ap"] for c in counts])),
                miou_acc_2_minus_acc=100 * acc / (2 - acc), n=len(counts))


# ----------------------------------------------------------------------------- unsupervised segmentation
def _check_label_maps(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = torch.as_tensor(pred), torch.as_tensor(gt)
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must both be (B, H, W) label maps of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")
    for name, t in (("pred", pred), ("gt", gt)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer labels, got dtype {t.dtype}")
    if (pred < 0).any():
        raise ValueError("pred holds negative segment ids; segments are numbered 0, 1, 2, ...")
    return pred.cpu().numpy().astype(np.int64), gt.cpu().numpy().astype(np.int64)


def hungarian_counts(pred, gt, n_classes: int) -> dict:
    """Per-image true positives, false positives and false negatives of unsupervised segments
    matched one-to-one to classes (the evaluation of DiffSeg, Tian et al. 2024, and STEGO).

    pred: ``(B, H, W)`` segment ids ``>= 0`` (any number of segments); gt: ``(B, H, W)`` class ids,
    where pixels outside ``[0, n_classes)`` are ignored (e.g. 255 or -1 = unlabelled). Per image:
    the histogram ``hist[c, s]`` of class ``c`` against segment ``s`` (at least ``n_classes``
    segment columns, so every class is matched), the matching that maximises the matched pixels
    (``scipy.optimize.linear_sum_assignment``); ``tp[c] = hist[c, s(c)]``, ``fn[c]`` = pixels of
    class ``c`` outside ``s(c)``, ``fp[c]`` = pixels of ``s(c)`` of other classes. Segments matched
    to no class count nowhere; a class absent from the image is matched too and collects the
    pixels of its segment as false positives, as in DiffSeg's code.

    Returns ``dict(tp, fp, fn)`` of ``(B, n_classes)`` float64 arrays and ``pixels`` ``(B,)``
    (labelled pixels per image). :func:`hungarian_segmentation` sums them into scores.
    """
    from scipy.optimize import linear_sum_assignment
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    pred, gt = _check_label_maps(pred, gt)
    b = len(pred)
    tp, fp, fn = (np.zeros((b, n_classes)) for _ in range(3))
    pixels = np.zeros(b)
    for i in range(b):
        valid = (gt[i] >= 0) & (gt[i] < n_classes)
        g, p = gt[i][valid], pred[i][valid]
        cols = max(n_classes, int(pred[i].max()) + 1)
        hist = np.bincount(g * cols + p, minlength=n_classes * cols).reshape(n_classes, cols)
        rows, match = linear_sum_assignment(hist, maximize=True)  # rows = every class
        tp[i] = hist[rows, match]
        fn[i] = hist.sum(1) - tp[i]
        fp[i] = hist[:, match].sum(0) - tp[i]
        pixels[i] = valid.sum()
    return dict(tp=tp, fp=fp, fn=fn, pixels=pixels)


def scores_from_counts(counts: dict) -> dict:
    """``acc`` = sum TP / labelled pixels and ``miou`` = mean over classes (those with a nonzero
    denominator) of TP / (TP + FP + FN), both as fractions, from summed per-image counts."""
    tp, fp, fn = (np.asarray(counts[k]).sum(0) for k in ("tp", "fp", "fn"))
    pixels = float(np.asarray(counts["pixels"]).sum())
    if pixels == 0:
        raise ValueError("no labelled pixel: every ground-truth pixel is outside [0, n_classes)")
    denom = tp + fp + fn
    iou = np.divide(tp, denom, out=np.full_like(tp, np.nan), where=denom > 0)
    return dict(acc=float(tp.sum() / pixels), miou=float(np.nanmean(iou)), iou=iou.tolist())


def hungarian_segmentation(pred, gt, n_classes: int) -> dict:
    """Pixel accuracy and mIoU of unsupervised segments, each matched to one class per image by
    the Hungarian algorithm (DiffSeg's benchmark; see :func:`hungarian_counts`).

    pred: ``(B, H, W)`` int segment ids; gt: ``(B, H, W)`` int class ids (outside
    ``[0, n_classes)`` = ignored). Returns ``dict(acc, miou, iou)``: fractions; ``iou`` per class
    (NaN for a class never matched with any pixel), summed over the whole dataset first.
    """
    return scores_from_counts(hungarian_counts(pred, gt, n_classes))
