"""Model inputs from the zoo: ViT preprocessing like the libraries', seeded ImageNet folders, FLUX
packing and ids as diffusers' FluxPipeline makes them, guidance as a parameter, and segmentation
encoding through the loaded model."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from chains_lite.methods import segmentation
from chains_lite.zoo import inputs
from chains_lite.zoo.catalog import Loaded
from chains_lite.zoo.models import pack


def test_packing_and_ids_match_the_flux_pipeline():
    lat = torch.randn(2, 16, 6, 8)
    # the pipeline's own (private, static) helpers are the reference for the public pack / ids
    assert torch.equal(pack(lat, 2), FluxPipeline._pack_latents(lat, 2, 16, 6, 8))
    assert torch.equal(inputs._grid_ids(3, 4, "cpu", torch.float32),
                       FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))


def _fake_pipeline(guidance_embeds: bool):
    """The parts of a FluxPipeline that full_inputs uses, with 8x downsampling and 16 channels."""
    def vae_encode(x):
        lat = torch.nn.functional.avg_pool2d(x, 8).repeat(1, 6, 1, 1)[:, :16]
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: lat))

    def encode_prompt(prompt, prompt_2, device, max_sequence_length):
        n = len(prompt)
        return torch.ones(n, max_sequence_length, 4), torch.ones(n, 3), torch.zeros(max_sequence_length, 3)

    def tokenizer_2(captions, **kw):
        return {"offset_mapping": [[(0, 0)] * kw["max_length"] for _ in captions]}

    vae = SimpleNamespace(encode=vae_encode, dtype=torch.float32,
                          config=SimpleNamespace(shift_factor=0.5, scaling_factor=2.0))
    transformer = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32,
                                  config=SimpleNamespace(guidance_embeds=guidance_embeds))
    return SimpleNamespace(vae=vae, transformer=transformer, encode_prompt=encode_prompt,
                           tokenizer_2=tokenizer_2, _execution_device=torch.device("cpu"))


def test_full_inputs_pack_the_latents_and_take_guidance_as_a_parameter():
    images = torch.rand(2, 3, 32, 48)
    loaded = SimpleNamespace(mode="full", pipeline=_fake_pipeline(True))
    got = inputs.encode(loaded, images, ["a cat", "a dog"], max_sequence_length=5, guidance=7.0)
    lat = (torch.nn.functional.avg_pool2d(images * 2 - 1, 8).repeat(1, 6, 1, 1)[:, :16] - 0.5) * 2.0
    assert torch.equal(got.x0, FluxPipeline._pack_latents(lat, 2, 16, 4, 6))
    assert torch.equal(got.img_ids, FluxPipeline._prepare_latent_image_ids(2, 2, 3, "cpu", torch.float32))
    assert got.text.shape == (2, 5, 4) and torch.equal(got.guidance, torch.full((2,), 7.0))
    schnell = SimpleNamespace(mode="full", pipeline=_fake_pipeline(False))
    assert inputs.encode(schnell, images, ["a cat", "a dog"], max_sequence_length=5).guidance is None


def test_segmentation_encodes_with_the_loaded_model_or_the_given_encoder(monkeypatch):
    calls = []
    zoo_encoder = lambda l, images, captions: calls.append(("zoo", len(images))) or "z"  # noqa: E731
    loaded = Loaded(model=None, name="x", mode="lite", why="", encoder=zoo_encoder)
    assert segmentation.encode_inputs(loaded, torch.zeros(2, 3, 4, 4), ["a", "b"]) == "z"   # Loaded.encode
    given = lambda l, images, captions: calls.append(("given", len(images))) or "g"  # noqa: E731
    assert segmentation.encode_inputs(loaded, torch.zeros(1, 3, 4, 4), ["a"], given) == "g"
    assert calls == [("zoo", 2), ("given", 1)]
    with pytest.raises(ValueError, match="no encode"):
        segmentation.encode_inputs(SimpleNamespace(model=None), torch.zeros(1, 3, 4, 4), ["a"])
    with pytest.raises(ValueError, match="has no encoder"):
        Loaded(model=None, name="shapes-vit", mode="lite", why="").encode(torch.zeros(1, 3, 4, 4), ["a"])


def test_model_input_resizes_and_normalises_like_the_library():
    pytest.importorskip("timm")
    from chains_lite.zoo.load import load_full
    from chains_lite.zoo.inputs import input_size, model_input
    from chains_lite.zoo.catalog import Loaded
    loaded = load_full("dino-vits16", device="cpu", pretrained=False, depth=1, embed_dim=32, num_heads=2)
    x = torch.rand(2, 3, 50, 50)
    y = model_input(loaded, x)
    assert y.shape == (2, 3, 224, 224) and input_size(loaded.model) == 224
    cfg = loaded.model.pretrained_cfg
    flat = model_input(loaded, torch.full((1, 3, 8, 8), 0.5))
    torch.testing.assert_close(flat[0, :, 0, 0], (0.5 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"]))
    lite = Loaded(loaded.model, "x", "lite", "")
    assert torch.equal(model_input(lite, x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model_input(lite, x * 2)


def test_imagenet_folder_draws_seeded_images_with_sorted_wnid_labels(tmp_path):
    pytest.importorskip("timm")
    from PIL import Image
    from chains_lite.zoo.load import load_full
    from chains_lite.zoo.datasets import imagenet_folder
    for i in range(1000):
        d = tmp_path / f"n{i:08d}"
        d.mkdir()
        Image.new("RGB", (20, 30), (i % 256, 0, 0)).save(d / "a.png")
    loaded = load_full("vit-b16", device="cpu", pretrained=False, depth=1, embed_dim=32, num_heads=2)
    x, y, wnids = imagenet_folder(tmp_path, 4, seed=1, loaded=loaded)
    x2, y2, _ = imagenet_folder(tmp_path, 4, seed=1, loaded=loaded)
    assert x.shape == (4, 3, 224, 224) and torch.equal(y, y2) and wnids[7] == "n00000007"
    assert len(set(y.tolist())) == 4
    (tmp_path / "n00000000" / "a.png").unlink()
    (tmp_path / "n00000000").rmdir()
    with pytest.raises(ValueError, match="1000 class folders, found 999"):
        imagenet_folder(tmp_path, 4, seed=1, loaded=loaded)


def test_unet_inputs_of_the_lite_unet_are_pixels_in_minus_one_one():
    from chains_lite import zoo
    from chains_lite.zoo.inputs import unet_inputs
    loaded = zoo.load("shapes-unet", mode="lite", device="cpu", verbose=False)
    images = torch.rand(2, 3, 32, 32)
    x0, cond = unet_inputs(loaded, images)
    torch.testing.assert_close(x0, images * 2 - 1)
    assert cond == {}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        unet_inputs(loaded, images + 1)


def test_coco_stuff_reads_centre_squares_and_maps_fine_to_coarse_labels(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from chains_lite.zoo.datasets import CocoStuff
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotation_val2017").mkdir()
    lab = np.full((40, 60), 255, dtype=np.uint8)
    lab[:, 10:30], lab[:, 30:50] = 7, 3             # fine labels; the centre square is columns 10..49
    Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8)).save(tmp_path / "val2017" / "a.jpg")
    Image.fromarray(lab).save(tmp_path / "annotation_val2017" / "a.png")
    (tmp_path / "list.txt").write_text("a\n")
    (tmp_path / "f2c.json").write_text(json.dumps({"7": 1, "3": 0, "9": 26}))
    data = CocoStuff(tmp_path, tmp_path / "list.txt", tmp_path / "f2c.json", size=20)
    images, labels = data.batch([0])
    assert len(data) == 1 and data.n_classes == 27
    assert images.shape == (1, 3, 20, 20) and 0 <= images.min() <= images.max() <= 1
    assert labels.dtype == torch.long and (labels[0, :, :10] == 1).all() and (labels[0, :, 10:] == 0).all()


def test_pipeline_images_are_the_pipelines_pictures_as_tensors():
    from PIL import Image
    from chains_lite.zoo.inputs import image_tensor, pipeline_images
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    torch.testing.assert_close(image_tensor(Image.fromarray(pixels))[:, 1, 2],
                               torch.tensor(pixels[1, 2], dtype=torch.float32) / 255)
    calls = []

    def pipe(prompt, **kw):
        calls.append((prompt, kw["num_inference_steps"], kw["guidance_scale"], kw["height"],
                      kw["generator"].initial_seed()))
        return SimpleNamespace(images=[Image.fromarray(pixels)])
    got = pipeline_images(SimpleNamespace(pipeline=pipe), ["a cat", "a dog"], seed=3, size=4)
    assert got.shape == (2, 3, 4, 4) and got.max() <= 1
    assert calls == [("a cat", 4, 0.0, 4, 3), ("a dog", 4, 0.0, 4, 3)]
    with pytest.raises(ValueError, match="no pipeline"):
        pipeline_images(SimpleNamespace(pipeline=None, name="shapes-flux"), ["a"])
    with pytest.raises(ValueError, match="uint8"):
        image_tensor(np.zeros((4, 4), dtype=np.uint8))
