"""Linear probing of attention maps (paper App. B, Tables 5-6): how much class information does
each kind of attention visualisation carry?

Features: for every layer and head, a visualisation over the tokens (TokenRank, column sum, center
row, CLS row, or the row of a random patch), the CLS entry dropped, all concatenated. A linear
classifier is trained on them with SGD for a few epochs at each learning rate of a small sweep; the
rate with the best validation accuracy gives the test accuracy. Repeating over seeds gives mean ±
std and a paired test between two visualisations.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from ..core.progress import progress_bar

from ..capture import capture
from ..core import scores
from ..core.chain import mix
from ..core.numerics import one_thread

PROBE_METHODS = scores.select("tokenrank", "column_sum", "center_row", "cls_row", "random_row")
HEAD_SCHEMES = scores.HEAD_SCHEMES
# Features are standardised, so rates suit unit-scale inputs (the paper's 1e-5..1e-3 grid was for
# its raw 900x900 maps).
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def attention_features(model, images: torch.Tensor, methods: Sequence[str] = PROBE_METHODS,
                       layers=None, head_scheme: str | None = None, batch_size: int = 100,
                       seed: int = 0, progress: bool = True) -> dict:
    """Visualisations of all captured layers and heads as feature vectors.

    images: ``(N, 3, H, W)`` model input. Returns ``{method: (N, L * H * (T - 1))}`` float32 (T
    tokens, the CLS entry dropped). With ``head_scheme`` (``"uniform"``, ``"random"``,
    ``"lambda2"``) the heads of each layer are mixed first (paper Table 6): ``(N, L * (T - 1))``.
    """
    if head_scheme is not None and head_scheme not in HEAD_SCHEMES:
        raise ValueError(f"head_scheme must be one of {HEAD_SCHEMES} or None, got {head_scheme!r}")
    gen = torch.Generator().manual_seed(seed)
    feats = {m: [] for m in methods}
    for i in progress_bar(range(0, len(images), batch_size), desc="features", disable=not progress):
        with torch.no_grad(), capture(model, layers=layers, device="cpu") as rec:
            model(images[i:i + batch_size])
        lay = rec.layout
        keep = [t for t in range(rec.attentions[0].shape[-1]) if t != lay.cls_index]
        for m in methods:
            per_layer = []
            for A in rec.attentions:
                if head_scheme is not None:
                    A = mix(A, head_scheme, generator=gen)[:, None]
                per_layer.append(scores.token_scores(A, m, lay, gen)[..., keep].flatten(1))
            feats[m].append(torch.cat(per_layer, 1))
    return {m: torch.cat(v).float() for m, v in feats.items()}


def per_layer(features: torch.Tensor, n_layers: int) -> torch.Tensor:
    """:func:`attention_features` of ``n_layers`` layers, ``(N, L * F)`` -> ``(N, L, F)``: row
    ``[:, l]`` is layer ``l``'s part (the layers are concatenated in depth order)."""
    if features.ndim != 2 or n_layers < 1 or features.shape[1] % n_layers:
        raise ValueError(f"features of shape {tuple(features.shape)} do not split into {n_layers} layers")
    return features.reshape(len(features), n_layers, -1)


def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(X).argmax(-1) == y).float().mean().item()


def linear_probe(train: tuple, val: tuple, test: tuple, lrs: Sequence[float] = LEARNING_RATES,
                 epochs: int = 20, batch_size: int = 64, seed: int = 0) -> dict:
    """Train ``nn.Linear`` with SGD (momentum 0.9) at each rate; report the best on validation.

    train / val / test: ``(X (N, F), y (N,))``. Features are standardised with the training mean
    and std. Returns ``{"test_accuracy", "val_accuracy", "lr"}``.
    """
    clf, best = fit_linear(train, val, lrs, epochs, batch_size, seed,
                           n_classes=int(max(train[1].max(), val[1].max(), test[1].max())) + 1)
    return {"val_accuracy": best["val_accuracy"], "test_accuracy": _accuracy(clf, *test), "lr": best["lr"]}


def fit_linear(train: tuple, val: tuple, lrs: Sequence[float] = LEARNING_RATES, epochs: int = 20,
               batch_size: int = 64, seed: int = 0, n_classes: int | None = None):
    """The classifier of :func:`linear_probe`: ``(clf, {"val_accuracy", "lr"})``.

    train / val: ``(X (N, F), y (N,))``. ``clf`` is an ``nn.Linear(F, classes)`` that takes raw
    features ``X``: the training mean and std it was trained with are applied inside it.
    n_classes: default one more than the largest label of train and val.
    """
    with one_thread():   # thousands of tiny steps: threading costs more than it saves
        return _fit_linear(train, val, lrs, epochs, batch_size, seed, n_classes)


class _Standardised(nn.Module):
    def __init__(self, mu, sd, linear):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)
        self.linear = linear

    def forward(self, X):
        return self.linear((X - self.mu) / self.sd)


def _fit_linear(train, val, lrs, epochs, batch_size, seed, n_classes):
    Xtr, ytr = train
    if len(Xtr) == 0 or len(val[0]) == 0:
        raise ValueError(f"train and val need at least one item each, got {len(Xtr)} and {len(val[0])}")
    # one training item has no spread: its features are only centred
    mu = Xtr.mean(0)
    sd = Xtr.std(0).clamp_min(1e-8) if len(Xtr) > 1 else torch.ones_like(mu)
    Xtr = (Xtr - mu) / sd
    if n_classes is None:
        n_classes = int(max(ytr.max(), val[1].max())) + 1
    best, best_clf = None, None
    for lr in lrs:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        clf = nn.Linear(Xtr.shape[1], n_classes)
        opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9)
        for _ in range(epochs):
            for idx in torch.randperm(len(Xtr), generator=g).split(batch_size):
                opt.zero_grad()
                nn.functional.cross_entropy(clf(Xtr[idx]), ytr[idx]).backward()
                opt.step()
        model = _Standardised(mu, sd, clf).eval()
        va = _accuracy(model, *val)
        if best is None or va > best["val_accuracy"]:
            best, best_clf = {"val_accuracy": va, "lr": lr}, model
    return best_clf, best
