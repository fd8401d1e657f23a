"""Train a lite model on ShapeWorld: ``python -m chains_lite.zoo.training NAME [options]``.

Deterministic for a given seed and device (CPU runs repeat bit for bit). Uses the GPU when
present. The run is written to ``runs/NAME/`` (weights, card); it replaces the checkpoint shipped
in the package only when it improves on the shipped card (``objectives.improves``: no number of
its ``ship_on`` list worse, one better; or ``--force``), so a worse run never overwrites a better model;
a run that does not improve is listed under "Runs not installed" on the shipped card.

    python -m chains_lite.zoo.training shapes-vit --steps 1500
    python -m chains_lite.zoo.training shapes-flux --init --steps 1000   # train the shipped model further
    python -m chains_lite.zoo.training shapes-vit-ssl --resume           # continue runs/shapes-vit-ssl/
    python -m chains_lite.zoo.training shapes-unet --precision bf16 --compile   # the fast CPU step
    python -m chains_lite.zoo.training shapes-unet --gpu-budget 10       # 10 minutes of a lent GPU
    python -m chains_lite.zoo.training shapes-unet --install runs/shapes-unet   # a --no-install run, by the rule

Every few minutes (``--save-minutes``) and after the last step the run saves its resumable state
in ``runs/NAME/state/`` (weights, optimiser moments, generator states, step, losses; files under
16 MB); ``--resume`` continues from there with the options the run was started with, taking the
same steps a run that never stopped would have taken.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from ...core.progress import progress_bar

from .. import generate
from ..judge import classify
from ..load import load
from ..models import LITE_SPECS, build, spec
from ..registry import (CHECKPOINT_DIR, card_path, history, load_weights, read_card, record_run, render_card,
                        save_checkpoint, with_limit, write_card)
from ..shapeworld import shapeworld
from .fast import PRECISIONS, compiled_forward, native_bf16, optimizer, precision_context
from .objectives import TRAINING, improves
from .resume import load_state, save_state

WEIGHT_DECAY = 0.05  # AdamW's
CLIP_NORM = 1.0      # the gradient norm is clipped to this
WARMUP = 100         # steps of linear learning-rate warm-up
LR_FLOOR = 0.05      # the cosine ends at this share of the learning rate
STATE_DIR = "state"  # the resumable state's folder in the run folder


def optimizer_description() -> str:
    """The card's ``optimizer`` entry, written from the constants the loop uses."""
    return f"AdamW(wd={WEIGHT_DECAY:g}), {WARMUP} warm-up steps, cosine to {LR_FLOOR:.0%}"


def _lr(step, steps, lr, warmup=WARMUP, done=0.0):
    """Linear warm-up then cosine decay to ``LR_FLOOR`` of ``lr`` over the remaining
    ``steps - warmup`` steps; ``done`` (0 to 1), when larger, is the share of the decay already
    spent (a run with a time budget passes the share of its time used)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = max((step - warmup) / max(1, steps - warmup), done)
    return lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# Options that set a run's trajectory: a resumed run takes them from its state.
TRAJECTORY = ("steps", "batch", "lr", "pool", "size", "seed", "ema", "minutes", "cond_dropout", "config", "init",
              "precision")


def _run_state(model, opt, ema, gen, dgen, step, elapsed, losses, args) -> dict:
    """Everything a resumed run needs to go on as if it had never stopped."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema,
            "gen": gen.get_state(), "dgen": dgen.get_state() if dgen is not gen else None,
            "step": step, "elapsed": elapsed, "losses": [float(x) for x in losses],
            "args": {k: getattr(args, k) for k in ("name", *TRAJECTORY)}, "device": args.device_type}


