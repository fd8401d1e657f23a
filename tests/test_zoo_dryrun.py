"""The full-mode dry run (CHAINS_FULL_WEIGHTS=random): real classes and shapes, random weights, no hub."""
import json

import numpy as np
import pytest
import torch

from chains_lite import zoo
from chains_lite.zoo import catalog, dryrun
from chains_lite.zoo.catalog import FULL_MODELS

pytest.importorskip("diffusers")


@pytest.fixture
def dry(monkeypatch):
    monkeypatch.setenv(dryrun.ENV, "random")


def test_switch_values(monkeypatch):
    monkeypatch.delenv(dryrun.ENV, raising=False)
    assert not catalog.random_weights()
    monkeypatch.setenv(dryrun.ENV, "hub")
    assert not catalog.random_weights()
    monkeypatch.setenv(dryrun.ENV, "zeros")
    with pytest.raises(ValueError, match="CHAINS_FULL_WEIGHTS"):
        catalog.random_weights()


def test_word_tokenizer_pads_truncates_and_maps_words():
    tok = dryrun.word_tokenizer(8, words=["cat"])
    out = tok(["a cat, a CAT", "cat " * 20], padding="max_length", max_length=8, truncation=True,
              return_offsets_mapping=True)
    ids, offsets = out["input_ids"], out["offset_mapping"]
    cat, unk, eos, pad = tok.convert_tokens_to_ids(["cat", "<unk>", "</s>", "<pad>"])
    assert ids[0] == [unk, cat, unk, unk, cat, eos, pad, pad]
    assert [("a cat, a CAT"[a:b]) for a, b in offsets[0][:5]] == ["a", "cat", ",", "a", "CAT"]
    assert len(ids[1]) == 8 and ids[1][-1] == eos


@pytest.mark.parametrize("name", [n for n, s in FULL_MODELS.items() if s.family == "timm"])
def test_timm_dry_run_keeps_the_token_layout(dry, name):
    import timm
    with torch.device("meta"):
        real = timm.create_model(FULL_MODELS[name].hub_id, pretrained=False)
    model = zoo.load(name, mode="full", device="cpu", verbose=False).model
    assert type(model) is type(real)
    assert model.patch_embed.patch_size == real.patch_embed.patch_size
    assert model.patch_embed.img_size == real.patch_embed.img_size
    assert model.num_prefix_tokens == real.num_prefix_tokens
    assert len(model.blocks) == len(real.blocks)
    assert model.blocks[0].attn.num_heads == real.blocks[0].attn.num_heads
    assert model.embed_dim == 16 * real.blocks[0].attn.num_heads < real.embed_dim


def test_load_full_mode_on_cpu_without_hub_prints_the_banner(dry, capsys):
    loaded = zoo.load("flux-schnell", mode="full", device="cpu")
    assert loaded.mode == "full" and loaded.extra["weights"] == "random"
    assert catalog.BANNER in capsys.readouterr().out
    assert zoo.load("flux-schnell", mode="lite", device="cpu", verbose=False).mode == "lite"
    with pytest.raises(ValueError, match="no overrides"):
        zoo.load_full("dino-vits16", device="cpu", depth=1)


def test_preflight_in_a_dry_run_skips_gpu_and_hub_but_not_data(dry, tmp_path):
    zoo.preflight("flux-schnell", device="cpu")          # needs a GPU and the hub otherwise
    with pytest.raises(zoo.FullModeUnavailable, match="--data"):
        zoo.preflight("flux-schnell", device="cpu", data={"--data": tmp_path / "missing.mat"})


