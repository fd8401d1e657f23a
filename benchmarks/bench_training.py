"""Seconds per training step of each lite model, by precision and compilation.

    python benchmarks/bench_training.py [--models shapes-unet shapes-flux] [--batch 64]
                                        [--repeats 5] [--device cpu|cuda]

A step is what the training loop (``chains_lite.zoo.training.train``) does per step: a batch drawn
from the objective's precomputed pool, forward and loss, backward, gradient clipping, AdamW (fused,
``training.fast.optimizer``, except in the baseline). Variants:

* ``fp32 AdamW``: everything in float32, and torch's default AdamW (on the CPU one parameter
  at a time): the baseline of the speed-ups;
* ``fp32``: everything in float32, the fused AdamW (the loop's default);
* ``bf16 attn bf16``: bf16 autocast around forward and loss, attention by torch's
  scaled-dot-product kernel in bf16;
* ``bf16``: the loop's ``--precision bf16`` (``training.fast.precision_context``: on the CPU the
  attention as plain matrix products, bf16 around a float32 softmax);
* ``bf16 + compile``: the same with the model's forward compiled (``--compile``);
* ``fp32 + compile``.

Each variant is warmed up by 3 steps (compilation included), then timed for ``--repeats`` steps;
the table shows the minimum seconds per step and the speed-up against ``fp32 AdamW`` in the same
run.

Measured on the 2-core CPU (AMX-BF16), torch 2.14.1, 2 threads, batch 64, no other job running
(a training job on one core stopped with SIGSTOP for the run), 2026-12-06 (seconds per step, min
of 5; speed-up against ``fp32 AdamW``):

==============  ===============  ===============  ===============  ===============  ===============  ===============
model           fp32 AdamW       fp32             bf16 attn bf16   bf16             bf16 + compile   fp32 + compile
==============  ===============  ===============  ===============  ===============  ===============  ===============
shapes-unet     0.628 (1.00x)    0.625 (1.00x)    0.471 (1.33x)    0.359 (1.75x)    0.335 (1.87x)    0.653 (0.96x)
shapes-flux     0.938 (1.00x)    0.940 (1.00x)    0.821 (1.14x)    0.652 (1.44x)    0.447 (2.10x)    0.827 (1.13x)
shapes-vit      0.193 (1.00x)    0.198 (0.97x)    0.237 (0.81x)    0.119 (1.63x)    0.098 (1.96x)    0.180 (1.07x)
shapes-vit-ssl  0.428 (1.00x)    0.424 (1.01x)    0.511 (0.84x)    0.244 (1.76x)    0.224 (1.91x)    0.402 (1.06x)
==============  ===============  ===============  ===============  ===============  ===============  ===============

The fused AdamW does not change the step time measurably here (the first two columns). An
earlier run of the same variants gave bf16 + compile 1.95x (shapes-unet) and 1.90x (shapes-flux)
against ``fp32``: between runs the ratios move by about 0.1. In a profile of the compiled bf16
shapes-unet step (one thread), inductor's fused group-norm, SiLU and softmax kernels (forward and
backward) take about 55 % of the step, the convolutions 27 %, the matrix products 12 %.

In bf16 the convolutions and matrix products run on AMX; torch's attention kernel in bf16 took
longer than in float32 (the ``bf16 attn bf16`` column, and the ViTs' slowdown there), while the
same attention as plain matrix products gains with the rest. channels_last weights and inputs
made the bf16 shapes-unet step slower in a profiling run, so the loop does not use them; nor did
compiling the whole loss (model, noise and loss) beat compiling the model's forward.

The speed-ups need the CPU's bf16 units. On a 2-core AVX-512 CPU without AVX-512 BF16 or AMX
(2026-12-07, torch 2.14.1, one thread pinned to one core, a one-thread job on the other core;
shapes-unet only, min of 3), bf16 autocast is emulated, and the step is three times slower:

==============  ===============  ===============  ===============  ===============  ===============
model           fp32 AdamW       fp32             bf16             bf16 + compile   fp32 + compile
==============  ===============  ===============  ===============  ===============  ===============
shapes-unet     1.320 (1.00x)    1.404 (0.94x)    4.144 (0.32x)    4.158 (0.32x)    1.358 (0.97x)
==============  ===============  ===============  ===============  ===============  ===============

The trainer warns when ``--precision bf16`` meets such a CPU (``training.fast.native_bf16``).

The 2026-11-25 cards of shapes-unet (the first row of its card's history) and shapes-flux gave
1.7 s and 5.7 s per step: their wall time divided by their steps (1159 s / 700 and 13579 s / 2400),
float32 on 2 threads, on the machine as it was loaded then.
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

from chains_lite.zoo.models import build
from chains_lite.zoo.training.fast import compiled_forward, optimizer, precision_context
from chains_lite.zoo.training.objectives import TRAINING
from chains_lite.zoo.training.train import CLIP_NORM, WEIGHT_DECAY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import timed  # noqa: E402  (benchmarks/ is not a package)

BASELINE = "fp32 AdamW"
VARIANTS = {  # name -> (precision or "autocast" for bf16 autocast alone, compile, fused AdamW)
    BASELINE: ("fp32", False, False),
    "fp32": ("fp32", False, True),
    "bf16 attn bf16": ("autocast", False, True),
    "bf16": ("bf16", False, True),
    "bf16 + compile": ("bf16", True, True),
    "fp32 + compile": ("fp32", True, True),
}


def step_time(name: str, variant: str, batch: int, repeats: int, device: torch.device, pool: int = 256) -> float:
    """Minimum seconds of one training step of ``name`` in ``variant`` over ``repeats`` timed steps."""
    precision, compile_, fused = VARIANTS[variant]
    plan = TRAINING[name]
    args = types.SimpleNamespace(name=name, pool=pool, seed=0, size=plan.training.size, cond_dropout=0.1,
                                 config={}, init=False)
    torch.manual_seed(0)
    model, loss_fn, _ = plan.objective(args, device, lambda: build(name).to(device).train())
    if fused:
        opt = optimizer(model.parameters(), lr=1e-4, weight_decay=WEIGHT_DECAY)
    else:  # torch's default AdamW: on the CPU one parameter at a time
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(0)
    dgen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(1)

    def context():
        if precision == "autocast":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return precision_context(device, precision)

    def step():
        idx = torch.randint(pool, (batch,), generator=gen).to(device)
        with context():
            loss = loss_fn(idx, dgen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()

    with compiled_forward(model, device, enabled=compile_):
        for _ in range(3):
            step()
        return min(timed(step, repeats, str(device)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["shapes-unet", "shapes-flux", "shapes-vit", "shapes-vit-ssl"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch} "
          f"repeats={args.repeats}")
    if BASELINE not in args.variants:
        args.variants = [BASELINE, *args.variants]
    width = max(map(len, args.variants)) + 12
    header = f"{'model':<16}" + "".join(f"{v:>{width}}" for v in args.variants)
    print(header)
    print("-" * len(header))
    for name in args.models:
        secs = {}
        for v in args.variants:
            secs[v] = step_time(name, v, args.batch, args.repeats, device)
        cells = [f"{secs[v]:.3f} s ({secs[BASELINE] / secs[v]:.2f}x)" for v in args.variants]
        print(f"{name:<16}" + "".join(f"{c:>{width}}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
