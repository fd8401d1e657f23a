"""Zero-shot segmentation with multi-bounce attention in FLUX (paper Table 1, supp. Table 7).

    python benchmarks/segmentation.py --mode lite [--n-images 500] [--seed 0] [--out results.json]
                                      [--methods outgoing_2,outgoing_2:uniform,...]
    python benchmarks/segmentation.py --mode full --data gtsegs_ijcv.mat [--class-map map.json]
    accelerate launch --multi_gpu --num_processes 8 benchmarks/segmentation.py --mode full ... \
        --out runs/seg.json [--run-dir runs/seg.run]

Every setting is ``METHOD[:HEADS[:BLOCKS]]`` (``chains_lite.methods.segmentation.Setting``); the default
runs every row of the paper's supp. Table 7. Also available: ``tokenrank_in`` and ``tokenrank_out`` (the
steady states of the incoming and outgoing chains, n -> infinity), ``concept_attention``
(ConceptAttention: a concept token per word, with its own stream through the double-stream blocks) and
``output_space`` (the same attention-output-space map with the caption's own word as the concept). Maps come from ``chains_lite.methods.segmentation.word_maps``:
encode the image, noise to ``t`` (0.5), ``--steps`` (2) denoising steps with the caption, joint
attention averaged over the last 10 blocks of the kind (fewer if the model has fewer) and the
steps, heads mixed (λ2 or uniform), bounces from the word's token; scored as
``chains_lite.eval.metrics.binary_segmentation`` from per-image counts (acc, standard mIoU, mAP; and
ConceptAttention's Acc/(2-Acc)).

* lite: ``shapes-flux`` on ShapeWorld test images (32 x 32); the caption is the image's own; the
  word is the class of the largest shape; the ground truth is the mask of every object of that
  class.
* full: FLUX.1-schnell on ImageNet-Segmentation: ``--data`` is Chefer et al.'s ``gtsegs_ijcv.mat``
  (4,276 images, read one batch at a time). The word of image i comes from the file's class id
  (``chains_lite.zoo.datasets.class_words``: the last word of the synset's first
  WordNet lemma), or from ``--class-map``, a JSON map ``{lemma: word}`` (ConceptAttention's
  ``imagenet_class_map.json`` is one: its ``"categories"``), or from ``--classes``, a text file
  with one word per image (line i = image i). Captions ``--caption`` (default "a {}"). Needs a
  GPU, the hub weights, h5py and timm.

Runs on :func:`chains_lite.experiments.runner.run`: one process, or data-parallel under ``accelerate launch``
(``accelerate launch benchmarks/segmentation.py --mode full ...``), resumable: each image's
confusion counts and AP are appended to ``--run-dir`` (default: ``--out`` with ``.run`` for
``.json``) as they are computed; rerunning the command skips the images done, and a run dir of
another configuration is refused. Image i's noise is seeded with ``item_seed(seed, i)``
(:mod:`chains_lite.core.seeding`).
Prints a table (measured beside the paper's numbers, labelled by mode) and writes JSON: per
setting acc / miou / map / miou_acc_2_minus_acc (from the merged counts of all images), plus
mode, model, n_images, seed, time of this invocation and ``identity`` (the weights' checkpoint
digest, hub id or ``"random"``, and the data files' size and time: a rerun with any of them
changed is refused).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chains_lite import zoo  # noqa: E402
from chains_lite.core.seeding import item_seed  # noqa: E402
from chains_lite.experiments import cli, runner  # noqa: E402
from chains_lite.experiments.segmentation import (TABLE7, class_word_task, merge_records,  # noqa: E402
                                                  segmentation_records, table)
from chains_lite.methods.segmentation import Setting  # noqa: E402
from chains_lite.zoo.datasets import ImageNetSegmentation, class_words  # noqa: E402

DEFAULT_SETTINGS = ",".join(s.name for s, _ in TABLE7.values())


def lite_data(n: int, seed: int):
    """``load(indices) -> (images, masks, captions, words)`` over ``n`` ShapeWorld test images."""
    batch, masks, words = class_word_task(zoo.shapeworld(n, seed=seed, split="test", size=32))

    def load(indices):
        return batch.images[indices], masks[indices], [batch.captions[i] for i in indices], \
            [words[i] for i in indices]
    return n, load


def image_words(args, data) -> list[str]:
    """One caption word per image: ``--classes`` (a text file), else the file's class ids through
    ``--class-map`` (a JSON map from WordNet lemma to word) or the lemma's last word."""
    if args.classes:
        return [w.strip() for w in Path(args.classes).read_text().splitlines() if w.strip()]
    names = None
    if args.class_map:
        names = json.loads(Path(args.class_map).read_text())
        names = names.get("categories", names)
    return class_words(data.wnids, names)


