"""The model zoo: shipped lite checkpoints load offline and meet their cards; full loaders build
the paper's model classes from small configs (random weights, no download)."""

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("diffusers")

from chains_lite.zoo import load  # noqa: E402
from chains_lite.zoo.training import evaluate  # noqa: E402
from chains_lite.zoo.load import load_full
from chains_lite.zoo.models import LITE_CONFIGS, build  # noqa: E402
from chains_lite.zoo.registry import CHECKPOINT_DIR, read_card, weights_path  # noqa: E402
from chains_lite.zoo.shapeworld import CLASS_NAMES  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every zoo test runs as CI does: no hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_checkpoints_fit_the_size_budget():
    total = sum(f.stat().st_size for f in CHECKPOINT_DIR.glob("*.safetensors"))
    assert total <= 20 * 2**20, f"lite checkpoints take {total / 2**20:.1f} MB > 20 MB"


@pytest.mark.parametrize("name", sorted(LITE_CONFIGS))
def test_every_lite_model_is_shipped_with_a_card(name):
    assert weights_path(name).exists(), f"{name} is not trained yet"
    card = read_card(name)
    for key in ("config", "data", "training", "wall_time_s", "hardware", "validation"):
        assert key in card
    assert (CHECKPOINT_DIR / f"{name}.md").exists()


@pytest.mark.parametrize("name, test_key", [("shapes-vit", "test_accuracy"), ("shapes-vit-reg", "test_accuracy"),
                                            ("shapes-vit-ssl", "probe_test_accuracy")])
def test_classifier_meets_its_card_on_fresh_images(name, test_key):
    """Accuracy (shapes-vit-ssl: of its linear-probe head) on test-split images no card number was
    computed on (seed 1), within 4 points (the binomial standard error at n = 600 and 92% accuracy
    is 1.1 points)."""
    loaded = load(name, mode="lite", device="cpu")
    assert loaded.mode == "lite" and not loaded.model.training
    assert loaded.class_names == CLASS_NAMES
    card = read_card(name)["validation"]
    acc = evaluate.vit_metrics(loaded.model, split="test", n=600, seed=1)["accuracy"]
    assert acc >= card[test_key] - 0.04, (acc, card)
    if name != "shapes-vit-ssl":  # its target is test_self_supervised_probe_meets_the_target
        assert acc >= 0.9, "the issue's target: >= 90% on a fresh test split"


@pytest.mark.xfail(strict=True, reason="the shipped shapes-vit-ssl misses the issue's target: a linear "
                                       "probe of its CLS token names the largest shape of fewer than 90 % "
                                       "of the validation images (its card, benchmarks/lite_vits.py); "
                                       "strict, so a model that meets it shows up here")
def test_self_supervised_probe_meets_the_target():
    loaded = load("shapes-vit-ssl", mode="lite", device="cpu", verbose=False)
    assert evaluate.vit_metrics(loaded.model, split="test", n=600, seed=1)["accuracy"] >= 0.9


def test_vit_reg_has_registers_and_cls():
    m = load("shapes-vit-reg", mode="lite", device="cpu", verbose=False).model
    assert m.num_prefix_tokens == 5 and m.cls_token is not None and m.reg_token.shape[1] == 4
    x = torch.rand(2, 3, 64, 64)
    assert m.forward_features(x).shape == (2, 5 + 64, 128)


def test_flux_meets_its_card():
    """Colour and shape agreement with 60 fresh captions (seed 5), within 0.15 of the card
    (the binomial SE at n = 60 is at most 0.065), and colours far above chance."""
    loaded = load("shapes-flux", mode="lite", device="cpu", verbose=False)
    card = read_card("shapes-flux")["validation"]
    got = evaluate.flux_metrics(loaded.model, loaded.text_encoder, n=60, seed=5,
                                steps=card["sampler_steps"], frechet=False,
                                guidance=card.get("guidance_scale", 1.0))
    assert got["color_match"] >= card["color_match"] - 0.15, (got, card)
    assert got["caption_match"] >= card["caption_match"] - 0.15, (got, card)
    assert got["color_match"] > 2 * card["color_chance"]  # it follows the caption's colours


def test_unet_meets_its_card():
    loaded = load("shapes-unet", mode="lite", device="cpu", verbose=False)
    card = read_card("shapes-unet")["validation"]
    got = evaluate.unet_metrics(loaded.model, n=60, seed=5, steps=card["sampler_steps"], frechet=False)
    assert got["confident_fraction"] >= card["confident_fraction"] - 0.15, (got, card)


