"""Masking the most influential tokens (paper Sec. 5.5, App. A, D): does a ranking find what a
classifier needs?

A clean pass records the attention of the masked layers and ranks, per image and head, the patch
tokens by a *strategy* (a score per token; higher = more important). A masked pass then sets the
whole column of each head's top-k tokens to ``-inf`` before the softmax in those layers (all heads
at once), through :func:`chains_lite.capture.add_logit_bias`, and the accuracy is measured. CLS and
register tokens are never masked. Sweeping the masked fraction gives a curve; a ranking that finds
the important tokens makes accuracy fall fast, so **lower AUC is better** (paper Table 4).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from ..core.progress import progress_bar

from ..capture import add_logit_bias, attention_layers, capture
from ..core import scores
from ..core.chain import mix
from ..core.layout import TokenLayout

PER_HEAD = scores.select("random", "center_row", "center_column", "column_sum", "cls_row", "tokenrank")


def _mixed(name: str, scheme: str) -> str:
    """Name of the strategy that scores the heads mixed by ``scheme`` with the method ``name``."""
    return f"{scores.select(name)[0]}_{scheme}"


HEAD_WEIGHTING = tuple(_mixed("tokenrank", s) for s in scores.HEAD_SCHEMES)  # paper Fig. 9
STRATEGIES = PER_HEAD + (_mixed("tokenrank", "lambda2"),)                  # paper Table 4
#: The strategies whose scores are drawn from a generator (a new random score belongs here, so
#: that :func:`chains_lite.experiments.masking.masking_records` gives it one generator per image).
RANDOMIZED = ("random", "random_row", _mixed("tokenrank", "random"))
FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))


def token_scores(A: torch.Tensor, strategy: str, layout: TokenLayout,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance of every token for every head: ``A`` ``(B, H, N, N)`` -> ``(B, H, N)``.

    Per-head strategies: a :mod:`chains_lite.core.scores` name, e.g. ``"random"`` (uniform random
    scores), ``"center_row"`` (what the center patch attends to: its row), ``"center_column"``
    (who attends to the center patch: its column, normalised), ``"column_sum"``, ``"cls_row"``,
    ``"tokenrank"`` (each head's steady state). Mixed strategies (one ranking per layer, used for
    every head): ``"tokenrank_lambda2"``, ``"tokenrank_uniform"``, ``"tokenrank_random"``
    (TokenRank of the heads mixed with |λ2|, equal or random weights; random weights and scores
    come from ``generator``).
    """
    if A.ndim != 4:
        raise ValueError(f"A must be (B, H, N, N), got {tuple(A.shape)}")
    A = A.float()
    if strategy in HEAD_WEIGHTING:
        name, _, scheme = strategy.rpartition("_")
        mixed = mix(A, scheme, generator=generator)
        return scores.token_scores(mixed, name, layout, generator)[:, None].expand(A.shape[:-1])
    if strategy not in scores.NAMES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {scores.NAMES + HEAD_WEIGHTING}")
    return scores.token_scores(A, strategy, layout, generator)


def column_mask(scores: torch.Tensor, k: int, layout: TokenLayout) -> torch.Tensor:
    """Additive bias ``(B, H, 1, N)``: ``-inf`` on the ``k`` highest-scoring patch tokens per head.

    Special tokens (CLS, registers) are never chosen; ties break towards lower index.
    """
    B, H, N = scores.shape
    if not 0 <= k <= N - len(layout.special_indices):
        raise ValueError(f"k={k} out of range for {N} tokens with {len(layout.special_indices)} special")
    s = scores.float().clone()
    s[..., list(layout.special_indices)] = -math.inf
    bias = torch.zeros(B, H, 1, N, device=scores.device)
    if k:
        top = s.topk(k, dim=-1).indices
        bias.scatter_(-1, top[:, :, None, :], -math.inf)
    return bias


