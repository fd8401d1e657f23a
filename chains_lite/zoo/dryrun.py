"""Full mode without the hub: the paper's model classes with random weights, on a CPU.

Set ``CHAINS_FULL_WEIGHTS=random`` (with ``CHAINS_MODE=full``) and ``zoo.load`` builds each full
model from its real library class and its real configuration where it shapes the attention the
book reads (token grids, image and latent resolutions, patch sizes, register tokens, text
lengths, the blocks and their order), with random weights and a reduced width (and, for the
diffusion transformers and text encoders, depth) so that a 2-core CPU runs every notebook's
full-mode branch in minutes. Nothing is downloaded: tokenizers that would download their
vocabulary are replaced by a word-level ``PreTrainedTokenizerFast`` built here
(:func:`word_tokenizer`), and the FID Inception network by torchvision's Inception v3 with random
weights (:func:`inception_stand_in`). :func:`write_data` writes tiny datasets in the real formats
(an ImageNet-Segmentation ``.mat``, ImageNet- and Imagenette-style folders, a SAG prompt file and
reference folder, a COCO-Stuff folder).

**Numbers from a dry run are meaningless**: it exists to execute the full-mode code paths (CI
runs every notebook this way), not to measure anything. What is real and what is reduced, per
model, is in :data:`REDUCED`.

    eval "$(python -m chains_lite.zoo.dryrun build/dryrun)"   # writes the data, prints the exports
    CHAINS_MODE=full CHAINS_FULL_WEIGHTS=random jupyter nbconvert --execute notebooks/03_*.ipynb ...
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import inputs
from .catalog import ENV, Loaded, full_spec

#: Per model: the configuration values the dry run changes (everything else is the real config).
REDUCED = {
    "timm": "embed_dim = 16 per head (heads, depth, patch size, image size and registers as real)",
    "open_clip": "vision width 192 (12 heads of 16), text width 128 (8 heads), 2 text layers, embed_dim 64",
    "flux": ("transformer: 2 double + 2 single blocks (real 19 + 38), 4 heads of 16 (real 24 of 128); "
             "T5 and CLIP text encoders 1 layer of width 64; VAE widths 8-16 (latent channels, "
             "scaling and 8x downsampling as real); word-level stand-in tokenizers"),
    "sd": ("UNet block widths (32, 32, 64, 64) (real 320-1280; blocks, layers per block, 8 heads and "
           "64x64 latents as real), cross-attention 64; CLIP text encoder 1 layer of width 64; "
           "VAE widths 8-16; word-level stand-in tokenizer"),
}


def word_tokenizer(max_length: int, eos: bool = True, words=()):
    """An offline stand-in tokenizer (a ``transformers.PreTrainedTokenizerFast``: padding,
    truncation, offsets, ``batch_decode`` and ``return_tensors`` work as with the real ones):
    lowercase words and punctuation marks are tokens; ``words`` get their own ids and every
    other word is ``<unk>``; ``</s>`` is appended when ``eos``; ``<pad>`` pads to ``max_length``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(special + [w.lower() for w in words]))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_length)


#: Words the stand-in tokenizers know (any other word is ``<unk>``): enough for the notebooks' prompts.
WORDS = ("a", "an", "the", "photo", "of", "cat", "dog", "car", "bird", "black", "red", "boots", "bow",
         "tie", "standing", "wearing", "grass", "sun", "and", "in", ",", ".")


# ----------------------------------------------------------------------------- models
def _open_clip_kwargs(arch: str) -> dict:
    import open_clip
    cfg = open_clip.get_model_config(arch)
    vision = dict(cfg["vision_cfg"], width=192, head_width=16)
    text = dict(cfg["text_cfg"], width=128, heads=8, layers=2)
    return {"vision_cfg": vision, "text_cfg": text, "embed_dim": 64}


#: FLUX.1-schnell's transformer and VAE configurations (diffusers), with the reductions of
#: :data:`REDUCED` applied; the scheduler's is the real one.
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64,
                        guidance_embeds=False, axes_dims_rope=(4, 6, 6))
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16, 16, 16),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1, norm_num_groups=4, sample_size=1024, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
#: FLUX.1-schnell's T5 text length (``max_sequence_length``) and CLIP's.
FLUX_T5_LENGTH, CLIP_LENGTH = 256, 77

#: Stable Diffusion 1.5's UNet, VAE and scheduler configurations, reduced as :data:`REDUCED` says.
SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(32, 32, 64, 64), norm_num_groups=16, cross_attention_dim=64,
               attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=1, norm_num_groups=4, sample_size=512, scaling_factor=0.18215)
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    steps_offset=1, clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)


