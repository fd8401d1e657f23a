"""Reading attention out of unmodified models: one seam (:func:`capture`, :func:`add_logit_bias`),
one module per model family (timm ViTs, open_clip vision towers, BERT, diffusers UNets and FLUX).

    with capture(model) as rec:       # forward pre-hooks; outputs unchanged
        model(x)
    rec.attentions                    # per layer (B, heads, N, N), rows sum to 1
"""
from .families import FAMILIES, attention_layers, chosen_layers, family_of, register_family
from .family import QK, Family, additive_mask
from .seam import Recorder, add_logit_bias, capture

__all__ = ["FAMILIES", "QK", "Family", "Recorder", "add_logit_bias", "additive_mask", "attention_layers",
           "capture", "chosen_layers", "family_of", "register_family"]
