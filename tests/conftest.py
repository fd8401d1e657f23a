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
def unet(request):
    """A small random-weight unconditional UNet with self-attention at two resolutions (seed 0,
    eval mode); a test module's ``UNET_CONFIG`` replaces ``UNET``."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(**getattr(request.module, "UNET_CONFIG", UNET)).eval()


@pytest.fixture(scope="module")
def cond_unet(request):
    """A small random-weight text-conditioned UNet (cross-attention to 12-dim states; seed 0,
    eval mode); a test module's ``COND_CONFIG`` replaces ``COND``."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(**getattr(request.module, "COND_CONFIG", COND)).eval()


@pytest.fixture(scope="module")
def sched():
    """A DDIM scheduler over a cosine DDPM schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler
    return DDIMScheduler.from_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)


# the benchmarks' run identity: a first run stopped after its first item, then changed reruns
class StopRun(Exception):
    """Raised by a stand-in for a benchmark's work after its first item is on disk."""


@pytest.fixture
def refused_on_resume(monkeypatch):
    """``check(bench, argv, changes, load=None)``: ``bench.main(argv)`` records its first item (the
    work is a stand-in: item 0 gets an empty record, item 1 stops the run; give ``--batch-size 1``
    or the like and at least 2 items), then ``bench.main(argv + change)`` must be refused by the
    runner for every ``change`` in ``changes`` (a ``ValueError`` naming another configuration),
    before any work. ``change`` is an argv list, or a callable run before ``bench.main(argv)``
    (it changes a file, the loaded weights, ...) that returns the argv to add."""
    from chains_lite.experiments import cli
    real = cli.run

    def first_item_only(work, n, args, config, **kw):
        def stand_in(indices):
            if indices[0] == 0:
                return [{} for _ in indices]
            raise StopRun
        return real(stand_in, n, args, config, **kw)
    monkeypatch.setattr(cli, "run", first_item_only)

    def check(bench, argv, changes):
        with pytest.raises(StopRun):
            bench.main(argv)
        for change in changes:
            extra = change() if callable(change) else change
            with pytest.raises(ValueError, match="another configuration") as e:
                bench.main(argv + extra)
            yield change, str(e.value)
    return lambda *a: list(check(*a))


@pytest.fixture
def other_checkpoint(monkeypatch):
    """A callable for ``refused_on_resume``'s changes: from then on ``zoo.load`` gives every model
    another checkpoint digest (a retrained lite model of the same name)."""
    from chains_lite import zoo

    def change():
        real = zoo.load

        def load(*a, **k):
            out = real(*a, **k)
            if "checkpoint" in out.extra:
                out.extra["checkpoint"] = "sha256:retrained"
            return out
        monkeypatch.setattr(zoo, "load", load)
        return []
    return change


@pytest.fixture
def hub_weights(monkeypatch):
    """A change for ``refused_on_resume``: from then on ``zoo.load``'s models carry no dry-run mark
    (``extra["weights"] == "random"``), as the hub's real weights would: a real run must not
    resume a dry run's records."""
    def change():
        from chains_lite import zoo
        real = zoo.load

        def load(*a, **k):
            out = real(*a, **k)
            out.extra.pop("weights", None)
            return out
        monkeypatch.setattr(zoo, "load", load)
        return []
    return change