def _clip_text(width: int, vocab: int, length: int = CLIP_LENGTH):
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=1, num_attention_heads=4, projection_dim=width,
                                        max_position_embeddings=length, pad_token_id=0, bos_token_id=2,
                                        eos_token_id=1))


def _flux_pipeline(device):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel
    tok_clip, tok_t5 = word_tokenizer(CLIP_LENGTH, words=WORDS), word_tokenizer(FLUX_T5_LENGTH, words=WORDS)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok_t5), d_model=64, d_kv=16, d_ff=128, num_layers=1,
                                 num_heads=4, pad_token_id=0, eos_token_id=1))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
                        vae=AutoencoderKL(**FLUX_VAE), text_encoder=_clip_text(64, len(tok_clip)),
                        tokenizer=tok_clip, text_encoder_2=t5, tokenizer_2=tok_t5,
                        transformer=FluxTransformer2DModel(**FLUX_TRANSFORMER))
    return pipe.to(device)


def _sd_pipeline(device):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    tok = word_tokenizer(CLIP_LENGTH, words=WORDS)
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**SD_VAE), text_encoder=_clip_text(64, len(tok)),
                                   tokenizer=tok, unet=UNet2DConditionModel(**SD_UNET),
                                   scheduler=PNDMScheduler.from_config(SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe.to(device)


def build(name: str, device):
    """The full model ``name`` of ``zoo.FULL_MODELS`` with random weights (see the module
    docstring): a ``Loaded`` in mode ``"full"``, its pipeline, tokenizer and scheduler attached
    as :func:`chains_lite.zoo.load_full` attaches the real ones."""
    spec = full_spec(name)
    device = torch.device(device)
    torch.manual_seed(0)
    if spec.family == "timm":
        from timm.data import create_transform, resolve_data_config
        model = _timm_model(spec, device)
        out = Loaded(model, name, "full", "", preprocess=create_transform(**resolve_data_config({}, model=model)))
    elif spec.family == "open_clip":
        import open_clip
        arch = spec.hub_id.split("/")[0]
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None,
                                                                     **_open_clip_kwargs(arch))
        out = Loaded(model.to(device).eval(), name, "full", "", preprocess=preprocess,
                     tokenizer=open_clip.get_tokenizer(arch))
    elif spec.family == "flux":
        pipe = _flux_pipeline(device)
        out = Loaded(pipe.transformer.eval(), name, "full", "", pipeline=pipe, tokenizer=pipe.tokenizer_2,
                     text_encoder=pipe.text_encoder_2, scheduler=pipe.scheduler, encoder=inputs.encode)
    else:
        pipe = _sd_pipeline(device)
        out = Loaded(pipe.unet.eval(), name, "full", "", pipeline=pipe, tokenizer=pipe.tokenizer,
                     text_encoder=pipe.text_encoder, scheduler=pipe.scheduler)
    out.extra.update(hub_id=spec.hub_id, note=spec.note, weights="random", reduced=REDUCED[spec.family])
    return out


