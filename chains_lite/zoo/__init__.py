"""The model zoo: ShapeWorld, the lite models trained on it, and loaders for the paper's models.

    from chains_lite import zoo
    batch = zoo.shapeworld(16, split="test")
    vit = zoo.load("shapes-vit")            # or a paper model: zoo.load("dino-vitb8", mode="full")
    logits = vit.model(batch.images)        # (16, 6), classes in zoo.CLASS_NAMES order

Modules: ``shapeworld`` (data), ``models`` (one ``LiteSpec`` per lite model: config, builder,
training objective and defaults, card metric), ``train`` (``python -m chains_lite.zoo.training
NAME``), ``evaluate`` (card numbers), ``generate`` (MiniLM text encoder, samplers), ``load``
(lite and full loading), ``preflight`` (what full mode needs, checked before loading), ``registry``
(checkpoint files and cards), ``dryrun`` (full mode with random weights and synthetic data, on a
CPU: ``CHAINS_FULL_WEIGHTS=random``).
"""
from .catalog import (BANNER, FULL_MODELS, LITE_NAMES, Loaded, can_run_full, choose_mode, full_spec,
                      random_weights, resolve_mode)
from .load import load, load_full
from .preflight import FullModeUnavailable, preflight
from .shapeworld import CLASS_NAMES, ShapeBatch, shapeworld

__all__ = ["BANNER", "CLASS_NAMES", "FULL_MODELS", "FullModeUnavailable", "LITE_NAMES", "Loaded", "ShapeBatch",
           "can_run_full", "choose_mode", "full_spec", "load", "load_full", "preflight", "random_weights", "resolve_mode", "shapeworld"]
