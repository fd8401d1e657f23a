"""Images in, model input out: one path for ShapeWorld tensors and for photos, lite and full.

Every image here is a float tensor ``(N, 3, H, W)`` in [0, 1] (what ShapeWorld returns and what
the book displays). :func:`model_input` turns it into what a loaded model expects: the lite ViTs
take it as it is; the hub ViTs and CLIP need their input size and mean/std normalisation, read
from the preprocessing transform their library ships. :func:`encode` turns images and captions
into FLUX transformer inputs (:class:`FluxInputs`), for ``shapes-flux`` and for FLUX.1; a
loaded FLUX model offers it as ``loaded.encode(images, captions)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .generate import TEXT_LENGTH
from .catalog import Loaded
from .models import FLUX_PACK, image_ids, pack

PHOTOS = ("chelsea", "astronaut", "coffee")   # scikit-image's bundled sample photos


def _normalization(preprocess):
    """(mean, std) of the Normalize step in a torchvision Compose, or None."""
    for t in getattr(preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            return (torch.as_tensor(t.mean, dtype=torch.float32).view(1, 3, 1, 1),
                    torch.as_tensor(t.std, dtype=torch.float32).view(1, 3, 1, 1))
    return None


def input_size(model) -> int:
    """Square input side of a ViT (timm ``patch_embed.img_size`` or open_clip ``visual.image_size``)."""
    pe = getattr(model, "patch_embed", None)
    size = pe.img_size if pe is not None else getattr(model, "visual", model).image_size
    size = size if isinstance(size, int) else size[0]
    return int(size)


def model_input(loaded: Loaded, images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` in [0, 1] -> the model's input on its device (resized, normalised)."""
    images = torch.as_tensor(images).float()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must be in [0, 1]")
    device = next(loaded.model.parameters()).device
    if loaded.preprocess is None:
        return images.to(device)
    size = input_size(loaded.model)
    x = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    norm = _normalization(loaded.preprocess)
    if norm is not None:
        x = (x.clamp(0, 1) - norm[0]) / norm[1]
    return x.to(device)


def _square(img: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, size, size)`` in [0, 1], center-cropped to a square."""
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255.0
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)[0]


def photos(size: int = 224, paths=None) -> tuple[torch.Tensor, list[str]]:
    """Natural photos for full mode: scikit-image's ``chelsea``, ``astronaut``, ``coffee`` plus any
    image files in ``paths`` (or in the ``CHAINS_IMAGES`` environment variable, ``:``-separated).

    Returns ``(N, 3, size, size)`` in [0, 1] (center-cropped squares) and their names.
    """
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("full-mode photos come from scikit-image: pip install scikit-image") from e
    imgs = [_square(getattr(data, name)(), size) for name in PHOTOS]
    names = list(PHOTOS)
    paths = list(paths or []) + [p for p in os.environ.get("CHAINS_IMAGES", "").split(":") if p]
    if paths:
        from PIL import Image
        for p in paths:
            imgs.append(_square(np.asarray(Image.open(p).convert("RGB")), size))
            names.append(os.path.basename(p))
    return torch.stack(imgs), names


def image_tensor(image) -> torch.Tensor:
    """A PIL image or an ``(H, W, 3)`` uint8 array (what diffusers pipelines return) ->
    ``(3, H, W)`` float32 in [0, 1]."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an RGB image of (H, W, 3) uint8, got {a.shape} {a.dtype}")
    return torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255  # a writable copy


def pipeline_images(loaded, prompts: list[str], seed: int = 0, size: int = 512, steps: int = 4) -> torch.Tensor:
    """Images that a loaded FLUX.1-schnell pipeline draws for ``prompts`` (its own settings: ``steps``
    steps, no guidance), each from a generator seeded ``seed``: ``(B, 3, size, size)`` in [0, 1]."""
    if getattr(loaded, "pipeline", None) is None:
        raise ValueError(f"{getattr(loaded, 'name', 'the model')} has no pipeline: load a full FLUX model")
    return torch.stack([image_tensor(loaded.pipeline(
        p, num_inference_steps=steps, guidance_scale=0.0, height=size, width=size,
        generator=torch.Generator().manual_seed(seed)).images[0]) for p in prompts])


# ----------------------------------------------------------------------------- FLUX inputs
@dataclass
class FluxInputs:
    """A batch ready for the transformer: clean packed latents ``x0`` ``(B, n_img, C)``, text
    states ``(B, n_txt, d)``, pooled ``(B, d')``, ids, the tokenizer output (offsets included)
    that maps caption words to text tokens, and ``guidance`` ``(B,)`` (``None`` for models
    without a guidance input)."""

    x0: torch.Tensor
    text: torch.Tensor
    pooled: torch.Tensor
    img_ids: torch.Tensor
    txt_ids: torch.Tensor
    tokens: dict
    guidance: torch.Tensor | None = None