def _loop(model, loss_fn, pool_size, args, device, state_dir=None, resume=None):
    """The shared training loop: AdamW, warm-up + cosine, an optional EMA of the weights, a progress bar.

    The run lasts ``args.steps`` steps, or ``args.minutes`` of wall time if that comes first;
    with a time budget the cosine follows the larger of the two shares done, so a run cut by
    the clock still ends at the low learning rate. With ``args.ema`` > 0 the returned model
    holds the exponential moving average of the weights (decay ``args.ema``, warmed up).

    Each step's forward and loss run in ``args.precision`` (:func:`.fast.precision_context`),
    and with ``args.compile`` the model's forward is compiled for the loop (:mod:`.fast`).

    With ``state_dir`` the resumable state (:mod:`.resume`) is saved there every
    ``args.save_minutes`` minutes (at a step boundary; 0: every step) and after the last step;
    ``resume`` (a state loaded from there) continues that run: weights, optimiser moments,
    generators, step, EMA and losses, so it takes the same steps as a run that never stopped
    (with ``--minutes``, the clock's share depends on the time each part took).
    """
    if args.precision == "bf16" and not native_bf16(device):
        print(f"warning: this {device.type} has no bf16 units (AVX-512 BF16 or AMX on a CPU): bf16 autocast is "
              "emulated and slower than float32 here; --precision fp32 is the faster choice")
    opt = optimizer(model.parameters(), lr=args.lr, weight_decay=WEIGHT_DECAY)
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params] if args.ema else None
    gen = torch.Generator().manual_seed(args.seed)  # draws the batch indices
    # Noise and timesteps are drawn where the model runs (no host copy per step on a GPU); on
    # the CPU one generator draws everything.
    dgen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(args.seed + 1)
    step, elapsed, losses = 0, 0.0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        if ema is not None:
            for e, r in zip(ema, resume["ema"]):
                e.copy_(r)
        gen.set_state(resume["gen"])
        if dgen is not gen:
            dgen.set_state(resume["dgen"])
        step, elapsed = resume["step"], resume["elapsed"]
        losses = [torch.tensor(x, device=device) for x in resume["losses"]]
        print(f"resumed {args.name} at step {step} of {args.steps}")

    def save():
        save_state(_run_state(model, opt, ema, gen, dgen, step, elapsed + time.time() - start, losses, args),
                   state_dir, tag=step)

    start = time.time()
    last_save = start if resume is not None else -math.inf  # a new run replaces an old state at once
    bar = progress_bar(total=args.steps, initial=step, desc=f"train {args.name}")
    with compiled_forward(model, device, enabled=args.compile):
        while step < args.steps:
            if state_dir is not None and time.time() - last_save >= 60 * args.save_minutes:
                save()
                last_save = time.time()
            used = (elapsed + time.time() - start) / (60 * args.minutes) if args.minutes else 0.0
            if used >= 1:
                break
            for group in opt.param_groups:
                group["lr"] = _lr(step, args.steps, args.lr, done=used)
            idx = torch.randint(pool_size, (args.batch,), generator=gen)
            with precision_context(device, args.precision):
                loss = loss_fn(idx.to(device), dgen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
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
    if state_dir is not None:
        save()
    if args.minutes and step < args.steps:
        print(f"time budget of {args.minutes} min used at step {step}")
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    losses = torch.stack(losses).float() if losses else torch.zeros(1)
    return dict(steps_done=step, final_loss=losses[-50:].mean().item(),
                loss_curve=loss_curve(losses), train_seconds=round(elapsed + time.time() - start, 1))


def loss_curve(losses: torch.Tensor, points: int = 10) -> list:
    """``(steps,)`` losses -> the mean loss of each of ``points`` consecutive equal parts of the run."""
    return [round(part.mean().item(), 4) for part in losses.tensor_split(min(points, len(losses)))]


GPU_BATCH = 512        # --gpu-budget's batch unless --batch says otherwise
BUDGET_STEPS = 10**6   # --gpu-budget's step limit unless --steps says otherwise: the clock ends the run


def _gpu_budget(args) -> None:
    """Set ``args`` for ``--gpu-budget MIN``: a run of MIN minutes on the GPU (``--device``, when
    given, overrides, so the command can be tried on the CPU) at batch ``GPU_BATCH``, bf16, the
    forward compiled (CUDA graphs on a GPU), its learning-rate schedule fitted into the budget.
    It continues the run folder's unfinished run of the same kind of device if there is one
    (``--resume``, with that run's options and budget); otherwise it starts from the shipped
    checkpoint (``--init``; random weights if none is shipped)."""
    if args.gpu_budget <= 0:
        raise ValueError(f"--gpu-budget must be a positive number of minutes, got {args.gpu_budget}")
    if args.device is None:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu-budget needs a CUDA device and found none "
                             "(add --device cpu to try the command on the CPU)")
        args.device = "cuda"
    args.compile = True
    state_dir = Path(args.out) / args.name / STATE_DIR
    if (state_dir / "state.pt").exists():
        state = load_state(state_dir)
        budget = 60 * state["args"].get("minutes", 0)
        if (state["device"] == torch.device(args.device).type and state["step"] < state["args"]["steps"]
                and (not budget or state["elapsed"] < budget)):
            print(f"--gpu-budget: continuing the unfinished run in {state_dir.parent} "
                  f"(step {state['step']}, {state['elapsed'] / 60:.1f} of its {budget / 60:g} minutes)")
            args.resume = True
            return
    args.minutes, args.precision = args.gpu_budget, "bf16"
    args.batch = args.batch or GPU_BATCH
    args.steps = args.steps or BUDGET_STEPS
    args.init = card_path(args.name, Path(args.checkpoint_dir)).exists()


