"""Train a lite model on ShapeWorld: ``python -m chains_lite.zoo.train NAME [options]``.

Deterministic for a given seed and device (CPU runs repeat bit for bit). Uses the GPU when
present. The run is written to ``runs/NAME/`` (weights, card); it replaces the checkpoint shipped
in the package only when its card's headline number beats the shipped card's (or ``--force``),
so a worse run never overwrites a better model.

    python -m chains_lite.zoo.train shapes-vit --steps 1500
    python -m chains_lite.zoo.train shapes-flux --init --steps 1000   # train the shipped model further
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import evaluate, generate
from .models import FLUX_PACK, GEN_SIZE, LITE_CONFIGS, build, image_ids, pack
from .registry import CHECKPOINT_DIR, HEADLINE, card_path, load_weights, read_card, render_card, save_checkpoint
from .shapeworld import shapeworld

DEFAULTS = {  # steps, batch, lr, train-pool size, image size
    "shapes-vit": dict(steps=1500, batch=64, lr=1e-3, pool=20000, size=64),
    "shapes-vit-reg": dict(steps=1500, batch=64, lr=1e-3, pool=20000, size=64),
    "shapes-flux": dict(steps=600, batch=64, lr=1e-3, pool=20000, size=GEN_SIZE),
    "shapes-unet": dict(steps=700, batch=64, lr=1e-3, pool=20000, size=GEN_SIZE),
}


def _lr(step, steps, lr, warmup=100, done=0.0):
    """Linear warm-up then cosine decay to 5% of ``lr`` over the remaining ``steps - warmup``
    steps; ``done`` (0 to 1), when larger, is the share of the decay already spent (a run with a
    time budget passes the share of its time used)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = max((step - warmup) / max(1, steps - warmup), done)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _loop(model, loss_fn, pool_size, args, device):
    """The shared training loop: AdamW, warm-up + cosine, an optional EMA of the weights, a progress bar.

    The run lasts ``args.steps`` steps, or ``args.minutes`` of wall time if that comes first;
    with a time budget the cosine follows the larger of the two shares done, so a run cut by
    the clock still ends at the low learning rate. With ``args.ema`` > 0 the returned model
    holds the exponential moving average of the weights (decay ``args.ema``, warmed up).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params] if args.ema else None
    gen = torch.Generator().manual_seed(args.seed)  # draws the batch indices
    # Noise and timesteps are drawn where the model runs (no host copy per step on a GPU); on
    # the CPU one generator draws everything.
    dgen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(args.seed + 1)
    start, losses, step = time.time(), [], 0
    bar = tqdm(total=args.steps, desc=f"train {args.name}")
    while step < args.steps:
        used = (time.time() - start) / (60 * args.minutes) if args.minutes else 0.0
        if used >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr, done=used)
        idx = torch.randint(pool_size, (args.batch,), generator=gen)
        loss = loss_fn(idx.to(device), dgen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            # The decay warms up as (1 + step) / (10 + step), as diffusers' EMAModel does, so
            # the average forgets the initial weights within a short run too.
            decay = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(loss.detach())
        if step % 20 == 0:  # the only host synchronisation of the loop
            bar.set_postfix(loss=f"{torch.stack(losses[-20:]).mean().item():.4f}")
        bar.update(1)
        step += 1
    bar.close()
    if args.minutes and step < args.steps:
        print(f"time budget of {args.minutes} min used at step {step}")
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    return dict(steps_done=step, final_loss=torch.stack(losses[-50:]).mean().item(),
                train_seconds=round(time.time() - start, 1))


def _initial_model(args):
    """Random weights (seeded), or with ``--init`` the shipped checkpoint, to train it further."""
    model = build(args.name, **args.config)
    if args.init:
        load_weights(model, args.name, Path(args.checkpoint_dir))
    return model


def train_vit(args, device):
    data = shapeworld(args.pool, seed=args.seed, split="train", size=args.size)
    images, labels = data.images.to(device), data.labels.to(device)
    model = _initial_model(args).to(device).train()

    def loss_fn(idx, gen):
        x = images[idx]
        flip = torch.rand(len(idx), generator=gen, device=gen.device) < 0.5  # a mirrored shape keeps its class
        x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
        return F.cross_entropy(model(x), labels[idx])

    stats = _loop(model, loss_fn, args.pool, args, device)
    model.eval()
    return model, stats, evaluate_model(args.name, model, args.eval_n)


def train_flux(args, device):
    data = shapeworld(args.pool, seed=args.seed, split="train", size=args.size)
    encoder = generate.TextEncoder(device=device)
    txt, pooled = encoder(data.captions)  # frozen MiniLM: encode every caption once
    empty_txt, empty_pooled = encoder([""])  # the unconditional input of classifier-free guidance
    x1 = pack(data.images.to(device) * 2 - 1)
    model = _initial_model(args).to(device).train()
    ids = image_ids(args.size // FLUX_PACK, device)
    txt_ids = torch.zeros(txt.shape[1], 3, device=device)

    def loss_fn(idx, gen):
        # Rectified flow: x_t = (1 - t) x_data + t noise, the model predicts noise - x_data.
        data_x = x1[idx]
        noise = torch.randn(data_x.shape, generator=gen, device=gen.device).to(device)
        t = torch.sigmoid(torch.randn(len(idx), generator=gen, device=gen.device)).to(device)  # logit-normal
        xt = (1 - t[:, None, None]) * data_x + t[:, None, None] * noise
        # Caption dropout: with probability ``args.cond_dropout`` the model sees the empty caption,
        # so it also learns the unconditional velocity that classifier-free guidance needs.
        drop = (torch.rand(len(idx), generator=gen, device=gen.device) < args.cond_dropout).to(device)
        c_txt = torch.where(drop[:, None, None], empty_txt, txt[idx])
        c_pooled = torch.where(drop[:, None], empty_pooled, pooled[idx])
        pred = model(xt, c_txt, c_pooled, t, ids, txt_ids).sample
        return F.mse_loss(pred, noise - data_x)

    stats = _loop(model, loss_fn, args.pool, args, device)
    model.eval()
    return model, stats, evaluate_model(args.name, model, args.eval_n, encoder, args.guidance)


def train_unet(args, device):
    data = shapeworld(args.pool, seed=args.seed, split="train", size=args.size)
    x0 = (data.images * 2 - 1).to(device)
    model = _initial_model(args).to(device).train()
    sched = generate.unet_scheduler()
    abar = sched.alphas_cumprod.to(device)

    def loss_fn(idx, gen):
        # DDPM epsilon-prediction objective.
        t = torch.randint(len(abar), (len(idx),), generator=gen, device=gen.device).to(device)
        noise = torch.randn(x0[idx].shape, generator=gen, device=gen.device).to(device)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0[idx] + (1 - a).sqrt() * noise
        return F.mse_loss(model(xt, t).sample, noise)

    stats = _loop(model, loss_fn, args.pool, args, device)
    model.eval()
    return model, stats, evaluate_model(args.name, model, args.eval_n)


def save_sample_grid(name, model, path, encoder=None, n=16, seed=0, guidance=1.0):
    """A PNG of what the model does on 16 val images: predictions (classifiers) or samples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = shapeworld(n, seed=seed, split="val", size=64 if name.startswith("shapes-vit") else GEN_SIZE)
    if name.startswith("shapes-vit"):
        imgs = data.images
        pred = evaluate.classify(model, imgs).argmax(-1)
        titles = [f"{data.class_names[p]}" + ("" if p == y else f" (is {data.class_names[y]})")
                  for p, y in zip(pred.tolist(), data.labels.tolist())]
    elif name == "shapes-flux":
        imgs = generate.flux_sample(model, encoder, data.captions, steps=20, seed=seed, progress=False,
                                    guidance=guidance)
        titles = [c.replace(" and ", " &\n").replace(", ", ",\n") for c in data.captions]
    else:
        imgs = generate.unet_sample(model, n, steps=50, seed=seed, progress=False)
        titles = [""] * n
    fig, axes = plt.subplots(2, n // 2, figsize=(1.6 * n // 2, 4.2))
    for ax, img, t in zip(axes.flat, imgs, titles):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(t, fontsize=6)
        ax.axis("off")
    fig.suptitle(f"{name}: " + {"shapes-flux": "samples for val captions (20 Euler steps"
                                               + (f", guidance {guidance:g})" if guidance != 1 else ")"),
                                "shapes-unet": "unconditional samples (50 DDIM steps)"}.get(
        name, "val images, predicted class (true class when wrong)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_model(name, model, n, encoder=None, guidance=1.0):
    """The card's validation numbers for a trained lite model (``n`` val images or samples).

    For ``shapes-flux`` sampled with classifier-free ``guidance`` > 1, ``caption_match_unguided``
    and ``color_match_unguided`` give the numbers of the same captions and noise sampled without
    guidance, beside them."""
    if name.startswith("shapes-vit"):
        metrics = evaluate.vit_metrics(model, split="val", n=n)
        metrics["test_accuracy"] = evaluate.vit_metrics(model, split="test", n=n)["accuracy"]
        return metrics
    if name == "shapes-flux":
        metrics = evaluate.flux_metrics(model, encoder, n=n, guidance=guidance)
        if guidance != 1:
            plain = evaluate.flux_metrics(model, encoder, n=n, frechet=False)
            metrics.update(caption_match_unguided=plain["caption_match"],
                           color_match_unguided=plain["color_match"])
        return metrics
    return evaluate.unet_metrics(model, n=n)


def refresh_card(name, reevaluate=False, n=500, guidance=None):
    """Re-render ``NAME.md`` and ``NAME-samples.png`` of the shipped checkpoint from its JSON card;
    with ``reevaluate``, recompute its validation numbers first (after a change of the metrics).
    ``guidance`` (shapes-flux) defaults to the scale the card was sampled with."""
    from .load import load
    loaded = load(name, mode="lite", device="cpu", verbose=False)
    card = read_card(name)
    if guidance is None:
        guidance = card["validation"].get("guidance_scale", 1.0)
    if reevaluate:
        card["validation"] = evaluate_model(name, loaded.model, n, loaded.text_encoder, guidance)
        card_path(name).write_text(json.dumps(card, indent=1) + "\n")
    save_sample_grid(name, loaded.model, CHECKPOINT_DIR / f"{name}-samples.png", encoder=loaded.text_encoder,
                     guidance=guidance)
    (CHECKPOINT_DIR / f"{name}.md").write_text(render_card(card))
    print(f"re-rendered the card and sample grid of {name} in {CHECKPOINT_DIR}")


TRAINERS = {"shapes-vit": train_vit, "shapes-vit-reg": train_vit,
            "shapes-flux": train_flux, "shapes-unet": train_unet}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(TRAINERS))
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--pool", type=int, help="number of ShapeWorld training images")
    p.add_argument("--cond-dropout", type=float, default=0.0,
                   help="shapes-flux: share of training captions replaced by the empty caption "
                        "(teaches the unconditional branch of classifier-free guidance)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="shapes-flux: classifier-free guidance scale of the card's samples (1: none)")
    p.add_argument("--minutes", type=float, default=0,
                   help="time budget of the training loop in minutes; the learning-rate schedule fits "
                        "into it (0: none, the run lasts --steps)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999) "
                        "and save it instead of the last weights (0: off)")
    p.add_argument("--config", type=json.loads, default={},
                   help="JSON object of model-config entries that replace the lite config's, e.g. "
                        "'{\"num_layers\": 3}' (the card records the config used; `zoo.load` builds "
                        "from LITE_CONFIGS, so a checkpoint with another config ships with that edit)")
    p.add_argument("--eval-n", type=int, default=500, help="validation images for the card")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs", help="where the run is written (default runs/NAME)")
    p.add_argument("--checkpoint-dir", default=str(CHECKPOINT_DIR),
                   help="where shipped checkpoints live (default: the package's checkpoints/)")
    p.add_argument("--init", action="store_true",
                   help="start from the shipped checkpoint instead of random weights (train it further)")
    p.add_argument("--force", action="store_true", help="install even if the card's number is worse")
    p.add_argument("--no-install", action="store_true", help="never replace the shipped checkpoint")
    p.add_argument("--card-only", action="store_true",
                   help="no training: re-render the shipped card (Markdown) and sample grid")
    p.add_argument("--reevaluate", action="store_true",
                   help="with --card-only: also recompute the card's validation numbers")
    args = p.parse_args(argv)
    if args.card_only:
        return refresh_card(args.name, reevaluate=args.reevaluate, n=args.eval_n,
                            guidance=args.guidance if args.guidance != 1 else None)
    for k, v in DEFAULTS[args.name].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    previous = read_card(args.name, Path(args.checkpoint_dir)) if args.init else None
    model, stats, metrics = TRAINERS[args.name](args, device)
    card = {
        "name": args.name,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in {**LITE_CONFIGS[args.name], **args.config}.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "data": f"ShapeWorld split=train seed={args.seed}: a pool of {args.pool} images of "
                f"{args.size}x{args.size}, batches drawn with replacement",
        "training": {"steps": stats["steps_done"], "batch": args.batch, "lr": args.lr,
                     "total_steps": stats["steps_done"] + (previous["training"].get("total_steps", previous[
                         "training"]["steps"]) if previous else 0),
                     "init": "the shipped checkpoint" if previous else "random",
                     "optimizer": "AdamW(wd=0.05), 100 warm-up steps, cosine to 5%",
                     "final_loss": round(stats["final_loss"], 5), "seed": args.seed,
                     **({"ema": args.ema} if args.ema else {}),
                     **({"minutes": args.minutes} if args.minutes else {}),
                     **({"cond_dropout": args.cond_dropout} if args.name == "shapes-flux" else {})},
        "wall_time_s": stats["train_seconds"] + (previous["wall_time_s"] if previous else 0),
        "hardware": f"{device.type}: " + (torch.cuda.get_device_name(device) if device.type == "cuda"
                                          else f"{platform.processor() or platform.machine()}, "
                                               f"{torch.get_num_threads()} threads"),
        "torch": torch.__version__,
        "validation": metrics,
        "headline": HEADLINE[args.name],
        "date": time.strftime("%Y-%m-%d"),
    }
    run_dir = Path(args.out) / args.name
    save_checkpoint(model, card, run_dir)
    encoder = generate.TextEncoder(device=device) if args.name == "shapes-flux" else None
    save_sample_grid(args.name, model, run_dir / f"{args.name}-samples.png", encoder=encoder,
                     guidance=args.guidance)
    print(json.dumps(card["validation"], indent=1))

    ship_dir = Path(args.checkpoint_dir)
    shipped = card_path(args.name, ship_dir)
    key = HEADLINE[args.name]
    old = json.loads(shipped.read_text())["validation"][key] if shipped.exists() else None
    better = old is None or metrics[key] > old
    print(f"{key}: this run {metrics[key]:.4f}, shipped {old}")
    if args.no_install or not (better or args.force):
        print(f"kept the shipped checkpoint; this run is in {run_dir}")
        return
    ship_dir.mkdir(parents=True, exist_ok=True)
    for f in run_dir.iterdir():
        shutil.copy2(f, ship_dir / f.name)
    print(f"installed {args.name} into {ship_dir}")


if __name__ == "__main__":
    main()
