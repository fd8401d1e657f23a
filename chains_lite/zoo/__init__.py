"""The model zoo: ShapeWorld, the lite models trained on it, and loaders for the paper's models.

    from chains_lite import zoo
    batch = zoo.shapeworld(16, split="test")
    vit = zoo.load("shapes-vit")            # or a paper model: zoo.load("dino-vitb8", mode="full")
    logits = vit.model(batch.images)        # (16, 6), classes in zoo.CLASS_NAMES order

Modules: ``catalog`` (modes, the dry-run switch, the paper's models, :class:`Loaded`), ``load``
(lite and full loading), ``models`` (one ``LiteSpec`` per lite model: config, builder, what the
loader attaches), ``shapeworld`` (data), ``datasets`` (the paper's datasets), ``inputs`` (model
inputs), ``generate`` (MiniLM text encoder, samplers), ``judge`` (shapes-vit judging samples),
``registry`` (checkpoint files and cards), ``preflight`` (what full mode needs, checked before
loading), ``dryrun`` (full mode with random weights and synthetic data, on a CPU:
``CHAINS_FULL_WEIGHTS=random``). Training is apart: ``training`` (``python -m
chains_lite.zoo.training NAME``).
"""
from .catalog import (BANNER, FULL_MODELS, LITE_NAMES, Loaded, can_run_full, choose_mode, full_spec,
                      random_weights, resolve_mode)
from .load import load, load_full
from .preflight import FullModeUnavailable, preflight
from .shapeworld import CLASS_NAMES, ShapeBatch, shapeworld

__all__ = ["BANNER", "CLASS_NAMES", "FULL_MODELS", "FullModeUnavailable", "LITE_NAMES", "Loaded", "ShapeBatch",
           "can_run_full", "choose_mode", "full_spec", "load", "load_full", "preflight", "random_weights", "resolve_mode", "shapeworld"]