def _sampling_defaults(args, shipped: dict | None) -> None:
    """Fill ``--cond-dropout`` and ``--guidance`` where the command line leaves them out: from the
    ``shipped`` card when the run trains that checkpoint further (``--init``), so that the model
    keeps learning the unconditional branch its classifier-free guidance needs and its card is
    sampled at the scale of the card it is compared with; else 0 and 1. Prints what it took."""
    taken = []
    if args.cond_dropout is None:
        args.cond_dropout = (shipped or {}).get("training", {}).get("cond_dropout", 0.0)
        taken += [f"--cond-dropout {args.cond_dropout:g}"] if shipped else []
    if args.guidance is None:
        args.guidance = (shipped or {}).get("validation", {}).get("guidance_scale", 1.0)
        taken += [f"--guidance {args.guidance:g}"] if shipped and args.guidance != 1 else []
    if taken and spec(args.name).text_encoder:
        print(f"{' and '.join(taken)}: the shipped card's, as the run trains its checkpoint further")


def _initial_model(args):
    """Random weights (seeded), or with ``--init`` the shipped checkpoint, to train it further."""
    model = build(args.name, **args.config)
    if args.init:
        load_weights(model, args.name, Path(args.checkpoint_dir))
    return model


def train_lite(args, device, state_dir=None, resume=None):
    """Train ``args.name`` by its spec's objective (``state_dir``, ``resume``: see :func:`_loop`);
    returns the model to ship (eval mode, after the spec's ``finish``), the loop's stats (with
    the ``finish`` record as ``head``) and the card's validation numbers."""
    plan = TRAINING[args.name]
    model, loss_fn, encoder = plan.objective(args, device, lambda: _initial_model(args).to(device).train())
    stats = _loop(model, loss_fn, args.pool, args, device, state_dir=state_dir, resume=resume)
    model.eval()
    if plan.objective_modules is not None:
        stats["objective"] = plan.objective_modules(model)
    if plan.finish is not None:
        model, stats["head"] = plan.finish(model, args, device)
    return model, stats, evaluate_model(args.name, model, args.eval_n, encoder, args.guidance)


def _resumed_args(args, parser) -> dict:
    """The saved state of ``args``' run folder, after taking its trajectory options into ``args``;
    ``ValueError`` if the command line sets one of them to another value than the run used."""
    state = load_state(Path(args.out) / args.name / STATE_DIR)
    saved = state["args"]
    if saved["name"] != args.name:
        raise ValueError(f"the state in {args.out}/{args.name} is of {saved['name']}, not {args.name}")
    for k in TRAJECTORY:
        given = getattr(args, k, None)  # ``size`` has no option: it is the spec's
        used = saved.get(k, parser.get_default(k))  # a state saved before the option existed: its default
        if given != parser.get_default(k) and given != used:
            raise ValueError(f"--resume continues the run as it was started: it used --{k.replace('_', '-')} "
                             f"{used!r}, the command line says {given!r}")
        setattr(args, k, used)
    if state["device"] != args.device_type:
        raise ValueError(f"the run was on {state['device']}; it resumes on the same kind of device, "
                         f"not {args.device_type} (its random generators are that device's)")
    return state


