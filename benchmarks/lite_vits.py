"""The lite ViTs side by side: the supervised classifier against the self-supervised one.

    python benchmarks/lite_vits.py [--models shapes-vit shapes-vit-ssl] [--n 64] [--probe-n 5000]

For each model:

* the median |λ2| of its heads (``methods.maps.head_lambda2``: every layer's captured attention, CLS kept,
  over images x layers x heads) on ``--n`` ShapeWorld test images and on ``--n`` images of
  uniform noise, and their ratio (paper Fig. 11: on noise the chains mix faster); then the
  median of each layer;
* the val accuracy (500 images) of a linear probe fitted on its frozen CLS features of
  ``--probe-n`` training images (``fit_linear_head``, the fit that gives ``shapes-vit-ssl`` its
  head), and of the model's own head;
* from its card: training steps, wall time, hardware, final loss and loss curve.
"""
from __future__ import annotations

import argparse
import copy

import torch

from chains_lite import zoo
from chains_lite.methods.maps import head_lambda2
from chains_lite.zoo.shapeworld import shapeworld
from chains_lite.zoo.training.evaluate import vit_metrics
from chains_lite.zoo.training.self_supervised import fit_linear_head


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["shapes-vit", "shapes-vit-ssl"])
    ap.add_argument("--n", type=int, default=64, help="test images, and as many noise images")
    ap.add_argument("--probe-n", type=int, default=5000, help="training images of the linear probe")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    images = shapeworld(args.n, seed=args.seed, split="test").images
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(args.seed))
    probe = shapeworld(args.probe_n, seed=args.seed, split="train")
    rows, layers = [], []
    for name in args.models:
        loaded = zoo.load(name, mode="lite", device="cpu", verbose=False)
        lam_img, lam_noise = head_lambda2(loaded.model, images), head_lambda2(loaded.model, noise)
        probed = copy.deepcopy(loaded.model)
        fit_linear_head(probed, probe.images, probe.labels)
        card = loaded.card
        t = card["training"]
        rows.append([name, f"{lam_img.median():.3f}", f"{lam_noise.median():.3f}",
                     f"{lam_img.median() / lam_noise.median():.2f}",
                     f"{vit_metrics(probed, 'val', 500)['accuracy']:.3f}",
                     f"{vit_metrics(loaded.model, 'val', 500)['accuracy']:.3f}",
                     str(t["steps"]), f"{card['wall_time_s'] / 60:.1f} min", f"{t['final_loss']:.4f}"])
        layers.append((name, lam_img.flatten(1).median(1).values, lam_noise.flatten(1).median(1).values))
        print(f"{name}: {card['hardware']}; objective: {t.get('objective', '(not on the card)')}; "
              f"loss curve (10 equal parts): {t.get('loss_curve', '(not on the card)')}")
    head = ["model", "λ2 images", "λ2 noise", "ratio", "probe val acc", "head val acc", "steps", "wall",
            "final loss"]
    print(f"\nmedian |λ2| over {args.n} images x layers x heads (CLS kept); linear probe on "
          f"{args.probe_n} train images, accuracy on 500 val images\n")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\nmedian |λ2| per layer (images / noise)\n")
    for name, a, b in layers:
        print(f"{name:16s} " + "  ".join(f"L{i}: {x:.3f}/{y:.3f}" for i, (x, y) in enumerate(zip(a, b))))


if __name__ == "__main__":
    main()
