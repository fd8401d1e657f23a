"""Hypothesis runs the same examples every time (so a CI result can be reproduced), unless
HYPOTHESIS_PROFILE=explore asks for fresh random examples."""
import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


import pytest  # noqa: E402


@pytest.fixture
def tiny_vit():
    """Builder of small random timm ViTs (eval mode, seeded): ``tiny_vit(depth=2, reg_tokens=1)``."""
    def build(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3,
              reg_tokens=0, seed=0):
        timm = pytest.importorskip("timm")
        import torch
        torch.manual_seed(seed)
        return timm.models.vision_transformer.VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, num_classes=num_classes, reg_tokens=reg_tokens).eval()
    return build
