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
* from its card: training steps, wall time, hardware, final loss and loss curve;
* what its frozen CLS features hold: the val accuracy (500 images) of linear probes (``fit_probe``,
  fitted on the ``--probe-n`` training images) for four properties of each image: the largest
  object's shape (the class) and colour, the background kind and the number of objects. The same
  probes on a ViT with random weights (seed 0) give the floor;
* the largest shape from richer readouts than the CLS token (``readout_features``: the mean
  patch token, both, and DINO's linear-evaluation readout of the last four CLS tokens with the
  mean patch token): whether the features or the CLS readout limit the probe.

Measured 2026-12-06 (defaults, the shipped checkpoints; shapes-vit-ssl after 51,030 steps, the last
36,730 with hue-turned views; val accuracy of each CLS probe):

==============  =====  ======  ==========  =======  ===============  =========
model           shape  colour  background  objects  |λ2| img/noise   probe
==============  =====  ======  ==========  =======  ===============  =========
shapes-vit      0.978  0.336   0.276       0.594    0.444 / 0.108    0.978
shapes-vit-reg  0.978  0.276   0.292       0.548    0.250 / 0.140    0.978
shapes-vit-ssl  0.586  0.936   0.992       0.880    0.418 / 0.140    0.586
random weights  0.276  0.930   0.852       0.504
==============  =====  ======  ==========  =======  ===============  =========

(the most frequent value's share: shape 0.18, colour 0.18, background 0.25, objects 0.43). Random
features already hold the colour and the background; the supervised ViTs trade them for the
shape. The self-supervised one holds the colour about as well as random features do, the
background and the number of objects better, and gains on the shape (0.586 against 0.276) without
coming near the supervised ViTs. Its chains mix a little faster than shapes-vit's on images, and
slower on images than on noise.

Richer readouts of the same frozen tokens, measured 2026-12-07 (same checkpoints and probe; val
accuracy on the largest shape):

==============  =====  =====  =======  =============
model           cls    avg    cls+avg  cls_last4+avg
==============  =====  =====  =======  =============
shapes-vit      0.978  0.956  0.978    0.978
shapes-vit-ssl  0.586  0.682  0.694    0.742
random weights  0.276  0.268  0.280    0.294
==============  =====  =====  =======  =============

DINO's readout (the last four CLS tokens and the mean patch token) lifts the self-supervised
ViT's probe by 0.16 and leaves it 0.16 short of 0.9: its features, not the CLS readout alone,
hold too little of the shape. The same architecture trained with labels holds it from any readout.
"""
from __future__ import annotations

import argparse
import copy

import torch

from chains_lite import zoo
from chains_lite.methods.maps import head_lambda2
from chains_lite.zoo.shapeworld import shapeworld
from chains_lite.zoo.training.evaluate import vit_metrics
from chains_lite.zoo.models import build
from chains_lite.zoo.shapeworld import BACKGROUNDS, COLOR_NAMES
from chains_lite.zoo.training.self_supervised import (READOUTS, cls_features, fit_linear_head, fit_probe,
                                                      readout_features)


def properties(batch) -> dict:
    """``{property: (N,) int64 labels}`` of a ShapeWorld batch: what the CLS probes are asked."""
    return {"shape": batch.labels,
            "colour": torch.tensor([COLOR_NAMES.index(c[0]) for c in batch.colors]),
            "background": torch.tensor([BACKGROUNDS.index(b) for b in batch.backgrounds]),
            "objects": torch.tensor([len(s) - 1 for s in batch.shapes])}


def probe_properties(vit, train, val) -> dict:
    """Val accuracy of a linear probe on ``vit``'s frozen CLS features, per property."""
    f_train, f_val = cls_features(vit.eval(), train.images).double(), cls_features(vit, val.images).double()
    out = {}
    for (key, y_train), y_val in zip(properties(train).items(), properties(val).values()):
        weight, bias, _ = fit_probe(f_train, y_train, int(max(y_train.max(), y_val.max())) + 1)
        out[key] = ((f_val @ weight.T + bias).argmax(-1) == y_val).double().mean().item()
    return out


def probe_readouts(vit, train, val) -> dict:
    """Val accuracy of a linear probe for the largest shape on each readout of ``vit``'s frozen
    tokens (``readout_features``): does a richer readout than the CLS token find the shape?"""
    out = {}
    for readout in READOUTS:
        f_train, f_val = (readout_features(vit.eval(), b.images, readout).double() for b in (train, val))
        weight, bias, _ = fit_probe(f_train, train.labels, len(train.class_names))
        out[readout] = ((f_val @ weight.T + bias).argmax(-1) == val.labels).double().mean().item()
    return out


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
    val = shapeworld(500, seed=args.seed, split="val")
    rows, layers, encodes, readouts = [], [], [], []
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
        encodes.append((name, probe_properties(loaded.model, probe, val)))
        readouts.append((name, probe_readouts(loaded.model, probe, val)))
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
    torch.manual_seed(args.seed)
    random_vit = build("shapes-vit")
    encodes.append(("random weights", probe_properties(random_vit, probe, val)))
    readouts.append(("random weights", probe_readouts(random_vit, probe, val)))
    keys = list(encodes[0][1])
    print(f"\nwhat the CLS token holds: val accuracy of a linear probe per property (the most frequent "
          "value's share: " + ", ".join(f"{k} {torch.bincount(v).max() / len(v):.2f}"
                                        for k, v in properties(val).items()) + ")\n")
    print("| model | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    for name, acc in encodes:
        print(f"| {name} | " + " | ".join(f"{acc[k]:.3f}" for k in keys) + " |")
    print("\nthe largest shape from richer readouts: val accuracy of a linear probe on each readout of "
          "the frozen tokens (readout_features)\n")
    print("| model | " + " | ".join(READOUTS) + " |\n|" + "---|" * (len(READOUTS) + 1))
    for name, acc in readouts:
        print(f"| {name} | " + " | ".join(f"{acc[k]:.3f}" for k in READOUTS) + " |")
    print("\nmedian |λ2| per layer (images / noise)\n")
    for name, a, b in layers:
        print(f"{name:16s} " + "  ".join(f"L{i}: {x:.3f}/{y:.3f}" for i, (x, y) in enumerate(zip(a, b))))


if __name__ == "__main__":
    main()