def full_data(args):
    """``(n, load)``: ImageNet-Segmentation read batch by batch (a process reads only its images)."""
    data = ImageNetSegmentation(args.data, size=args.image_size)
    n = len(data) if args.n_images is None else min(args.n_images, len(data))
    words = image_words(args, data)
    if len(words) < n:
        sys.exit(f"{args.classes} names {len(words)} classes for {n} images")

    def load(indices):
        images, masks = data.batch(indices)
        return images, masks, [args.caption.format(words[i]) for i in indices], [words[i] for i in indices]
    return n, load


def check_args(ap, args):
    """Every argument checked before any work (``ap.error`` exits with the message)."""
    cli.at_least_one(ap, args, "n_images", "batch_size", "steps", "size", "image_size")
    if not 0 < args.t <= 1:
        ap.error(f"--t must be in (0, 1], got {args.t}")
    if args.mode == "full":
        if not args.data or not Path(args.data).is_file():
            ap.error(f"--mode full needs --data: an existing file (got {args.data!r}); see --help")
        for flag, path in (("--classes", args.classes), ("--class-map", args.class_map)):
            if path is not None and not Path(path).is_file():
                ap.error(f"{flag}: no such file {path!r}")


def main(argv=None):
    ap = cli.parser(__doc__)
    ap.add_argument("--methods", default=DEFAULT_SETTINGS,
                    help="comma list of METHOD[:HEADS[:BLOCKS]] (default: supp. Table 7's rows; also "
                         "tokenrank_in, tokenrank_out, concept_attention, output_space)")
    ap.add_argument("--n-images", type=int, default=None, help="default: 500 (lite), all (full)")
    ap.add_argument("--t", type=float, default=0.5, help="normalised noise level")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps recorded from t")
    ap.add_argument("--store", choices=["mean", "qk"], default="mean",
                    help="running mean of the attention, or q/k with matrix-free chains")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 (lite), 1 (full)")
    ap.add_argument("--size", type=int, default=224, help="evaluation resolution")
    ap.add_argument("--resize", choices=["nearest", "bilinear"], default="nearest")
    ap.add_argument("--data", default=None, help="full: path to gtsegs_ijcv.mat")
    ap.add_argument("--classes", default=None, help="full: a text file, one caption word per image "
                    "(default: from the file's class ids)")
    ap.add_argument("--class-map", default=None, help="full: JSON {WordNet lemma: word} for the class ids")
    ap.add_argument("--caption", default="a {}", help="full: caption template for the class word")
    ap.add_argument("--image-size", type=int, default=512, help="full: FLUX input resolution")
    args = ap.parse_args(argv)
    check_args(ap, args)
    try:
        settings = [Setting.parse(s) for s in args.methods.split(",") if s]
    except ValueError as e:
        ap.error(str(e))
    if not settings:
        ap.error("--methods names no setting")
    out_path = cli.claim(ap, args)
    cli.preflight(ap, args, "flux-schnell", packages=["h5py", "timm"],
                  data={k: v for k, v in (("--data", args.data), ("--classes", args.classes),
                                          ("--class-map", args.class_map)) if v is not None})
    t0 = time.perf_counter()
    if args.mode == "lite":
        n, load = lite_data(500 if args.n_images is None else args.n_images, args.seed)
        loaded = zoo.load("shapes-flux", mode="lite", device="cpu")
    else:
        n, load = full_data(args)
        loaded = zoo.load("flux-schnell", mode="full", device=runner.state().device)
    batch = args.batch_size or (32 if args.mode == "lite" else 1)
    config = dict(mode=args.mode, model=loaded.name, n_images=n, seed=args.seed, t=args.t,
                  steps=args.steps, store=args.store, size=args.size, resize=args.resize,
                  settings=[s.name for s in settings], data=args.data, classes=args.classes,
                  class_map=args.class_map,
                  caption=args.caption, image_size=args.image_size,
                  identity=cli.run_identity(loaded, {"--data": args.data, "--classes": args.classes,
                                                     "--class-map": args.class_map}))

    def work(indices):
        images, masks, captions, words = load(indices)
        with torch.no_grad():
            return segmentation_records(loaded, images, masks, captions, words, settings,
                                        size=args.size, resize=args.resize, t=args.t, steps=args.steps,
                                        store=args.store,
                                        seed=[item_seed(args.seed, i) for i in indices])

    records = cli.run(work, n, args, config, batch=batch, desc="segmentation")
    if records is None:  # not the main process: it has written its share
        return
    res = merge_records(records)
    elapsed = time.perf_counter() - t0
    print(f"\n{loaded.name} ({args.mode} mode), {n} images, seed {args.seed}, "
          f"t = {args.t}, {args.steps} steps, {elapsed:.1f} s")
    print(table(res, args.mode))
    print("paper: FLUX.1-schnell on ImageNet-Segmentation (4,276 images). A/(2-A): ConceptAttention's "
          "mIoU formula, beside the standard mIoU.")
    cli.write(out_path, dict(mode=args.mode, model=loaded.name, n_images=n, seed=args.seed, t=args.t,
                             steps=args.steps, size=args.size, resize=args.resize, time_s=elapsed, results=res,
                             identity=config["identity"]))


if __name__ == "__main__":
    main()