def lite_inputs(loaded, images: torch.Tensor, captions: list[str]) -> FluxInputs:
    """``shapes-flux``: pixels in [0, 1] ``(B, 3, 32, 32)`` -> its own encoding (pixels scaled to
    [-1, 1], 2 x 2 patches packed into 12-channel tokens, as it was trained) and MiniLM text."""
    device = next(loaded.model.parameters()).device
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    text, pooled = loaded.text_encoder(list(captions))
    tokens = loaded.tokenizer(list(captions), padding="max_length", max_length=TEXT_LENGTH,
                              truncation=True, return_offsets_mapping=True)
    grid = images.shape[-1] // FLUX_PACK
    return FluxInputs(pack(images.to(device) * 2 - 1), text.to(device), pooled.to(device),
                      image_ids(grid, device), torch.zeros(text.shape[1], 3, device=device), tokens)


def _grid_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """``(h*w, 3)`` FLUX position ids ``(0, row, col)`` of an ``h x w`` token grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([torch.zeros(h * w), ys.flatten().float(), xs.flatten().float()], 1).to(device, dtype)


def full_inputs(loaded, images: torch.Tensor, captions: list[str], max_sequence_length: int = 256,
                guidance: float = 3.5) -> FluxInputs:
    """FLUX.1 (a diffusers ``FluxPipeline`` in ``loaded.pipeline``): pixels in [0, 1]
    ``(B, 3, H, W)``, H and W multiples of 16 -> VAE latents (mean of the posterior, shifted and
    scaled as the pipeline does), packed 2 x 2 in row-major order with their position ids, as
    the pipeline packs its latents; T5 + CLIP text from ``encode_prompt``. ``guidance``: the
    guidance input of models that take one (FLUX.1-dev; ``FluxPipeline``'s default 3.5);
    FLUX.1-schnell has none.
    """
    pipe = loaded.pipeline
    if pipe is None:
        raise ValueError("full_inputs needs a loaded FluxPipeline (zoo.load('flux-schnell', mode='full'))")
    device, dtype = pipe._execution_device, pipe.transformer.dtype   # the GPU, also when offloaded
    x = (torch.as_tensor(images).to(device, pipe.vae.dtype) * 2 - 1)
    with torch.no_grad():
        lat = pipe.vae.encode(x).latent_dist.mode()
        lat = (lat - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        b, _, h, w = lat.shape
        x0 = pack(lat, 2).to(dtype)
        img_ids = _grid_ids(h // 2, w // 2, device, dtype)
        text, pooled, txt_ids = pipe.encode_prompt(prompt=list(captions), prompt_2=None, device=device,
                                                   max_sequence_length=max_sequence_length)
    tokens = pipe.tokenizer_2(list(captions), padding="max_length", max_length=max_sequence_length,
                              truncation=True, return_offsets_mapping=True)
    g = None
    if pipe.transformer.config.guidance_embeds:
        g = torch.full((b,), float(guidance), device=device, dtype=torch.float32)
    return FluxInputs(x0, text, pooled, img_ids, txt_ids, tokens, g)


def encode(loaded, images: torch.Tensor, captions: list[str], **kw) -> FluxInputs:
    """:func:`lite_inputs` or :func:`full_inputs` (``kw``: its options), by ``loaded.mode``."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if loaded.mode == "full":
        return full_inputs(loaded, images, captions, **kw)
    return lite_inputs(loaded, images, captions, **kw)


def unet_inputs(loaded, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Clean UNet inputs of images ``(B, 3, H, W)`` in [0, 1], and the extra keyword arguments of
    the UNet call: ``shapes-unet`` works on pixels scaled to [-1, 1] and takes no condition;
    Stable Diffusion (``loaded.pipeline``) works on VAE latents (posterior mean times the VAE's
    scaling factor, ``H/8 x W/8``) and takes ``encoder_hidden_states`` of the empty prompt, as
    DiffSeg runs it."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must be in [0, 1]")
    unet = loaded.model
    device = next(unet.parameters()).device
    pipe = loaded.pipeline
    if pipe is None:
        return (images * 2 - 1).to(device, unet.dtype), {}
    device = pipe._execution_device   # the GPU, also when the pipeline is offloaded
    with torch.no_grad():
        x = (images * 2 - 1).to(device, pipe.vae.dtype)
        lat = pipe.vae.encode(x).latent_dist.mode() * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer([""] * len(images), padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        text = pipe.text_encoder(ids.to(device))[0]
    return lat.to(unet.dtype), {"encoder_hidden_states": text.to(unet.dtype)}