def save_sample_grid(name, model, path, encoder=None, n=16, seed=0, guidance=1.0):
    """A PNG of what the model does on 16 val images, by its spec's ``samples`` kind: predicted
    classes (``"classify"``), samples for the val captions (``"captions"``) or unconditional
    samples (``"unconditional"``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = TRAINING[name].samples
    data = shapeworld(n, seed=seed, split="val", size=TRAINING[name].training.size)
    if kind == "classify":
        imgs = data.images
        pred = classify(model, imgs).argmax(-1)
        titles = [f"{data.class_names[p]}" + ("" if p == y else f" (is {data.class_names[y]})")
                  for p, y in zip(pred.tolist(), data.labels.tolist())]
    elif kind == "captions":
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
    fig.suptitle(f"{name}: " + {"captions": "samples for val captions (20 Euler steps"
                                            + (f", guidance {guidance:g})" if guidance != 1 else ")"),
                                "unconditional": "unconditional samples (50 DDIM steps)",
                                "classify": "val images, predicted class (true class when wrong)"}[kind],
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_model(name, model, n, encoder=None, guidance=1.0):
    """The card's validation numbers for a trained lite model (``n`` val images or samples), by
    its spec's evaluator (``guidance``: the classifier-free guidance of caption-conditioned
    samples; the others ignore it and ``encoder``)."""
    return TRAINING[name].evaluator(model, n, encoder, guidance)


def refresh_card(name, reevaluate=False, n=500, guidance=None):
    """Re-render ``NAME.md`` and ``NAME-samples.png`` of the shipped checkpoint from its JSON card,
    after writing the spec's targets into the card where they differ; with ``reevaluate``,
    recompute its validation numbers first (after a change of the metrics). ``guidance``
    (shapes-flux) defaults to the scale the card was sampled with."""
    loaded = load(name, mode="lite", device="cpu", verbose=False)
    card = read_card(name)
    if guidance is None:
        guidance = card["validation"].get("guidance_scale", 1.0)
    if reevaluate:
        card["validation"] = evaluate_model(name, loaded.model, n, loaded.text_encoder, guidance)
    if reevaluate or card.get("targets") != TRAINING[name].card_targets():
        card["targets"] = TRAINING[name].card_targets()
        card_path(name).write_text(json.dumps(card, indent=1) + "\n")
    save_sample_grid(name, loaded.model, CHECKPOINT_DIR / f"{name}-samples.png", encoder=loaded.text_encoder,
                     guidance=guidance)
    (CHECKPOINT_DIR / f"{name}.md").write_text(render_card(card))
    print(f"re-rendered the card and sample grid of {name} in {CHECKPOINT_DIR}")


def set_limit(name, key, text, source, folder=CHECKPOINT_DIR):
    """Write a finding on what limits card number ``key`` toward its target into the card of
    ``name`` in ``folder`` (``registry.with_limit``, dated today) and re-render its Markdown."""
    write_card(with_limit(read_card(name, folder), key, text, source, time.strftime("%Y-%m-%d")), folder)
    print(f"wrote the finding on {key} into {card_path(name, folder)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(LITE_SPECS))
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--pool", type=int, help="number of ShapeWorld training images")
    p.add_argument("--cond-dropout", type=float,
                   help="shapes-flux: share of training captions replaced by the empty caption "
                        "(teaches the unconditional branch of classifier-free guidance; default: "
                        "with --init the shipped card's, else 0)")
    p.add_argument("--guidance", type=float,
                   help="shapes-flux: classifier-free guidance scale of the card's samples (1: none; "
                        "default: with --init the shipped card's, else 1)")
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
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: each step's forward under bf16 autocast (weights and optimiser stay float32; "
                        "on the CPU attention as plain matrix products; faster only where the CPU has AVX-512 BF16 or AMX, "
                        "or on a GPU), see zoo/training/fast.py")
    p.add_argument("--compile", action="store_true",
                   help="run the model's forward through torch.compile during the loop")
    p.add_argument("--gpu-budget", type=float, metavar="MIN",
                   help="train for MIN minutes on the GPU: batch 512 (or --batch), bf16, compiled with CUDA "
                        "graphs; continues the run folder's unfinished run, else starts from the shipped "
                        "checkpoint (--device cpu tries the command on the CPU)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT/NAME from its last saved state (weights, optimiser, "
                        "schedule, generators), with the options it was started with")
    p.add_argument("--save-minutes", type=float, default=5.0,
                   help="save the resumable state to OUT/NAME/state/ this often, and after the last step "
                        "(0: after every step)")
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
                   help="no training: re-render the shipped card (Markdown) and sample grid, with the "
                        "spec's targets")
    p.add_argument("--install", metavar="RUN_DIR",
                   help="install the run in RUN_DIR (trained with --no-install) by the same rule as a run's end, "
                        "or list it on the shipped card as not installed; nothing is trained")
    p.add_argument("--limit", nargs=2, metavar=("NUMBER", "TEXT"),
                   help="write a finding on what limits the card's target NUMBER into the shipped card "
                        "(with --limit-source; nothing is trained)")
    p.add_argument("--limit-source", metavar="SOURCE", help="the command or script that measured --limit's finding")
    p.add_argument("--reevaluate", action="store_true",
                   help="with --card-only: also recompute the card's validation numbers")
    args = p.parse_args(argv)
    if args.install:
        return install_run(args.name, Path(args.install), Path(args.checkpoint_dir), force=args.force)
    if args.limit:
        return set_limit(args.name, *args.limit, source=args.limit_source or "", folder=Path(args.checkpoint_dir))
    if args.card_only:
        return refresh_card(args.name, reevaluate=args.reevaluate, n=args.eval_n, guidance=args.guidance)
    s, plan = spec(args.name), TRAINING[args.name]
    if args.gpu_budget is not None:
        _gpu_budget(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device_type = device.type
    run_dir = Path(args.out) / args.name
    resume = _resumed_args(args, p) if args.resume else None
    for k, v in asdict(plan.training).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    previous = read_card(args.name, Path(args.checkpoint_dir)) if args.init else None
    _sampling_defaults(args, previous)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    model, stats, metrics = train_lite(args, device, state_dir=run_dir / STATE_DIR, resume=resume)
    start_steps = previous["training"].get("total_steps", previous["training"]["steps"]) if previous else 0
    card = {
        "name": args.name,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in {**s.config, **args.config}.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "data": f"ShapeWorld split=train seed={args.seed}: a pool of {args.pool} images of "
                f"{args.size}x{args.size}, batches drawn with replacement",
        "training": {"steps": stats["steps_done"], "batch": args.batch, "lr": args.lr,
                     "total_steps": stats["steps_done"] + start_steps,
                     "init": f"the checkpoint of the history's last row ({start_steps} steps)" if previous else "random",
                     "optimizer": optimizer_description(),
                     "objective": plan.objective.__doc__.splitlines()[0],
                     "final_loss": round(stats["final_loss"], 5), "loss_curve": stats["loss_curve"],
                     "seed": args.seed,
                     **({"head": stats["head"]} if "head" in stats else {}),
                     **({"ema": args.ema} if args.ema else {}),
                     **({"minutes": args.minutes} if args.minutes else {}),
                     "precision": args.precision, **({"compiled": True} if args.compile else {}),
                     **({"cond_dropout": args.cond_dropout} if s.text_encoder else {})},
        "wall_time_s": stats["train_seconds"] + (previous["wall_time_s"] if previous else 0),
        "hardware": f"{device.type}: " + (torch.cuda.get_device_name(device) if device.type == "cuda"
                                          else f"{platform.processor() or platform.machine()}, "
                                               f"{torch.get_num_threads()} threads"),
        "torch": torch.__version__,
        "validation": metrics,
        "targets": plan.card_targets(),
        "headline": plan.headline,
        "date": time.strftime("%Y-%m-%d"),
    }
    shipped = card_path(args.name, Path(args.checkpoint_dir))
    card["history"] = history(json.loads(shipped.read_text()) if shipped.exists() else None,
                              plan.card_keys())
    save_checkpoint(model, card, run_dir, objective=stats.get("objective"))
    encoder = generate.TextEncoder(device=device) if s.text_encoder else None
    save_sample_grid(args.name, model, run_dir / f"{args.name}-samples.png", encoder=encoder,
                     guidance=args.guidance)
    print(json.dumps(card["validation"], indent=1))

    if args.no_install:
        print(f"kept the shipped checkpoint (--no-install); this run is in {run_dir}")
        return
    install_run(args.name, run_dir, Path(args.checkpoint_dir), force=args.force)


def install_run(name: str, run_dir: Path, ship_dir: Path = CHECKPOINT_DIR, force: bool = False) -> bool:
    """Install the trained checkpoint in ``run_dir`` (weights, card, sample grid) into ``ship_dir``
    when it improves on the card there (``objectives.improves`` over the spec's ``ship_on``), or
    with ``force``; else list it under "Runs not installed" on that card (``registry.record_run``)
    and keep the shipped files. Returns whether it was installed."""
    run_dir, ship_dir = Path(run_dir), Path(ship_dir)
    plan, shipped = TRAINING[name], card_path(name, ship_dir)
    card = read_card(name, run_dir)
    old = read_card(name, ship_dir) if shipped.exists() else None
    better, why = improves(card["validation"], old["validation"] if old else None, plan.ship_on)
    print(f"{'improves on' if better else 'does not improve on'} the shipped card: {why}")
    if not (better or force):
        t = card["training"]
        trained = (f"{t['steps']:,} steps at lr {t['lr']:g}, {t.get('precision', 'fp32')}, "
                   f"{card['wall_time_s'] - old.get('wall_time_s', 0):.0f} s on {card['hardware']}; run folder {run_dir}")
        write_card(record_run(old, card, why, plan.card_keys(), source=trained), ship_dir)
        print(f"kept the shipped checkpoint and listed this run under 'Runs not installed' on {shipped}")
        return False
    ship_dir.mkdir(parents=True, exist_ok=True)
    for f in run_dir.iterdir():
        if f.is_file():  # not the resumable state
            shutil.copy2(f, ship_dir / f.name)
    print(f"installed {name} into {ship_dir}")
    return True


if __name__ == "__main__":
    main()
