"""The model families :func:`chains_lite.capture.capture` knows, in the order they are tried, and
the lookups over them: which family a model is, its attention layers, the layers a call chooses.

Built in: timm ViTs, open_clip vision towers, Hugging Face BERT, diffusers UNets and FLUX (one
module each in this package). Others join with :func:`register_family`.
"""
from __future__ import annotations

from torch import nn

from .bert import HF_BERT
from .clip_vision import OPEN_CLIP
from .diffusers import FLUX, UNET
from .family import Family
from .timm_vit import TIMM_VIT

FAMILIES: list[Family] = [TIMM_VIT, OPEN_CLIP, HF_BERT, UNET, FLUX]


def register_family(family: Family) -> None:
    """Add a model family (checked before the built-in ones)."""
    FAMILIES.insert(0, family)


def refuse_compiled(model: nn.Module) -> None:
    """``ValueError`` if ``model`` or one of its modules is compiled (``torch.compile(model)``,
    ``model.compile()``, or a compiled block): compiled code does not run hooks added after it was
    traced, so a capture would record nothing and a logit bias would change nothing."""
    for name, m in model.named_modules():
        if hasattr(m, "_orig_mod") or getattr(m, "_compiled_call_impl", None) is not None:
            where = f"its module {name!r}" if name else type(model).__name__
            raise ValueError(f"{where} is compiled (torch.compile or .compile()): hooks added after "
                             "compiling do not run in compiled code, so attention cannot be recorded "
                             "or biased through it. Pass the uncompiled model (torch.compile(m)._orig_mod "
                             "is m) and compile after the capture.")


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` that knows ``model``; ``ValueError`` if none does, or if it is compiled
    (:func:`refuse_compiled`)."""
    refuse_compiled(model)
    for fam in FAMILIES:
        if fam.matches(model):
            return fam
    raise ValueError(f"capture does not know {type(model).__name__}; known families: "
                     f"{[f.name for f in FAMILIES]} (add one with register_family)")



def attention_layers(model: nn.Module, kind: str | None = None) -> list:
    """The attention modules :func:`capture` sees, in depth order (their count is the layer count).

    ``kind``: for families with several kinds of attention (see :class:`Family`), which ones;
    ``None`` = the family's default kind."""
    return of_kind(family_of(model), model, kind)


def of_kind(fam: Family, model: nn.Module, kind: str | None) -> list:
    modules = fam.layers(model)
    if fam.kinds is None:
        if kind is not None:
            raise ValueError(f"{fam.name} has one kind of attention; kind must be None, got {kind!r}")
        return modules
    kind = next(iter(fam.kinds)) if kind is None else kind
    if kind not in fam.kinds:
        raise ValueError(f"kind must be one of {tuple(fam.kinds)} for {fam.name}, got {kind!r}")
    chosen = [m for m in modules if fam.kinds[kind](m)]
    if not chosen:
        present = [k for k, is_kind in fam.kinds.items() if any(is_kind(m) for m in modules)]
        raise ValueError(f"this {fam.name} model has no {kind!r} attention layers (it has: {present})")
    return chosen


def chosen_layers(n: int, layers) -> list[int]:
    """Validate ``layers`` (an int, a sequence, negatives allowed, or ``None`` = all ``n``) -> sorted indices."""
    if layers is None:
        return list(range(n))
    idx = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"layer {i!r} out of range for a model with {n} attention layers")
        out.append(i % n)
    if len(set(out)) != len(out):
        raise ValueError(f"layers has duplicates: {idx}")
    return sorted(out)
