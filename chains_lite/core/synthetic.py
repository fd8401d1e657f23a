"""Synthetic attention-like matrices for tests and benchmarks.

Uniform random stochastic matrices mix almost instantly (|lambda_2| ~ 1/sqrt(n)) and say
little about real attention. These come from ``softmax(temperature * q k^T / d)`` with
queries and keys built from spatially smooth token features plus noise, so nearby tokens
attend to each other and |lambda_2| spreads from fast-mixing (~0.05) to slowly mixing
(~0.99) heads as the per-head temperature grows.
"""
from __future__ import annotations

import math

import torch


def attention_like(heads: int, n: int, d: int = 64, seed: int = 0,
                   temperature: tuple[float, float] = (0.5, 4.0)) -> torch.Tensor:
    """Attention-like right-stochastic matrices, one per head.

    Tokens sit on a ``sqrt(n) x sqrt(n)`` grid (row-major; a partial last row if n is not
    a square). Features are random Fourier features of the position (smooth in space) plus
    Gaussian noise; ``q = x W_q`` and ``k = x W_k`` with correlated ``W_q, W_k``. Head ``h``
    uses a temperature linearly spaced in ``temperature``. Deterministic given ``seed``.

    Returns ``(heads, n, n)`` float32, rows summing to 1.
    """
    q, k, temp = _features(heads, n, d, seed, temperature)
    return torch.softmax(temp.view(heads, 1, 1) * (q @ k.mT) / d, dim=-1)


def attention_qk(heads: int, n: int, d: int = 64, seed: int = 0,
                 temperature: tuple[float, float] = (0.5, 4.0)):
    """The queries and keys behind ``attention_like``, for matrix-free chains.

    Returns ``q, k``, each ``(heads, n, d)`` float32, with the head temperatures folded into
    ``q`` so that ``softmax(q k^T / sqrt(d))`` is ``attention_like(heads, n, d, seed,
    temperature)`` (up to float32 rounding): ``LazyAttention(q, k)`` is that chain.
    """
    q, k, temp = _features(heads, n, d, seed, temperature)
    return q * (temp.view(heads, 1, 1) / math.sqrt(d)), k


def _features(heads, n, d, seed, temperature):
    g = torch.Generator().manual_seed(seed)
    side = max(math.isqrt(n), 1)
    idx = torch.arange(n)
    pos = torch.stack([idx // side, idx % side], -1).float() / side  # (n, 2)
    omega = torch.randn(heads, 2, d, generator=g) * 3.0
    phase = torch.rand(heads, 1, d, generator=g) * 2 * math.pi
    x = torch.cos(2 * math.pi * pos @ omega + phase) * math.sqrt(2.0)  # (heads, n, d)
    x = x + 0.8 * torch.randn(heads, n, d, generator=g)
    w_q = torch.randn(heads, d, d, generator=g) / math.sqrt(d)
    w_k = w_q + 0.5 * torch.randn(heads, d, d, generator=g) / math.sqrt(d)
    lo, hi = temperature
    temp = torch.linspace(lo, hi, heads) if heads > 1 else torch.tensor([(lo + hi) / 2])
    return x @ w_q, x @ w_k, temp
