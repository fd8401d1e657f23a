"""Zero-shot segmentation with multi-bounce attention in FLUX (paper Table 1, supp. Table 7).

    python benchmarks/segmentation.py --mode lite [--n-images 500] [--seed 0] [--out results.json]
                                      [--methods outgoing_2,outgoing_2:uniform,...]
    python benchmarks/segmentation.py --mode full --data gtsegs_ijcv.mat --classes classes.txt

Every setting is ``METHOD[:HEADS[:BLOCKS]]`` (``chains_lite.segmentation.Setting``); the default
runs every row of the paper's supp. Table 7. Maps come from ``chains_lite.segmentation.evaluate``:
encode the image, noise to ``t`` (0.5), ``--steps`` (2) denoising steps with the caption, joint
attention averaged over the last 10 blocks of the kind (fewer if the model has fewer) and the
steps, heads mixed (λ2 or uniform), bounces from the word's token; scored with
``chains_lite.metrics.binary_segmentation`` (acc, standard mIoU, mAP; and ConceptAttention's
Acc/(2-Acc)).

* lite: ``shapes-flux`` on ShapeWorld test images (32 x 32); the caption is the image's own; the
  word is the class of the largest shape; the ground truth is the mask of every object of that
  class.
* full: FLUX.1-schnell on ImageNet-Segmentation: ``--data`` is Chefer et al.'s ``gtsegs_ijcv.mat``
  (4,276 images), ``--classes`` a text file with one one-word class name per image (line i =
  image i), captions ``--caption`` (default "a {}"). Needs a GPU, the hub weights and h5py.

Prints a table (measured beside the paper's numbers, labelled by mode) and writes JSON: per
setting acc / miou / map / miou_acc_2_minus_acc, plus mode, model, n_images, seed, time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chains_lite import results, zoo  # noqa: E402
from chains_lite.segmentation import (TABLE7, Setting, class_word_task, evaluate,  # noqa: E402
                                      load_imagenet_segmentation, table)

DEFAULT_SETTINGS = ",".join(s.name for s, _ in TABLE7.values())


def lite_data(n: int, seed: int):
    batch, masks, words = class_word_task(zoo.shapeworld(n, seed=seed, split="test", size=32))
    return batch.images, masks, batch.captions, words


def full_data(args):
    if not args.data or not Path(args.data).exists():
        sys.exit("--mode full needs --data PATH/TO/gtsegs_ijcv.mat (ImageNet-Segmentation, the file "
                 "of Chefer et al.'s benchmark; it cannot be downloaded by this script)")
    if not args.classes or not Path(args.classes).exists():
        sys.exit("--mode full needs --classes FILE: one one-word class name per image, in the "
                 "order of the .mat file")
    words = [w.strip() for w in Path(args.classes).read_text().splitlines() if w.strip()]
    images, masks = load_imagenet_segmentation(args.data, n=args.n_images, size=args.image_size)
    if len(words) < len(images):
        sys.exit(f"{args.classes} names {len(words)} classes for {len(images)} images")
    words = words[:len(images)]
    return images, masks, [args.caption.format(w) for w in words], words


def check_args(ap, args):
    """Every numeric argument checked before any work (``ap.error`` exits with the message)."""
    for name in ("n_images", "batch_size", "steps", "size", "image_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not 0 < args.t <= 1:
        ap.error(f"--t must be in (0, 1], got {args.t}")
    if args.mode == "full":
        for flag, path in (("--data", args.data), ("--classes", args.classes)):
            if not path or not Path(path).is_file():
                ap.error(f"--mode full needs {flag}: an existing file (got {path!r}); see --help")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["lite", "full"], default="lite")
    ap.add_argument("--methods", default=DEFAULT_SETTINGS,
                    help="comma list of METHOD[:HEADS[:BLOCKS]] (default: supp. Table 7's rows)")
    ap.add_argument("--n-images", type=int, default=None, help="default: 500 (lite), all (full)")
    ap.add_argument("--seed", type=int, default=0, help="ShapeWorld stream (lite) and the noise")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--t", type=float, default=0.5, help="normalised noise level")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps recorded from t")
    ap.add_argument("--store", choices=["mean", "qk"], default="mean",
                    help="running mean of the attention, or q/k with matrix-free chains")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 (lite), 1 (full)")
    ap.add_argument("--size", type=int, default=224, help="evaluation resolution")
    ap.add_argument("--resize", choices=["nearest", "bilinear"], default="nearest")
    ap.add_argument("--data", default=None, help="full: path to gtsegs_ijcv.mat")
    ap.add_argument("--classes", default=None, help="full: one-word class name per image")
    ap.add_argument("--caption", default="a {}", help="full: caption template for the class word")
    ap.add_argument("--image-size", type=int, default=512, help="full: FLUX input resolution")
    args = ap.parse_args(argv)
    check_args(ap, args)
    try:
        settings = [Setting.parse(s) for s in args.methods.split(",") if s]
        out_path = results.prepare_out(args.out) if args.out else None
    except (ValueError, FileExistsError) as e:
        ap.error(str(e))
    if not settings:
        ap.error("--methods names no setting")
    t0 = time.perf_counter()
    if args.mode == "lite":
        n = 500 if args.n_images is None else args.n_images
        images, masks, captions, words = lite_data(n, args.seed)
        loaded = zoo.load("shapes-flux", mode="lite", device="cpu")
    else:
        images, masks, captions, words = full_data(args)
        loaded = zoo.load("flux-schnell", mode="full")
    batch = args.batch_size or (32 if args.mode == "lite" else 1)
    with torch.no_grad():
        res = evaluate(loaded, images, masks, captions, words, settings, batch_size=batch,
                       size=args.size, resize=args.resize, t=args.t, steps=args.steps,
                       store=args.store, seed=args.seed)
    elapsed = time.perf_counter() - t0
    print(f"\n{loaded.name} ({args.mode} mode), {len(images)} images, seed {args.seed}, "
          f"t = {args.t}, {args.steps} steps, {elapsed:.1f} s")
    print(table(res, args.mode))
    print("paper: FLUX.1-schnell on ImageNet-Segmentation (4,276 images). A/(2-A): ConceptAttention's "
          "mIoU formula, beside the standard mIoU.")
    if out_path:
        out = dict(mode=args.mode, model=loaded.name, n_images=len(images), seed=args.seed, t=args.t,
                   steps=args.steps, size=args.size, resize=args.resize, time_s=elapsed,
                   results={k: v for k, v in res.items() if isinstance(v, dict)})
        print(f"wrote {results.write_json(out_path, out)}")


if __name__ == "__main__":
    main()