def test_minilm_loads_offline():
    loaded = load("minilm", mode="lite", device="cpu", verbose=False)
    cfg = loaded.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (6, 12, 384)
    states, pooled = loaded.text_encoder(["a red star on stripes", "a blue circle on noise"])
    assert states.shape == (2, 20, 384) and pooled.shape == (2, 384)
    # a pretrained encoder, not random weights: related captions are closer than unrelated ones
    _, p = loaded.text_encoder(["a red star", "a crimson star", "a tax form"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(p[0], p[1], dim=0) > cos(p[0], p[2], dim=0) + 0.2


def test_full_name_in_lite_mode_loads_the_stand_in(capsys):
    loaded = load("dino-vitb8", mode="lite", device="cpu")
    assert loaded.mode == "lite" and loaded.name == "shapes-vit"
    assert "stands in for dino-vitb8" in capsys.readouterr().out


def test_auto_without_gpu_says_why(capsys, monkeypatch):
    monkeypatch.delenv("CHAINS_MODE", raising=False)
    loaded = load("flux-schnell", mode="auto", device="cpu")
    assert loaded.mode == "lite" and loaded.name == "shapes-flux"
    assert "no GPU" in capsys.readouterr().out


def test_full_mode_failure_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # offline, and the weights are not cached
    with pytest.raises(RuntimeError, match="(?s)not in the hub cache.*CHAINS_MODE=lite"):
        load_full("dino-vits16", device="cpu")


SMALL_VIT = dict(depth=2, embed_dim=64, num_heads=2)


@pytest.mark.parametrize("name, prefix", [("dino-vits16", 1), ("dino-vitb8", 1), ("vit-b16", 1),
                                          ("dinov2-vits14-reg", 5), ("dinov2-vitb14-reg", 5)])
def test_full_timm_loaders_build_offline(name, prefix):
    loaded = load_full(name, device="cpu", pretrained=False, **SMALL_VIT)
    m = loaded.model
    assert loaded.mode == "full" and not m.training and m.num_prefix_tokens == prefix
    size = m.patch_embed.img_size
    x = torch.rand(1, 3, *size)
    grid = (size[0] // m.patch_embed.patch_size[0]) * (size[1] // m.patch_embed.patch_size[1])
    assert m.forward_features(x).shape == (1, prefix + grid, 64)
    assert loaded.preprocess is not None


def test_full_open_clip_loader_builds_offline():
    pytest.importorskip("open_clip")
    loaded = load_full("clip-vitb32", device="cpu", pretrained=False)
    feats = loaded.model.encode_image(torch.rand(1, 3, 224, 224))
    assert feats.shape == (1, 512)
    # OpenAI's CLIP weights were trained with QuickGELU; nn.GELU would change every activation
    acts = {type(m).__name__ for m in loaded.model.visual.modules() if "GELU" in type(m).__name__}
    assert acts == {"QuickGELU"}
    assert loaded.tokenizer(["a photo of a cat"]).shape == (1, 77)


def test_full_flux_and_sd_loaders_build_offline():
    small_flux = dict(LITE_CONFIGS["shapes-flux"])
    small_flux.pop("class")
    flux = load_full("flux-schnell", device="cpu", pretrained=False, **small_flux).model
    assert type(flux).__name__ == "FluxTransformer2DModel" and type(flux) is type(build("shapes-flux"))
    sd = load_full("sd15", device="cpu", pretrained=False, block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                   attention_head_dim=8, norm_num_groups=8, sample_size=16).model
    assert type(sd).__name__ == "UNet2DConditionModel"


@pytest.mark.parametrize("family, gib, bf16, offload, dtype", [
    ("flux", 15.0, False, "sequential", torch.float16),   # T4: no bfloat16
    ("flux", 22.0, True, "sequential", torch.bfloat16),   # L4
    ("flux", 32.0, True, "model", torch.bfloat16),        # V100 32 GB, RTX 5090
    ("flux", 39.4, True, "none", torch.bfloat16),         # A100 40 GB
    ("flux", 79.2, True, "none", torch.bfloat16),         # A100 / H100 80 GB
    ("sd", 15.0, False, "none", torch.float16),
    ("sd", 3.5, True, "model", torch.float16),
])
def test_memory_plan_per_gpu(family, gib, bf16, offload, dtype):
    from chains_lite.zoo.load import memory_plan
    plan = memory_plan(family, gib, bf16)
    assert (plan.offload, plan.dtype) == (offload, dtype) and f"{gib:.0f} GiB" in plan.why
