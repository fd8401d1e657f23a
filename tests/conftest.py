"""Hypothesis runs the same examples every time (so a CI result can be reproduced), unless
HYPOTHESIS_PROFILE=explore asks for fresh random examples."""
import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


import pytest  # noqa: E402
import torch  # noqa: E402


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


# small diffusers UNets for the SAG, DiffSeg and capture tests
UNET = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=8)


COND = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
            attention_head_dim=8, norm_num_groups=8)


@pytest.fixture(scope="module")
def unet():
    """A small random-weight unconditional UNet with self-attention at two resolutions."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(**UNET).eval()


@pytest.fixture(scope="module")
def cond_unet():
    """A small random-weight text-conditioned UNet (cross-attention to 12-dim states)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(**COND).eval()


@pytest.fixture(scope="module")
def sched():
    """A DDIM scheduler over a cosine DDPM schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler
    return DDIMScheduler.from_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