def test_flux_dry_run_has_the_real_token_grid_and_text_length(dry):
    from diffusers import FluxTransformer2DModel
    from chains_lite.zoo.inputs import full_inputs
    loaded = zoo.load("flux-schnell", mode="full", device="cpu", verbose=False)
    assert type(loaded.model) is FluxTransformer2DModel
    pipe = loaded.pipeline
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 16
    inp = full_inputs(loaded, torch.rand(1, 3, 512, 512), ["a photo of a cat"])
    assert inp.x0.shape == (1, (512 // 16) ** 2, 64)                    # 32 x 32 packed latents
    assert inp.text.shape[1] == dryrun.FLUX_T5_LENGTH == 256
    assert inp.pooled.shape == (1, dryrun.FLUX_TRANSFORMER["pooled_projection_dim"])


def _attention_layout(unet):
    from diffusers.models.attention_processor import Attention
    return [(n.rsplit(".", 2)[0], m.heads, m.is_cross_attention) for n, m in unet.named_modules()
            if isinstance(m, Attention)]


def test_sd_dry_run_has_the_real_attention_layout(dry):
    from diffusers import UNet2DConditionModel
    # Stable Diffusion 1.5's UNet configuration (unet/config.json on the hub)
    real_cfg = dict(dryrun.SD_UNET, block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32,
                    cross_attention_dim=768)
    with torch.device("meta"):
        real = UNet2DConditionModel(**real_cfg)
    loaded = zoo.load("sd15", mode="full", device="cpu", verbose=False)
    assert type(loaded.model) is UNet2DConditionModel
    assert _attention_layout(loaded.model) == _attention_layout(real)        # 32 layers, 8 heads each
    assert loaded.model.config.sample_size == 64 and loaded.pipeline.vae_scale_factor == 8
    lat, kw = zoo.inputs.unet_inputs(loaded, torch.rand(1, 3, 512, 512))
    assert lat.shape == (1, 4, 64, 64) and kw["encoder_hidden_states"].shape == (1, 77, 64)


def test_clip_dry_run_keeps_heads_and_tokens(dry):
    loaded = zoo.load("clip-vitb32", mode="full", device="cpu", verbose=False)
    v = loaded.model.visual
    assert v.transformer.resblocks[0].attn.num_heads == 12 and len(v.transformer.resblocks) == 12
    assert v.grid_size == (7, 7)
    assert loaded.tokenizer(["a cat"]).shape == (1, 77)


def test_write_data_in_the_real_formats(tmp_path):
    from chains_lite.zoo.datasets import ImageNetSegmentation
    from chains_lite.zoo.datasets import load_imagenet_segmentation
    from chains_lite.zoo.datasets import CocoStuff, imagenet_folder
    env = dryrun.write_data(tmp_path, n=3, size=32)
    images, masks = dryrun._images(3, 32, 0)
    x, m = load_imagenet_segmentation(env["IMAGENET_SEG"], size=32)
    assert np.array_equal((x.permute(0, 2, 3, 1).numpy() * 255).round(), images)
    assert np.array_equal(m.numpy(), masks > 0) and m.any() and (~m).any()
    data = ImageNetSegmentation(env["IMAGENET_SEG"])
    assert data.wnids == ["n02123045", "n02099601", "n04285008"]   # tabby, golden retriever, sports car
    loaded = zoo.load("shapes-vit", mode="lite", verbose=False)
    xs, labels, classes = imagenet_folder(env["CHAINS_IMAGENET"], 10, 0, loaded)
    assert len(classes) == 1000 and len(xs) == 3 and sorted(labels.tolist()) == [0, 1, 2]
    coco = CocoStuff(env["COCO_STUFF_ROOT"], env["COCO_STUFF_LIST"], env["COCO_STUFF_FINE_TO_COARSE"], size=32)
    img, lab = coco.batch([0, 1])
    assert img.shape == (2, 3, 32, 32) and lab.shape == (2, 32, 32) and coco.n_classes == 27
    assert len(open(env["CHAINS_SAG_PROMPTS"]).read().split("\n")) > 3
    assert json.loads(open(env["COCO_STUFF_FINE_TO_COARSE"]).read())["28"] == 1


def test_inception_stand_in_shapes():
    feats, logits = dryrun.inception_stand_in()(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1000)


def test_main_prints_exports(tmp_path, capsys):
    dryrun.main([str(tmp_path), "--n", "2"])
    out = capsys.readouterr().out
    assert "export CHAINS_FULL_WEIGHTS=random" in out and "export CHAINS_MODE=full" in out
    assert f"export IMAGENET_SEG={tmp_path}/gtsegs_ijcv.mat" in out


def test_sd_codec_on_the_dry_run_pipeline(dry):
    from chains_lite.experiments import sag as exp
    loaded = zoo.load("sd15", mode="full", device="cpu", verbose=False)
    encode, decode = exp.sd_codec(loaded)
    text = encode(["a photo of a cat", ""])
    assert text.shape == (2, 77, 64) and not text.requires_grad
    images = decode(torch.randn(1, 4, 64, 64))
    assert images.shape == (1, 3, 512, 512) and not images.requires_grad    # plotted as they are
