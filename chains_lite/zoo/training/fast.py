"""How a training step runs fast: bf16 autocast, attention kept in float32 on the CPU, torch.compile.

* ``precision="bf16"``: the step runs under ``torch.autocast(dtype=torch.bfloat16)``: matrix
  products and convolutions in bfloat16 (on a CPU with AMX or AVX-512 BF16, and on a GPU, several
  times faster than float32), weights, gradients and the optimiser in float32.
* On the CPU, scaled-dot-product attention is left in float32 (:func:`float32_attention`): torch's
  CPU flash-attention backward in bfloat16 is slower than in float32 (in a profile of shapes-unet's
  step it took 3x the time of the float32 kernel; the ``bf16 attn bf16`` column of
  ``benchmarks/bench_training.py`` gives what it costs a whole step).
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


@contextlib.contextmanager
def float32_attention():
    """Within the block, ``torch.nn.functional.scaled_dot_product_attention`` computes in float32
    with autocast off (its floating-point inputs are cast up; the output is float32, which the
    next layer's autocast casts down again). Models that look the function up at call time
    (timm's and diffusers' attention do) see the replacement; it is restored on exit."""
    original = F.scaled_dot_product_attention

    def attention(*args, **kwargs):
        up = lambda x: x.float() if torch.is_tensor(x) and x.is_floating_point() else x  # noqa: E731
        with torch.autocast("cpu", enabled=False):
            return original(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def precision_context(device: torch.device, precision: str):
    """The context one training step (forward and loss) runs in: none for ``"fp32"``; bf16
    autocast for ``"bf16"``, with :func:`float32_attention` on the CPU."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cpu":
        stack.enter_context(float32_attention())
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
