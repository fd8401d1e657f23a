"""What limits the lite generators' card numbers: the sampler, or the trained model?

    python benchmarks/lite_generators.py [--n 200] [--unet-steps 25 50 100 200] [--flux-steps 5 10 20 50]

The cards of ``shapes-unet`` and ``shapes-flux`` sample with fixed settings (DDIM with 50 steps;
Euler with 20 steps). If a number moves with the sampler's steps, the sampler limits it and more
training would not be the cheapest fix; if it stays, the trained model does. For each setting, on
the same ``--n`` seeds and captions (``evaluate.unet_metrics``, ``evaluate.flux_metrics``):

* ``shapes-unet``: the share of samples ``shapes-vit`` classifies with p >= 0.9 and the Fréchet
  distance in its feature space, per number of DDIM steps; real images give the ceiling;
* ``shapes-flux``: the share of samples of the captioned shape and colour, and the Fréchet
  distance, per number of Euler steps, without guidance and at the card's guidance scale.

Fewer samples than the cards (500) make the numbers noisier, and the Fréchet distance larger:
compare rows of one table, not a row with a card.

Measured 2026-12-07 (defaults; the shipped checkpoints: shapes-unet after 23,410 training steps,
shapes-flux after 15,327; one thread, fp32):

============  ==================  ================
DDIM steps    confident fraction  Fréchet distance
============  ==================  ================
25            0.74                18.0
50            0.745               13.6
100           0.76                11.6
200           0.755               8.52
============  ==================  ================

(real images: confident 0.965, Fréchet distance real vs real 1.24.)

========  ===========  ===========  ============  ================
guidance  Euler steps  shape match  colour match  Fréchet distance
========  ===========  ===========  ============  ================
1         5            0.315        0.99          23.8
1         10           0.31         0.99          25.5
1         20           0.30         0.985         26.1
1         50           0.305        0.975         24.4
8         5            0.285        0.97          43.4
8         10           0.425        0.995         24.2
8         20           0.445        0.995         19.9
8         50           0.47         0.995         21.2
========  ===========  ===========  ============  ================

(real images: shape 0.98, colour 1.0; chance 0.167 each.)

The sampler does not hold back the shape numbers: shapes-unet's confident fraction stays at
0.74-0.76 from 25 to 200 steps, and shapes-flux's unguided shape match at 0.30-0.315 from 5 to 50
steps; guidance lifts the shape match to 0.445-0.47. shapes-unet's Fréchet distance falls with
the sampler's steps (13.6 at the card's 50, 8.52 at 200).
"""
from __future__ import annotations

import argparse

from chains_lite import zoo
from chains_lite.zoo.training.evaluate import flux_metrics, unet_metrics


def _table(head, rows):
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="samples per setting")
    ap.add_argument("--unet-steps", type=int, nargs="*", default=[25, 50, 100, 200])
    ap.add_argument("--flux-steps", type=int, nargs="*", default=[5, 10, 20, 50])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.unet_steps:
        unet = zoo.load("shapes-unet", mode="lite", device="cpu", verbose=False)
        rows = []
        for steps in args.unet_steps:
            m = unet_metrics(unet.model, n=args.n, seed=args.seed, steps=steps)
            rows.append([steps, m["confident_fraction"], m["frechet_distance_vit"]])
        print(f"\nshapes-unet ({unet.card['training'].get('total_steps')} training steps), {args.n} samples; "
              f"real images: confident {m['confident_fraction_real']}, Fréchet distance real vs real "
              f"{m['frechet_distance_real_vs_real']}\n")
        _table(["DDIM steps", "confident fraction", "Fréchet distance"], rows)
    if args.flux_steps:
        flux = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
        scale = flux.card["validation"].get("guidance_scale", 1.0)
        rows = []
        for guidance in dict.fromkeys([1.0, scale]):
            for steps in args.flux_steps:
                m = flux_metrics(flux.model, flux.text_encoder, n=args.n, seed=args.seed, steps=steps,
                                 guidance=guidance)
                rows.append([guidance, steps, m["caption_match"], m["color_match"], m["frechet_distance_vit"]])
        print(f"\nshapes-flux ({flux.card['training'].get('total_steps')} training steps), {args.n} captions; "
              f"real images: shape {m['caption_match_real']}, colour {m['color_match_real']}; "
              f"chance: shape {m['chance']}, colour {m['color_chance']}\n")
        _table(["guidance", "Euler steps", "shape match", "colour match", "Fréchet distance"], rows)


if __name__ == "__main__":
    main()
