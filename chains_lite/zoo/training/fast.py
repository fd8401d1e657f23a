"""How a training step runs fast: bf16 autocast, attention as plain matrix products on the CPU,
torch.compile.

* ``precision="bf16"``: the step runs under ``torch.autocast(dtype=torch.bfloat16)``: matrix
  products and convolutions in bfloat16 (on a CPU with AMX or AVX-512 BF16, and on a GPU, several
  times faster than float32), weights, gradients and the optimiser in float32.
* On the CPU, scaled-dot-product attention is computed as two matrix products around a float32
  softmax (:func:`matmul_attention`), which autocast runs on the bf16 units: torch's CPU
  flash-attention backward in bfloat16 is slower than in float32 (in a profile of shapes-unet's
  step it took 3x the time of the float32 kernel), and the float32 kernel took 38 % of
  shapes-flux's step. The ``bf16 attn bf16`` column of ``benchmarks/bench_training.py`` gives what
  the bf16 kernel costs a whole step.
* ``compile=True``: the model's ``forward`` goes through ``torch.compile`` for the loop (fused
  element-wise work; on a GPU ``mode="reduce-overhead"`` also replays the step's kernels as a CUDA
  graph, which is what a tiny model needs there, as it is launch-bound).

``benchmarks/bench_training.py`` measures each of these per model, in one table.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    return precision


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix products in hardware: a CUDA GPU that supports bf16,
    or a CPU with AVX-512 BF16 or AMX. Elsewhere autocast emulates bf16, and a step is slower
    than in float32 (shapes-unet: 3x, on an AVX-512 CPU without BF16; benchmarks/bench_training.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = [getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(f() for f in probes if f is not None) or all(f is None for f in probes)
    return True


def _matmul_attention(original):
    """``scaled_dot_product_attention`` as ``softmax(scale q k^T + mask) v`` in plain operations
    (the float32 softmax is autocast's rule); with dropout or grouped-query heads, ``original``."""
    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False):
        if dropout_p or enable_gqa:
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        scores = (query * scale) @ key.transpose(-2, -1)  # (..., L, S)
        if is_causal:
            keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                      else scores + attn_mask)
        return scores.softmax(-1).to(value.dtype) @ value
    return attention


@contextlib.contextmanager
def matmul_attention():
    """Within the block, ``torch.nn.functional.scaled_dot_product_attention`` is computed as
    ``softmax(scale q k^T + mask) v`` with plain matrix products, so that autocast runs them in
    bf16 (the softmax in float32). Models that look the function up at call time (timm's and
    diffusers' attention do) see the replacement; it is restored on exit."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _matmul_attention(original)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def precision_context(device: torch.device, precision: str):
    """The context one training step (forward and loss) runs in: none for ``"fp32"``; bf16
    autocast for ``"bf16"``, with :func:`matmul_attention` on the CPU."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cpu":
        stack.enter_context(matmul_attention())
    return stack


@contextlib.contextmanager
def compiled_forward(model: torch.nn.Module, device: torch.device, enabled: bool = True):
    """Within the block, ``model(...)`` runs ``torch.compile(model.forward)`` (mode
    ``"reduce-overhead"`` on a GPU: CUDA graphs; the default on the CPU). The module, its
    parameters and its ``state_dict`` are unchanged; on exit ``model.forward`` is the plain
    method again. ``enabled=False``: nothing changes."""
    if not enabled:
        yield model
        return
    mode = "reduce-overhead" if device.type == "cuda" else None
    model.forward = torch.compile(model.forward, mode=mode)
    try:
        yield model
    finally:
        del model.forward  # the instance attribute; the class's method is seen again


def optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The training loop's AdamW, in torch's fused implementation (one kernel for all
    parameters: on the CPU a quarter of the per-step optimiser time of the default)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
