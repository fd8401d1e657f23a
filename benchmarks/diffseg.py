"""Unsupervised segmentation with DiffSeg: uniform anchor grid vs TokenRank grid (paper Table 3).

    python benchmarks/diffseg.py --mode lite --n-images 64 --seed 0 --out r.json
    python benchmarks/diffseg.py --mode full --data $COCO_STUFF_ROOT --file-list Coco164kFull_Stuff_Coarse_7.txt \\
                                 --fine-to-coarse fine_to_coarse.json --out coco.json
    accelerate launch benchmarks/diffseg.py --mode full ... --out coco.json   # the same, on every GPU

Runs on :func:`chains_lite.experiments.runner.run`: per-image records go to ``--run-dir`` (default: ``--out``
with ``.run``) as they are made, so a rerun of the same command resumes, and ``accelerate launch``
shares the images among processes; the JSON does not depend on the batch size or the number of
processes (with ``--protocol noised``, image ``i`` is noised from its own seed).

Each image goes once through the UNet as DiffSeg runs it (``--protocol clean``, the default): the
clean input with the embedding of ``--timestep`` (300 of 1000), no noise added; ``--protocol
noised`` noises the input to that timestep first. The self-attention of every layer is aggregated
into one chain (``chains_lite.methods.diffseg.aggregate``), segmented from each anchor strategy
with the same merging threshold, and scored by Hungarian matching of segments to classes per image
(``chains_lite.eval.metrics.hungarian_counts``: pixel accuracy and mIoU from counts summed over the
dataset). Intervals: bootstrap over images, the same resamples for every strategy; the difference
row is paired.

* lite: ``shapes-unet`` on ShapeWorld test images (32 x 32, seeded; classes: background + the six
  shapes, exact masks). Token grid 16 x 16 (layers at 16 x 16 and 8 x 8), a 4 x 4 anchor grid
  (DiffSeg's 16 x 16 on SD's 64 x 64, scaled), spacing ``5 * 16 / 64`` tokens. The default
  threshold ``ds.LITE_THRESHOLD`` is the one of highest uniform-grid mIoU on 64 ShapeWorld
  *validation* images (``--sweep T1 T2 ...`` reruns that choice with
  ``chains_lite.experiments.diffseg.choose_threshold`` and prints it; ``--threshold`` sets the
  test run's); the KL scale of a 256-token chain is not SD's.
* full: SD1.5 (``zoo.load("sd15")``; DiffSeg used SD1.4, whose weights the zoo does not list;
  both share the UNet architecture) on COCO-Stuff-27: ``--data`` (default ``$COCO_STUFF_ROOT``)
  holds ``val2017/*.jpg`` and ``annotation_val2017/*.png`` (stuffthingmaps, fine labels), ``--file-list``
  the curated image ids (one per line, DiffSeg's and STEGO's list), ``--fine-to-coarse`` a JSON
  ``{fine id: coarse id}`` of the 27 classes (fine labels missing from it are ignored). Images are
  read one batch at a time, centre-cropped and resized to 512.

Prints a table beside the paper's and writes JSON: per strategy ``acc``, ``miou`` (fractions) and
their intervals, the paired difference, the settings, mode, model, time and ``identity`` (the
weights' checkpoint digest, hub id or ``"random"``, and the data files' size and time: a rerun
with any of them changed is refused). Never overwrites ``--out``.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chains_lite import zoo  # noqa: E402
from chains_lite.eval import metrics  # noqa: E402
from chains_lite.experiments import cli, runner  # noqa: E402
from chains_lite.experiments.diffseg import bootstrap, choose_threshold, score_chains, table_rows  # noqa: E402
from chains_lite.methods import diffseg as ds  # noqa: E402
from chains_lite.zoo.datasets import CocoStuff  # noqa: E402
from chains_lite.zoo.inputs import unet_inputs  # noqa: E402
from chains_lite.viz.tables import markdown_table  # noqa: E402
from chains_lite.zoo.shapeworld import CLASS_NAMES  # noqa: E402

LITE_CLASSES = 1 + len(CLASS_NAMES)
FULL_CLASSES = 27


def lite_batch(indices, seed, split="test"):
    """ShapeWorld images ``indices`` of the stream ``(split, seed)`` and their class masks."""
    b = zoo.shapeworld(max(indices) + 1, seed=seed, split=split, size=32)[list(indices)]
    return b.images, b.class_masks()


def make_work(loaded, args, load_batch, n_classes, strategies, threshold):
    """``work(indices) -> records``: one record per image with, per strategy, its Hungarian counts
    and segment count. The noise of image ``i`` is seeded by ``(seed, i)``: records do not depend
    on how the images are batched."""
    def work(indices):
        images, gt = load_batch(indices)
        x0, cond = unet_inputs(loaded, images)
        chains, _ = ds.image_chains(loaded.model, loaded.scheduler, x0, indices, args.seed, args.timestep, cond,
                                    args.protocol)
        scored = score_chains(chains, gt, n_classes, strategies, threshold=threshold,
                                 per_side=args.per_side, min_distance=args.min_distance, metric=args.distance)
        return [{"index": i} | {s: {k: np.asarray(v[j]).tolist() for k, v in scored[s].items()}
                                for s in strategies} for j, i in enumerate(indices)]
    return work


def counts_of(records, strategy):
    keys = ("tp", "fp", "fn", "pixels")
    return {k: np.array([r[strategy][k] for r in records]) for k in keys}


def summarize(records, strategies, n_boot, seed):
    return bootstrap({s: counts_of(records, s) | {"n_segments": np.array([r[s]["n_segments"] for r in records])}
                         for s in strategies}, n_boot=n_boot, seed=seed)


def check_args(ap, args):
    cli.at_least_one(ap, args, "n_images", "batch_size", "n_boot", "per_side")
    if args.threshold is not None and not args.threshold > 0:
        ap.error(f"--threshold must be > 0, got {args.threshold}")
    if not 0 <= args.timestep < 1000:
        ap.error(f"--timestep must be in [0, 1000), got {args.timestep}")
    bad = [s for s in args.strategies if s not in ds.STRATEGIES]
    if bad or not args.strategies:
        ap.error(f"unknown --strategies {bad}; choose from {ds.STRATEGIES}")
    if args.mode == "full":
        if not args.data or not Path(args.data).is_dir():
            ap.error("--mode full needs --data (or $COCO_STUFF_ROOT): the COCO-Stuff folder with "
                     f"val2017/ and annotation_val2017/ (got {args.data!r})")
        for flag, path in (("--file-list", args.file_list), ("--fine-to-coarse", args.fine_to_coarse)):
            if not path or not Path(path).is_file():
                ap.error(f"--mode full needs {flag}: an existing file (got {path!r}); see --help")


def main(argv=None):
    ap = cli.parser(__doc__)
    ap.add_argument("--n-images", type=int, default=None, help="default: 200 (lite), the whole list (full)")
    ap.add_argument("--strategies", nargs="+", default=["uniform", "tokenrank"],
                    help="anchor strategies; the first is the baseline of the paired difference")
    ap.add_argument("--threshold", type=float, default=None,
                    help=f"KL merging threshold (default: {ds.LITE_THRESHOLD} lite, "
                         f"{ds.KL_THRESHOLD['coco-stuff']} full)")
    ap.add_argument("--sweep", type=float, nargs="*", default=None,
                    help="lite: score these thresholds on ShapeWorld validation images first")
    ap.add_argument("--per-side", type=int, default=None, help="anchor grid side (default: token grid / 4)")
    ap.add_argument("--min-distance", type=float, default=None, help="anchor spacing in tokens (default 5/64 of the grid)")
    ap.add_argument("--distance", choices=ds.DISTANCES, default="euclidean")
    ap.add_argument("--timestep", type=int, default=ds.TIMESTEP)
    ap.add_argument("--protocol", choices=ds.PROTOCOLS, default="clean",
                    help="clean: DiffSeg's (the clean input at --timestep's embedding); "
                         "noised: noise the input to --timestep")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 (lite), 1 (full)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--data", default=os.environ.get("COCO_STUFF_ROOT"), help="full: COCO-Stuff folder")
    ap.add_argument("--file-list", default=None, help="full: curated image ids, one per line")
    ap.add_argument("--fine-to-coarse", default=None, help="full: JSON {fine label: coarse label}")
    args = ap.parse_args(argv)
    check_args(ap, args)
    out_path = cli.claim(ap, args)
    cli.preflight(ap, args, "sd15", data={"--data": args.data, "--file-list": args.file_list,
                                          "--fine-to-coarse": args.fine_to_coarse})
    t0 = time.perf_counter()
    batch = args.batch_size or (32 if args.mode == "lite" else 1)
    if args.mode == "lite":
        loaded = zoo.load("shapes-unet", mode="lite", device="cpu")
        n, n_classes, threshold = args.n_images or 200, LITE_CLASSES, args.threshold or ds.LITE_THRESHOLD
        load_batch = lambda idx: lite_batch(idx, args.seed)  # noqa: E731
    else:
        try:
            data = CocoStuff(args.data, args.file_list, args.fine_to_coarse)
        except ValueError as e:
            ap.error(str(e))
        if data.n_classes != FULL_CLASSES:
            ap.error(f"--fine-to-coarse maps to {data.n_classes} classes; COCO-Stuff-27 has {FULL_CLASSES}")
        loaded = zoo.load("sd15", mode="full", device=runner.state().device)
        n, n_classes = min(args.n_images or len(data), len(data)), FULL_CLASSES
        threshold = args.threshold or ds.KL_THRESHOLD["coco-stuff"]
        load_batch = data.batch
    config = dict(mode=args.mode, model=loaded.name, n_images=n, seed=args.seed, threshold=threshold,
                  timestep=args.timestep, protocol=args.protocol, per_side=args.per_side,
                  min_distance=args.min_distance, distance=args.distance, strategies=args.strategies,
                  data=args.data, file_list=args.file_list, fine_to_coarse=args.fine_to_coarse, sweep=args.sweep,
                  identity=cli.run_identity(loaded, {"--data": args.data, "--file-list": args.file_list,
                                                     "--fine-to-coarse": args.fine_to_coarse}))
    sweep = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "lite" and args.sweep:
            val = lambda idx: lite_batch(idx, args.seed, split="val")  # noqa: E731
            for thr in args.sweep:
                recs = runner.run(make_work(loaded, args, val, n_classes, args.strategies, thr), min(n, 64),
                                  Path(tmp) / f"val{thr}", dict(config, threshold=thr, split="val"), batch=batch,
                                  desc=f"val threshold {thr}")
                if recs is not None:
                    sweep[thr] = {s: metrics.scores_from_counts(counts_of(recs, s)) for s in args.strategies}
                    print(f"val threshold {thr}: " + ", ".join(
                        f"{s} acc {100 * v['acc']:.1f} mIoU {100 * v['miou']:.1f}" for s, v in sweep[thr].items()))
    chosen = choose_threshold(sweep, args.strategies[0]) if sweep else None
    if chosen is not None:
        print(f"validation choice: threshold {chosen} ({args.strategies[0]} grid, highest mIoU); "
              f"this run's threshold: {threshold}")
    with torch.no_grad():
        records = cli.run(make_work(loaded, args, load_batch, n_classes, args.strategies, threshold), n, args,
                          config, batch=batch, desc="diffseg")
    if records is None:  # not the main process: it has written its share
        return
    res = summarize(records, args.strategies, args.n_boot, args.seed)
    elapsed = time.perf_counter() - t0
    print(f"\n{loaded.name} ({args.mode} mode), {n} images, seed {args.seed}, threshold {threshold}, "
          f"timestep {args.timestep}, {elapsed:.1f} s; 95% bootstrap intervals")
    print(markdown_table(*table_rows(res, args.strategies)))
    print("paper: SD on COCO-Stuff-27 (Table 3). Lite numbers are ShapeWorld's, not the paper's.")
    cli.write(out_path, dict(mode=args.mode, model=loaded.name, n_images=n, seed=args.seed, threshold=threshold,
                             timestep=args.timestep, protocol=args.protocol, per_side=args.per_side,
                             min_distance=args.min_distance, distance=args.distance, n_classes=n_classes,
                             time_s=elapsed, results=res,
                             val_sweep={str(k): v for k, v in sweep.items()},
                             val_choice=chosen, identity=config["identity"]))


if __name__ == "__main__":
    main()
