"""Mask the most influential tokens and measure accuracy (paper Sec. 5.5, Table 4).

    python benchmarks/masking.py --mode lite --model shapes-vit --n-images 500 --out results.json
    python benchmarks/masking.py --mode full --model vit-b16 --data /path/to/imagenet/val --n-images 5000
    accelerate launch --multi_gpu --num_processes 8 benchmarks/masking.py --mode full ... \
        --out runs/mask.json [--run-dir runs/mask.run]

Lite: ShapeWorld test images (seeded), classified by shapes-vit / shapes-vit-reg. Full: an ImageNet
validation folder in ImageFolder layout (``val/<wnid>/*.JPEG``, classes in sorted wnid order = the
ImageNet-1k index of timm classifiers), ``--n-images`` (at most the folder's count) drawn with the seed; ``vit-b16`` (timm's
classifier) or ``clip-vitb32`` (zero-shot, "A photo of a <class>."). The DINO models on the hub come
without the linear heads the paper used, so they are not offered here.
Runs on :func:`chains_lite.experiments.runner.run`: one process, or data-parallel under ``accelerate launch``
(``accelerate launch benchmarks/masking.py --mode full ...``), resumable: whether each image is
classified right, clean and per strategy and fraction, is appended to ``--run-dir`` (default:
``--out`` with ``.run`` for ``.json``) as it is computed; rerunning the command skips the images
done, and a run dir of another configuration is refused. Image i's random scores come from a
generator seeded ``item_seed(seed, i)`` (:mod:`chains_lite.core.seeding`).
Prints accuracy per fraction and the normalised AUC (lower = the ranking found more important tokens),
and writes JSON: per strategy the curve (correct counts of all images / n) and AUC, plus mode,
model, n_images, seed, layers, time of this invocation and ``identity`` (the weights' checkpoint
digest, hub id or ``"random"``, and the data folder's size and time: a rerun with any of them
changed is refused).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from chains_lite import zoo
from chains_lite.capture import attention_layers, chosen_layers
from chains_lite.core.seeding import item_seed
from chains_lite.experiments import cli, runner
from chains_lite.experiments.masking import auc_table, masking_records, merge_masking_records
from chains_lite.methods import masking
from chains_lite.zoo.datasets import IMAGENET_CLASSES, image_folder_files, imagenet_folder
from chains_lite.zoo.inputs import model_input

LITE_MODELS = ("shapes-vit", "shapes-vit-reg")
FULL_MODELS = ("vit-b16", "clip-vitb32")
LITE_FRACTIONS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def main(argv=None):
    ap = cli.parser(__doc__)
    ap.add_argument("--model", default=None, help=f"lite: {LITE_MODELS}; full: {FULL_MODELS}")
    ap.add_argument("--data", type=Path, help="full mode: ImageNet validation folder")
    ap.add_argument("--n-images", type=int, default=None, help="default 500 lite, 5000 full")
    ap.add_argument("--fractions", type=float, nargs="+", default=None)
    ap.add_argument("--strategies", nargs="+", default=list(masking.STRATEGIES),
                    choices=list(masking.STRATEGIES + masking.HEAD_WEIGHTING))
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="default: the first half")
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args(argv)
    model_name = args.model or ("shapes-vit" if args.mode == "lite" else "vit-b16")
    allowed = LITE_MODELS if args.mode == "lite" else FULL_MODELS
    if model_name not in allowed:
        ap.error(f"--model {model_name} is not available in {args.mode} mode; choose from {allowed}")
    n = args.n_images if args.n_images is not None else (500 if args.mode == "lite" else 5000)
    fractions = args.fractions or (LITE_FRACTIONS if args.mode == "lite" else masking.FRACTIONS)
    cli.at_least_one(ap, args, "n_images", "batch_size")
    if args.mode == "full" and args.data is None:
        ap.error("full mode needs --data: an ImageNet validation folder (val/<wnid>/*.JPEG)")
    try:
        masking.check_fractions(fractions)
    except ValueError as e:
        ap.error(str(e))
    out_path = cli.claim(ap, args)
    cli.preflight(ap, args, model_name, data={"--data": args.data})
    if args.mode == "full":  # the folder's size, before any work
        try:
            available = len(image_folder_files(args.data, IMAGENET_CLASSES)[0])
        except (ValueError, OSError) as e:
            ap.error(str(e))
        if available < 1:
            ap.error(f"--data {args.data} holds no images")
        if n > available:
            print(f"--n-images {n}: {args.data} holds {available} images; using all of them")
            n = available
    t0 = time.time()
    loaded = zoo.load(model_name, mode=args.mode, device=runner.state().device)
    classify = None
    if args.mode == "lite":
        data = zoo.shapeworld(n, split="test", seed=args.seed)
        x, y = model_input(loaded, data.images).cpu(), data.labels
    else:
        x, y, _ = imagenet_folder(args.data, n, args.seed, loaded)
        if model_name == "clip-vitb32":
            from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
            classify = masking.clip_classifier(loaded, IMAGENET_CLASSNAMES)
    device = next(loaded.model.parameters()).device
    try:  # negative layers count from the last, as in capture
        layers = masking.default_layers(loaded.model) if args.layers is None else \
            chosen_layers(len(attention_layers(loaded.model)), args.layers)
    except ValueError as e:
        ap.error(f"--layers: {e}")
    config = dict(mode=loaded.mode, model=model_name, n_images=n, seed=args.seed, layers=layers,
                  fractions=list(fractions), strategies=list(args.strategies),
                  data=None if args.data is None else str(args.data),
                  identity=cli.run_identity(loaded, {"--data": args.data}))

    def work(indices):
        idx = torch.tensor(indices)
        return masking_records(loaded.model, x[idx].to(device), y[idx], classify=classify,
                               seeds=[item_seed(args.seed, i) for i in indices],
                               strategies=args.strategies, fractions=fractions, layers=layers)

    records = cli.run(work, n, args, config, batch=args.batch_size, desc="masking")
    if records is None:  # not the main process: it has written its share
        return 0
    curves = merge_masking_records(records, fractions, layers)
    seconds = time.time() - t0
    aucs = auc_table(curves)
    print(f"\n{model_name} [{loaded.mode} mode], {n} images, masked layers {curves['layers']}, "
          f"clean accuracy {curves['clean_accuracy']:.3f}, {seconds:.0f} s")
    print(f"{'strategy':>18} {'AUC':>6}  " + " ".join(f"{f:>5.2f}" for f in fractions))
    for s in args.strategies:
        print(f"{s:>18} {aucs[s]:6.3f}  " + " ".join(f"{a:5.2f}" for a in curves[s]))
    cli.write(out_path, dict(mode=loaded.mode, model=model_name, n_images=n, seed=args.seed,
                             layers=curves["layers"], fractions=list(fractions),
                             clean_accuracy=curves["clean_accuracy"], seconds=round(seconds, 1),
                             strategies={s: dict(curve=curves[s], auc=aucs[s]) for s in args.strategies},
                             identity=config["identity"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
