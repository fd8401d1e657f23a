"""Self-attention guidance with column-sum and TokenRank masks (paper Sec. 5.3, Table 2).

    python benchmarks/sag.py --mode lite --n-samples 64 --seed 0 --out r.json
    python benchmarks/sag.py --mode full --prompts prompts.txt --reference real_images/ \\
        --n-samples 5000 --out r.json
    accelerate launch benchmarks/sag.py --mode full ... --out r.json   # the same, on every GPU

Runs on :func:`chains_lite.experiments.runner.run`: per-sample records go to ``--run-dir`` (default: ``--out``
with ``.run``) as they are made, so a rerun of the same command resumes, and ``accelerate launch``
shares the samples among processes; sample ``i`` starts from the noise of its own seed, so the
JSON does not depend on the batch size or the number of processes.

Lite: ``shapes-unet`` (unconditional, DDIM) scored in ``shapes-vit`` feature space against fresh
ShapeWorld val images: Fréchet distance, KID, an IS analogue, the share classified with p >= 0.9
(these are not FID / KID / IS). Full: SD1.5 with classifier-free guidance on prompts from a file
(one per line, sample i takes line i), PNGs next to the JSON, FID / KID / IS from the FID
Inception network against a folder of reference images (torchmetrics, downloads at first use).
Methods ``none`` and SAG with column-sum and TokenRank masks, each without and with the
``--cap`` (``sag_column_sum``, ``sag_tokenrank``, ``sag_column_sum_capped``,
``sag_tokenrank_capped``), run on the same seeds at every ``--scales``; the first table prints each
metric with its 95 % bootstrap interval beside Table 2, the second the paired differences TokenRank
- column sum at equal cap, and the JSON holds per method the metrics and intervals, the sweep and the paired differences, and
``identity`` (the weights' checkpoint digests, hub id or ``"random"``, and the prompts' and
reference images' size and time: a rerun with any of them changed is refused).
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from chains_lite import zoo
from chains_lite.experiments import cli, runner
from chains_lite.experiments import sag as exp
from chains_lite.methods.sag import LAYERS
from chains_lite.viz.tables import markdown_table


def main(argv=None):
    ap = cli.parser(__doc__, items="samples")
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--scales", type=float, nargs="+", default=None, help="default lite 0.5 1 2, full 0.75")
    ap.add_argument("--headline", type=float, default=None,
                    help="the scale of the main table (default 1 if among --scales, else the smallest)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps; default lite 20, full 50")
    ap.add_argument("--layer", choices=LAYERS, default="decoder")
    ap.add_argument("--cap", type=float, default=exp.CAP, help="the capped arms' masked-share ceiling")
    ap.add_argument("--batch", type=int, default=None, help="samples per chunk; default lite 16, full 8")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--prompts", type=Path, help="full mode: a text file, one prompt per line")
    ap.add_argument("--reference", type=Path, help="full mode: a folder of real images (png/jpg)")
    ap.add_argument("--cfg", type=float, default=7.5, help="full mode: classifier-free guidance scale")
    args = ap.parse_args(argv)
    if args.out is None:
        ap.error("--out is required: the JSON file to write")
    full = args.mode == "full"
    scales = args.scales or ([0.75] if full else [0.5, 1.0, 2.0])
    steps = args.steps or (50 if full else 20)
    batch = args.batch or (8 if full else 16)
    cli.at_least_one(ap, args, "n_samples", "steps", "batch", "n_boot")
    if args.n_samples < 2:
        ap.error("--n-samples must be >= 2 (KID and the Fréchet distance need two samples)")
    if not (0 < args.cap <= 1):
        ap.error(f"--cap must be in (0, 1], got {args.cap}")
    try:
        exp.runs(scales)
        if args.headline is not None and args.headline not in scales:
            ap.error(f"--headline {args.headline} is not among --scales {scales}")
        if full:
            if args.prompts is None or args.reference is None:
                ap.error("full mode needs --prompts FILE and --reference FOLDER")
            prompts = exp.read_prompts(args.prompts)
            if len(prompts) < args.n_samples:
                ap.error(f"{args.prompts} has {len(prompts)} prompts, fewer than --n-samples {args.n_samples}")
            refs = sorted(p for p in args.reference.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if len(refs) < 2:
                ap.error(f"{args.reference} holds fewer than 2 png/jpg images")
    except (ValueError, OSError) as e:
        ap.error(str(e))
    out_path = cli.claim(ap, args)
    cli.preflight(ap, args, "sd15", data={"--prompts": args.prompts, "--reference": args.reference},
                  packages=[] if zoo.random_weights() else ["torchmetrics"])  # a dry run: Inception stand-in

    t0 = time.time()
    common = dict(scales=scales, steps=steps, seed=args.seed, layer=args.layer, cap=args.cap)
    if full:
        loaded = zoo.load("sd15", mode="full", device=runner.state().device)
        encode, decode = exp.sd_codec(loaded)
        work = functools.partial(exp.full_work, unet=loaded.model, scheduler=_ddim(loaded.scheduler),
                                 encode=encode, decode=decode, prompts=prompts, cfg=args.cfg,
                                 out_dir=out_path.with_suffix(""), **common)
        identity = cli.run_identity(loaded, {"--prompts": args.prompts, "--reference": args.reference})
        records = cli.run(work, args.n_samples, args,
                          dict(common, mode="full", model=loaded.name, cfg=args.cfg, prompts=str(args.prompts),
                               reference=str(args.reference), identity=identity),
                          batch=batch, desc="sag samples")
        if records is None:  # not the main process: it has written its share
            return 0
        table = exp.summarize_full(records, refs, headline=args.headline, n_boot=args.n_boot, seed=args.seed)
    else:
        loaded = zoo.load("shapes-unet", mode="lite", device="cpu")
        judge_loaded = zoo.load("shapes-vit", mode="lite", device="cpu", verbose=False)
        judge = judge_loaded.model
        work = functools.partial(exp.lite_work, unet=loaded.model, scheduler=_ddim(loaded.scheduler),
                                 judge=judge, **common)
        identity = cli.run_identity(loaded, judge=judge_loaded)
        records = cli.run(work, args.n_samples, args, dict(common, mode="lite", model=loaded.name, identity=identity),
                          batch=batch, desc="sag samples")
        if records is None:
            return 0
        ref = exp.lite_reference(judge, max(500, args.n_samples), args.n_samples, seed=args.seed,
                                 size=loaded.model.config.sample_size)
        table = exp.summarize(records, ref["reference"], ref["real"], headline=args.headline,
                              n_boot=args.n_boot, seed=args.seed)
    seconds = time.time() - t0
    print(f"\n[{loaded.mode} mode] {table['n_samples']} samples, SAG scale {table['headline_scale']:g}, "
          "95 % bootstrap intervals; paper = Table 2, SD1.5, 50K samples")
    print(markdown_table(*exp.method_rows(table, loaded.mode, args.cap)))
    print("\npaired differences at equal cap:")
    print(markdown_table(*exp.contrast_rows(table, loaded.mode)))
    settings = dict(mode=loaded.mode, model=loaded.name, seed=args.seed, steps=steps, sampler="DDIM (eta=0)",
                    scales=scales, layer=args.layer, cap=args.cap, blur="gaussian 9 taps, sigma 1",
                    cfg=args.cfg if full else None, seconds=round(seconds, 1),
                    paper_table2=exp.PAPER_TABLE2, metric_space="inception" if full else "shapes-vit",
                    identity=identity)
    cli.write(out_path, {**settings, **table})
    return 0


def _ddim(scheduler):
    from diffusers import DDIMScheduler
    return DDIMScheduler.from_config(scheduler.config)


if __name__ == "__main__":
    sys.exit(main())