def inception_stand_in() -> torch.nn.Module:
    """Stands in for the FID Inception network (whose weights download) in a dry run:
    torchvision's Inception v3 with random weights, ``uint8 (B, 3, H, W) -> (pool features
    (B, 2048), logits (B, 1000))`` as ``torchmetrics``' ``NoTrainInceptionV3`` returns them."""
    from torchvision.models import inception_v3

    class Stand(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = inception_v3(weights=None, aux_logits=False, init_weights=False)
            self.fc, self.net.fc = self.net.fc, torch.nn.Identity()    # net(x) -> pool features

        def forward(self, images):
            x = torch.nn.functional.interpolate(images.float() / 127.5 - 1, size=(299, 299), mode="bilinear")
            feats = self.net(x)
            return feats, self.fc(feats)
    return Stand().eval()


def _timm_model(spec, device):
    """The timm model ``spec.hub_id`` (its real patch size, image size, depth, heads and registers)
    with ``embed_dim`` = 16 per head and random weights."""
    import timm
    heads = timm.create_model(spec.hub_id, pretrained=False, depth=1).blocks[0].attn.num_heads
    return timm.create_model(spec.hub_id, pretrained=False, embed_dim=16 * heads).to(device).eval()


# ----------------------------------------------------------------------------- data
def _images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` ShapeWorld scenes as ``uint8 (n, size, size, 3)`` and their object masks ``(n, size, size)``."""
    import torch.nn.functional as F

    from .shapeworld import shapeworld
    batch = shapeworld(n, split="test", seed=seed)
    x = F.interpolate(batch.images, size=(size, size), mode="bilinear", align_corners=False)
    m = F.interpolate(batch.masks[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy(), m.long().numpy()


def _save(array: np.ndarray, path: Path) -> str:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def write_data(root, n: int = 4, size: int = 64, seed: int = 0) -> dict[str, str]:
    """Tiny datasets in the real formats under ``root`` for a dry run; returns the environment
    variables the notebooks and runners read, ``{name: path}``:

    * ``IMAGENET_SEG``: ImageNet-Segmentation's ``gtsegs_ijcv.mat`` layout (MATLAB v7.3 / HDF5),
      ``n`` images with ImageNet class ids in ``/value/id``;
    * ``CHAINS_IMAGENET``: an ImageNet validation folder (1000 class folders named by WordNet id, the
      first ``n`` holding one JPEG); ``CHAINS_IMAGENETTE``: ``train/`` and ``val/`` with 10 classes;
    * ``CHAINS_SAG_PROMPTS`` (``n`` prompts), ``CHAINS_SAG_REFERENCE`` (``n`` PNGs) and
      ``CHAINS_SAG_OUT`` (where the notebook writes its samples);
    * ``COCO_STUFF_ROOT`` with ``val2017/``, ``annotation_val2017/``, ``COCO_STUFF_LIST`` and
      ``COCO_STUFF_FINE_TO_COARSE`` (27 coarse classes).

    The images are ShapeWorld scenes resized to ``size``; files that exist are overwritten.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    images, masks = _images(max(n, 10), size, seed)
    env = {}
    from .datasets import imagenet_wnid, write_imagenet_segmentation
    env["IMAGENET_SEG"] = str(root / "gtsegs_ijcv.mat")
    classes = [281, 207, 817, 10] * n                       # tabby, golden retriever, sports car, brambling
    write_imagenet_segmentation(env["IMAGENET_SEG"], images[:n].transpose(0, 3, 1, 2), masks[:n] > 0,
                                ids=classes[:n])
    wnids = [imagenet_wnid(i) for i in range(1000)]
    for w in wnids:
        (root / "imagenet" / w).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _save(images[i], root / "imagenet" / wnids[i] / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    env["CHAINS_IMAGENET"] = str(root / "imagenet")
    for split, per_class in (("train", 2), ("val", 1)):
        for c in range(10):
            for k in range(per_class):
                _save(images[(c + k) % len(images)], root / "imagenette" / split / f"n{c:08d}" / f"{k}.JPEG")
    env["CHAINS_IMAGENETTE"] = str(root / "imagenette")
    env["CHAINS_SAG_PROMPTS"] = str(root / "sag_prompts.txt")
    Path(env["CHAINS_SAG_PROMPTS"]).write_text("".join(f"a photo of a {w}\n" for w in ("cat", "dog", "car", "bird")
                                                      * n))
    env["CHAINS_SAG_REFERENCE"] = str(root / "sag_reference")
    for i in range(n):
        _save(images[i], root / "sag_reference" / f"{i}.png")
    env["CHAINS_SAG_OUT"] = str(root / "sag_samples")
    coco = root / "coco_stuff"
    for i in range(n):
        _save(images[i], coco / "val2017" / f"{i:012d}.jpg")
        # fine labels: stuff/thing ids as in the stuffthingmaps (0..181, 255 unlabelled)
        _save((masks[i] * 20).astype(np.uint8), coco / "annotation_val2017" / f"{i:012d}.png")
    env["COCO_STUFF_ROOT"] = str(coco)
    env["COCO_STUFF_LIST"] = str(root / "coco_stuff_ids.txt")
    Path(env["COCO_STUFF_LIST"]).write_text("".join(f"{i:012d}\n" for i in range(n)))
    env["COCO_STUFF_FINE_TO_COARSE"] = str(root / "fine_to_coarse.json")
    import json
    Path(env["COCO_STUFF_FINE_TO_COARSE"]).write_text(json.dumps({str(f): f % 27 for f in range(182)}))
    return env


def main(argv=None) -> None:
    """``python -m chains_lite.zoo.dryrun DIR``: write :func:`write_data` under ``DIR`` and print
    ``export`` lines (with ``CHAINS_MODE=full`` and ``CHAINS_FULL_WEIGHTS=random``) for ``eval``."""
    import argparse
    import shlex
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("root", help="folder for the synthetic data")
    ap.add_argument("--n", type=int, default=4, help="images per dataset")
    args = ap.parse_args(argv)
    env = {"CHAINS_MODE": "full", ENV: "random", **write_data(args.root, n=args.n)}
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")


if __name__ == "__main__":
    main()
