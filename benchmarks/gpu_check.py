"""The GPU checks in one run: the solvers against the naive GPU methods, ``bench_lazy.py`` at full
size, and the full-size architectures through the chapters' code paths, with random weights.

    python benchmarks/gpu_check.py --out DIR [--tiny] [--parts solvers,lazy,models] [--repeats 3]
                                   [--lazy-timeout 240] [--device cuda|cpu]

Writes ``DIR/gpu_check.json`` (every row) and ``DIR/gpu_check.txt`` (the printed tables; also
``DIR/bench_lazy.txt``, that script's own output). Each part is written as soon as it ends, so a
run cut short keeps what it measured. ``--tiny`` runs every part at reduced sizes (on a CPU in
seconds: that is how the script is tested); its figures mean nothing.

* **solvers** (``HxN`` or ``HxN@T``: heads, tokens, every head's temperature; ``attention_like``,
  seed 0, float32). TokenRank (alpha = 0.99, ``tol=1e-6``) against the power method a user would
  write, ``v <- alpha v P + (1 - alpha) / n`` for a fixed number of steps with no convergence
  test, given the fewest steps (from a doubling ladder) whose L1 error meets ours or 1e-6; both
  errors are against a float64 dense solve on the device. lambda2 (``tol=1e-5``) against
  ``torch.linalg.eigvals`` of the float32 heads on the device (n <= 1024; its error against float64
  ``eigvals``). Full sizes: 12x197, 12x1024, 24x4608 (FLUX's 4096 + 512 tokens, 24 heads), 1x4096@4.
* **lazy**: ``benchmarks/bench_lazy.py --sizes 4608,16384 --heads 24`` in a subprocess.
* **models**: FLUX.1-schnell's transformer (its real diffusers config, bfloat16, 1024 px: 4096
  image + 256 text tokens), Stable Diffusion 1.5's UNet (real config, float16, 512 px: 64x64
  latents, 77 text tokens) and DINOv2-B/14 with 4 registers (timm, 518 px, float32), built from
  their configs with random weights (``--tiny``: the reduced configs of ``chains_lite.zoo.dryrun``
  at small resolutions). Steps: a plain forward; chapter 2-3's maps (``capture`` of the last
  layer, ``maps.global_map`` TokenRank, ``head_weights`` by lambda2) on DINOv2; chapter 4's SAG step
  (``sag.guided_eps`` with a TokenRank mask) and chapter 5's DiffSeg (``diffseg.self_attention``
  matrix-free, ``aggregate``, ``segment``) on the UNet; chapter 3's FLUX protocol
  (``segmentation.noised_attention``, two Euler steps, last double block, matrix-free) and
  TokenRank and lambda2 on its 24 x 4352 chains. Each step prints its time (min over repeats
  after a warm-up) and its peak GPU memory (``max_memory_allocated``), and the forward's peak is
  set against ``chains_lite.zoo.load.memory_plan``'s threshold for the model's largest component
  (``PIPELINE_GIB``) and the plan it picks for this GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

import chains_lite as cl
from chains_lite.core.numerics import batched_solve
from chains_lite.core.synthetic import attention_like

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import sync, timed  # noqa: E402  (benchmarks/ is not a package)

ALPHA = 0.99
TARGET = 1e-6
SIZES = {"full": "12x197,12x1024,24x4608,1x4096@4", "tiny": "2x64,2x300,1x300@4"}
LADDER = [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]
EIGVALS_MAX_N = 1024

# the real configurations (diffusers / timm names)
FLUX_SCHNELL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    guidance_embeds=False, axes_dims_rope=(16, 56, 56))
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
DINOV2 = "vit_base_patch14_reg4_dinov2"


def measure(fn, device, repeats: int) -> dict:
    """``fn()`` once to warm up, then ``repeats`` times: min / max seconds and peak GPU memory
    (GiB, since the warm-up's start; None on a CPU)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = fn()
    times = timed(fn, repeats, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"t_min": min(times), "t_max": max(times), "peak_gib": peak, "out": out}


# --------------------------------------------------------------------------- solvers
def reference_tokenrank(A64: torch.Tensor) -> torch.Tensor:
    """float64 ``pi (I - alpha P) = (1 - alpha) / n``, normalised; ``(B, n, n)`` -> ``(B, n)``."""
    n = A64.shape[-1]
    M = torch.eye(n, dtype=A64.dtype, device=A64.device) - ALPHA * A64
    b = torch.full((A64.shape[0], n, 1), (1 - ALPHA) / n, dtype=A64.dtype, device=A64.device)
    pi = batched_solve(M.mT, b)[0][..., 0]
    return pi / pi.sum(-1, keepdim=True)


def fixed_power(A: torch.Tensor, steps: int) -> torch.Tensor:
    """The naive power method: ``steps`` bounces, no convergence test (no host read)."""
    P = A / A.sum(-1, keepdim=True)
    n = A.shape[-1]
    v = torch.full((A.shape[0], 1, n), 1.0 / n, dtype=A.dtype, device=A.device)
    for _ in range(steps):
        v = ALPHA * (v @ P) + (1 - ALPHA) / n
    return (v / v.sum(-1, keepdim=True))[:, 0]


def solver_row(heads, n, temperature, device, repeats) -> dict:
    kw = {} if temperature is None else {"temperature": (temperature, temperature)}
    A = attention_like(heads, n, seed=0, **kw).to(device)
    A64 = A.double() / A.double().sum(-1, keepdim=True)
    pi = reference_tokenrank(A64)
    l1 = lambda v: float((v.double() - pi).abs().sum(-1).max())
    row = {"heads": heads, "n": n, "temperature": temperature}
    ours = measure(lambda: cl.tokenrank(A, alpha=ALPHA, tol=TARGET), device, repeats)
    row["tokenrank"] = {"s": ours["t_min"], "s_max": ours["t_max"], "err": l1(ours["out"]),
                        "peak_gib": ours["peak_gib"]}
    goal = max(row["tokenrank"]["err"], TARGET)
    # float32 first; its rounding floor (~eps32 / (1 - alpha |lambda2|)) can sit above the goal
    for dtype in (torch.float32, torch.float64):
        A_p = A.to(dtype)
        steps = next((s for s in LADDER if l1(fixed_power(A_p, s)) <= goal), None)
        if steps is not None:
            p = measure(lambda: fixed_power(A_p, steps), device, repeats)
            row["power"] = {"steps": steps, "dtype": str(dtype)[6:], "s": p["t_min"], "s_max": p["t_max"],
                            "err": l1(p["out"])}
            break
    else:
        row["power"] = {"steps": None, "err": l1(fixed_power(A_p, LADDER[-1]))}
    ref = torch.linalg.eigvals(A64).abs().sort(-1, descending=True).values[:, 1] if n <= EIGVALS_MAX_N else None
    err = (lambda l: float((l.double() - ref).abs().max())) if ref is not None else (lambda l: None)
    lam = measure(lambda: cl.lambda2(A, tol=1e-5), device, repeats)
    row["lambda2"] = {"s": lam["t_min"], "s_max": lam["t_max"], "err": err(lam["out"]), "peak_gib": lam["peak_gib"]}
    if n <= EIGVALS_MAX_N:
        e = measure(lambda: torch.linalg.eigvals(A).abs().sort(-1, descending=True).values[:, 1], device, repeats)
        row["eigvals"] = {"s": e["t_min"], "s_max": e["t_max"], "err": err(e["out"])}
    return row


def solver_table(rows) -> str:
    fmt = lambda x, f=".4f": "-" if x is None else format(x, f)
    lines = ["| heads x n | TokenRank s (err) | power s (steps, err) | ours vs power | "
             "lambda2 s (err) | eigvals s (err) | ours vs eigvals |", "|---" * 7 + "|"]
    for r in rows:
        t, p, l, e = r["tokenrank"], r["power"], r["lambda2"], r.get("eigvals")
        label = f"{r['heads']} x {r['n']}" + ("" if r["temperature"] is None else f" @{r['temperature']:g}")
        vs_p = f"{p['s'] / t['s']:.2f}x" if p.get("s") else "power not reached"
        vs_e = f"{e['s'] / l['s']:.1f}x" if e else "-"
        lines.append(f"| {label} | {fmt(t['s'])} ({t['err']:.1e}) | "
                     + (f"{fmt(p['s'])} ({p['steps']} {p['dtype']}, {p['err']:.1e})" if p.get("s") else
                        f"not reached ({p['err']:.1e})")
                     + f" | {vs_p} | {fmt(l['s'])} ({fmt(l['err'], '.1e')}) | "
                     + (f"{fmt(e['s'])} ({fmt(e['err'], '.1e')})" if e else "-") + f" | {vs_e} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- lazy
def run_lazy(device, tiny, out: Path, timeout: float) -> str:
    script = Path(__file__).with_name("bench_lazy.py")
    args = (["--sizes", "128", "--heads", "2", "--d", "16", "--ops", "tokenrank"] if tiny
            else ["--sizes", "4608,16384", "--heads", "24"])
    cmd = [sys.executable, str(script), *args, "--device", device, "--timeout", str(timeout)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    text = done.stdout + (f"\n(exit {done.returncode})\n{done.stderr[-2000:]}" if done.returncode else "")
    (out / "bench_lazy.txt").write_text(text)
    return text


# --------------------------------------------------------------------------- models
def build_dinov2(device, tiny):
    import timm
    from chains_lite.zoo import dryrun
    size = 98 if tiny else 518
    kw = {"embed_dim": 16 * 12, "depth": 2} if tiny else {}
    model = timm.create_model(DINOV2, pretrained=False, img_size=size, **kw).to(device).eval()
    assert dryrun  # the tiny widths follow dryrun's timm reduction (16 per head)
    return model, torch.rand(1, 3, size, size, device=device)


def build_unet(device, tiny):
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from chains_lite.zoo import dryrun
    cfg = dict(dryrun.SD_UNET, sample_size=8) if tiny else SD15_UNET
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.float16
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg).to(dtype).eval()
    side = cfg["sample_size"]
    x0 = torch.randn(1, 4, side, side, device=device, dtype=dtype)
    ctx = torch.randn(1, 77, cfg["cross_attention_dim"], device=device, dtype=dtype)
    return unet, PNDMScheduler.from_config(dryrun.SD_SCHEDULER), x0, ctx


def build_flux(device, tiny):
    from diffusers import FluxTransformer2DModel
    from chains_lite.zoo import dryrun
    from chains_lite.zoo.inputs import FluxInputs
    cfg = dryrun.FLUX_TRANSFORMER if tiny else FLUX_SCHNELL
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: 12B parameters do not fit twice
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    side, n_txt = (8, 16) if tiny else (64, dryrun.FLUX_T5_LENGTH)  # 1024 px: 128x128 latents, 2x2 packed
    ids = torch.zeros(side, side, 3, device=device)
    ids[..., 1] = torch.arange(side, device=device)[:, None]
    ids[..., 2] = torch.arange(side, device=device)[None, :]
    inputs = FluxInputs(x0=torch.randn(1, side * side, cfg["in_channels"], device=device, dtype=dtype),
                        text=torch.randn(1, n_txt, cfg["joint_attention_dim"], device=device, dtype=dtype),
                        pooled=torch.randn(1, cfg["pooled_projection_dim"], device=device, dtype=dtype),
                        img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(n_txt, 3, device=device), tokens={})
    return model, inputs


def model_rows(device, tiny, repeats) -> list[dict]:
    from chains_lite.capture import capture
    from chains_lite.methods import diffseg, maps, sag, segmentation
    rows = []

    def step(model, name, fn):
        m = measure(fn, device, repeats)
        rows.append({"model": model, "step": name, "s": m["t_min"], "s_max": m["t_max"], "peak_gib": m["peak_gib"]})
        print(f"  {model}: {name} {m['t_min']:.3f} s" + ("" if m["peak_gib"] is None else f", peak {m['peak_gib']:.2f} GiB"),
              flush=True)
        return m["out"]

    with torch.no_grad():
        vit, x = build_dinov2(device, tiny)
        step("DINOv2-B/14-reg", "forward", lambda: vit(x))

        def vit_maps():
            with capture(vit, layers=[-1]) as rec:
                vit(x)
            A = rec.attentions[0]
            return maps.global_map(A, "tokenrank", rec.layouts[0]), cl.head_weights(A, "lambda2")
        step("DINOv2-B/14-reg", "ch2-3 maps (capture, TokenRank, lambda2 weights)", vit_maps)
        del vit

        unet, sched, x0, ctx = build_unet(device, tiny)
        t = torch.tensor([500], device=device)
        step("SD1.5 UNet", "forward", lambda: unet(x0, t, encoder_hidden_states=ctx).sample)
        step("SD1.5 UNet", "ch4 SAG step (TokenRank mask)",
             lambda: sag.guided_eps(unet, sched, x0, t, sag.SAG(scale=0.75, source="tokenrank"), context=ctx))

        def diffseg_step():
            attns, grids = diffseg.self_attention(unet, x0, sched, cond={"encoder_hidden_states": ctx},
                                                  store="qk", noise=torch.zeros_like(x0).cpu())
            A = diffseg.aggregate(attns, grids)
            return diffseg.segment(A[0], 8 * x0.shape[-1])
        step("SD1.5 UNet", "ch5 DiffSeg (capture qk, aggregate, segment)", diffseg_step)
        del unet

        flux, inputs = build_flux(device, tiny)
        tt = torch.full((1,), 0.5, device=device, dtype=inputs.x0.dtype)
        step("FLUX.1-schnell transformer", "forward",
             lambda: flux(hidden_states=inputs.x0, encoder_hidden_states=inputs.text, pooled_projections=inputs.pooled,
                          timestep=tt, img_ids=inputs.img_ids, txt_ids=inputs.txt_ids).sample)

        def flux_chains():
            rec = segmentation.noised_attention(flux, inputs, layers=[-1], store="qk", device=device)
            A = rec.rec.lazy()[0]  # the JointAttention's Recorder
            return cl.tokenrank(A), cl.lambda2(A)
        step("FLUX.1-schnell transformer", "ch3 protocol (2 Euler steps, capture qk) + TokenRank + lambda2",
             flux_chains)
    return rows


def memory_checks(rows, device) -> list[dict]:
    """The forward's peak against ``memory_plan``'s threshold for the largest component."""
    from chains_lite.zoo.load import PIPELINE_GIB, memory_plan
    cuda = torch.device(device).type == "cuda"
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else 16.0
    bf16 = torch.cuda.is_bf16_supported() if cuda else True
    out = []
    for family, model in (("flux", "FLUX.1-schnell transformer"), ("sd", "SD1.5 UNet")):
        peak = max((r["peak_gib"] or 0.0) for r in rows if r["model"] == model) if cuda else None
        plan = memory_plan(family, gib, bf16)
        need = PIPELINE_GIB[family]["largest"]
        out.append({"family": family, "gpu_gib": gib, "plan": plan.offload, "dtype": str(plan.dtype),
                    "largest_estimate_gib": need, "measured_peak_gib": peak,
                    "within": None if peak is None else peak <= need})
    return out


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json / .txt")
    ap.add_argument("--tiny", action="store_true", help="reduced sizes (a CPU runs it in seconds)")
    ap.add_argument("--parts", default="solvers,lazy,models")
    ap.add_argument("--sizes", default=None, help="solver sizes, comma list of HxN or HxN@T")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lazy-timeout", type=float, default=240, help="seconds per bench_lazy case")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    unknown = set(parts) - {"solvers", "lazy", "models"}
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}")
    device = args.device
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "tiny": args.tiny, "repeats": args.repeats}
    text = [f"device={name} torch={torch.__version__} tiny={args.tiny} repeats={args.repeats}"]

    def save():
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
        (out / "gpu_check.txt").write_text("\n".join(text) + "\n")

    def say(s):
        print(s, flush=True)
        text.append(s)
        save()

    say(text[0])
    if "solvers" in parts:
        rows = []
        for s in (args.sizes or SIZES["tiny" if args.tiny else "full"]).split(","):
            shape, _, temp = s.partition("@")
            heads, n = (int(v) for v in shape.split("x"))
            print(f"solvers {s} ...", flush=True)
            rows.append(solver_row(heads, n, float(temp) if temp else None, device, args.repeats))
            report["solvers"] = rows
            save()
        say("\nSolvers: TokenRank (alpha 0.99, tol 1e-6) vs fixed-step power; lambda2 (tol 1e-5) vs eigvals\n"
            + solver_table(rows))
    if "lazy" in parts:
        print("bench_lazy ...", flush=True)
        lazy = run_lazy(device, args.tiny, out, args.lazy_timeout)
        report["bench_lazy"] = lazy
        say("\nbench_lazy.py:\n" + lazy.strip())
    if "models" in parts:
        print("models ...", flush=True)
        rows = model_rows(device, args.tiny, args.repeats)
        report["models"] = rows
        report["memory_plan"] = checks = memory_checks(rows, device)
        lines = ["| model | step | s (min-max) | peak GiB |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['step']} | {r['s']:.3f}-{r['s_max']:.3f} | "
                  + ("-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}") + " |" for r in rows]
        lines += ["", "memory_plan: | family | GPU GiB | plan | largest component estimate GiB | "
                  "measured peak GiB | within |"]
        lines += [f"| {c['family']} | {c['gpu_gib']:.0f} | {c['plan']} ({c['dtype']}) | {c['largest_estimate_gib']:g} | "
                  + ("-" if c["measured_peak_gib"] is None else f"{c['measured_peak_gib']:.2f}")
                  + f" | {'-' if c['within'] is None else c['within']} |" for c in checks]
        say("\nModels (random weights" + (", tiny configs" if args.tiny else ", real configs") + "):\n"
            + "\n".join(lines))
    return report


if __name__ == "__main__":
    main()