def default_layers(model) -> list[int]:
    """The first half of the attention layers (the paper's choice, App. A)."""
    n = len(attention_layers(model))
    return list(range(max(1, n // 2)))


def masking_curves(model, images: torch.Tensor, labels: torch.Tensor,
                   classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   strategies: Sequence[str] = STRATEGIES, fractions: Sequence[float] = FRACTIONS,
                   layers: Sequence[int] | None = None, batch_size: int = 100, seed: int = 0,
                   fractions_per_pass: int | None = None, progress: bool = True) -> dict:
    """Accuracy as the top-ranked patch tokens are masked, for every strategy and fraction.

    model: a model :func:`~chains_lite.capture.capture` knows (its attention layers are masked);
    images: ``(N, 3, H, W)`` model input; labels: ``(N,)`` class indices; classify: ``x -> logits``
    (default ``model``; e.g. CLIP's zero-shot head). fractions: shares of the patch tokens to mask,
    ``k = round(f * patches)``. layers: masked layers (default: the first half).
    fractions_per_pass: how many fractions share one forward pass of ``batch_size`` images
    repeated (default: all; lower it when ``batch_size x fractions`` images do not fit).
    Returns ``{"clean_accuracy", "fractions", "layers", "n_images", strategy: accuracies (F,)}``.
    """
    check_fractions(fractions)  # before the work, not after it
    classify = classify or model
    layers = default_layers(model) if layers is None else sorted(layers)
    gen = torch.Generator().manual_seed(seed)
    correct = {s: torch.zeros(len(fractions), dtype=torch.float64) for s in strategies}
    clean = 0
    batches = range(0, len(images), batch_size)
    for i in progress_bar(batches, desc="masking", disable=not progress):
        ok, hits = batch_hits(model, images[i:i + batch_size], labels[i:i + batch_size], classify,
                            strategies, fractions, layers, fractions_per_pass, generator=gen)
        clean += int(ok.sum())
        for s in strategies:
            correct[s] += hits[s].sum(1)
    n = len(images)
    out = {"clean_accuracy": clean / n, "fractions": list(fractions), "layers": layers, "n_images": n}
    out.update({s: (correct[s] / n).tolist() for s in strategies})
    return out


def _ranked(A: torch.Tensor, strategy: str, layout: TokenLayout, generator=None, generators=None):
    """:func:`token_scores` of ``A`` ``(B, H, N, N)``; with ``generators`` (one per image), a
    :data:`RANDOMIZED` strategy scores image ``b`` alone, drawing from ``generators[b]``."""
    if generators is None or strategy not in RANDOMIZED:
        return token_scores(A, strategy, layout, generator)
    return torch.cat([token_scores(A[b:b + 1], strategy, layout, g) for b, g in enumerate(generators)])


def batch_hits(model, x, y, classify, strategies, fractions, layers, fractions_per_pass=None,
             generator=None, seeds=None):
    """One batch: ``(clean (B,) bool, {strategy: (F, B) bool})``, whether each image is classified
    right unmasked and with each fraction masked. Random scores come from ``generator`` (shared
    by the batch) or, with ``seeds``, from one generator per image and strategy."""
    y = y.to(x.device)
    with torch.no_grad(), capture(model, layers=layers) as rec:
        clean = (classify(x).argmax(-1) == y).cpu()
    lay = rec.layout
    n_patch = lay.n_patches
    hits = {}
    for s in strategies:
        # per image and strategy, one generator for all layers (as the shared one runs on)
        gens = None if seeds is None else [torch.Generator().manual_seed(int(sd)) for sd in seeds]
        ranked = [_ranked(A, s, lay, generator, gens) for A in rec.attentions]
        rows = []
        # several fractions in one forward pass (the batch repeated, one mask per copy):
        # far fewer, larger kernels than one pass per fraction
        step = fractions_per_pass or len(fractions)
        for f0 in range(0, len(fractions), step):
            ks = [int(round(f * n_patch)) for f in fractions[f0:f0 + step]]
            bias = {l: torch.cat([column_mask(sc, k, lay) for k in ks]) for l, sc in zip(layers, ranked)}
            xr = x.repeat(len(ks), *([1] * (x.ndim - 1)))
            with torch.no_grad(), add_logit_bias(model, lambda layer, n: bias[layer], layers=layers):
                pred = classify(xr).argmax(-1).reshape(len(ks), -1)
            rows.append((pred == y).cpu())
        hits[s] = torch.cat(rows)
    return clean, hits


def check_fractions(fractions: Sequence[float]) -> None:
    """``ValueError`` unless ``fractions`` are at least two shares in [0, 1], strictly increasing."""
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or len(f) < 2 or not np.all(np.isfinite(f)) or np.any(np.diff(f) <= 0) \
            or f[0] < 0 or f[-1] > 1:
        raise ValueError(f"fractions must be at least two increasing shares in [0, 1], got {list(fractions)}")


def normalized_auc(fractions: Sequence[float], accuracy: Sequence[float], clean: float) -> float:
    """Area under accuracy / clean accuracy over the fraction axis (trapezoid), divided by the
    fraction range: 1 = no drop anywhere, 0 = nothing right from the first step. Lower = the
    ranking found more important tokens. NaN when ``clean`` is 0: a model that gets nothing
    right unmasked has no drop to measure (random weights, in a dry run)."""
    check_fractions(fractions)
    if not (np.isfinite(clean) and clean >= 0):
        raise ValueError(f"clean accuracy must be a finite share >= 0, got {clean!r}")
    if clean == 0:
        return float("nan")
    f = np.asarray(fractions, dtype=float)
    a = np.asarray(accuracy, dtype=float) / clean
    return float(np.trapezoid(a, f) / (f[-1] - f[0]))


def clip_classifier(loaded, class_names: Sequence[str], template: str = "A photo of a {}."):
    """CLIP as a zero-shot classifier: ``x -> logits`` over ``class_names`` (paper App. A prompt).

    ``loaded``: an open_clip model from ``zoo.load("clip-vitb32", mode="full")``.
    """
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    with torch.no_grad():
        text = model.encode_text(tok([template.format(c) for c in class_names]).to(device))
        text = text / text.norm(dim=-1, keepdim=True)

    def classify(x):
        f = model.encode_image(x)
        return 100.0 * (f / f.norm(dim=-1, keepdim=True)) @ text.T
    return classify


def _check_timm_vit(model) -> None:
    if not (hasattr(model, "forward_features") and hasattr(model, "num_prefix_tokens")):
        raise ValueError(f"a mean-pooled readout needs a timm VisionTransformer, got {type(model).__name__}")


def mean_patch_features(model, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """The mean of a timm ViT's last-layer patch tokens (after its final norm), CLS and registers
    left out: ``(N, 3, H, W)`` -> ``(N, D)``. The features a mean-pooled readout classifies."""
    _check_timm_vit(model)
    with torch.no_grad():
        return torch.cat([model.forward_features(images[i:i + batch_size])[:, model.num_prefix_tokens:].mean(1)
                          for i in range(0, len(images), batch_size)])


def mean_pool_classifier(model, head: Callable[[torch.Tensor], torch.Tensor]):
    """``x -> logits`` of ``head`` on :func:`mean_patch_features` of ``model``: the same blocks
    (so masking them through ``model`` acts on it) read out by mean-pooling the patch tokens
    instead of the CLS token. ``head``: ``(N, D)`` -> ``(N, classes)``, e.g.
    :func:`chains_lite.methods.probing.fit_linear`'s classifier."""
    _check_timm_vit(model)

    def classify(x):
        return head(model.forward_features(x)[:, model.num_prefix_tokens:].mean(1))
    return classify
