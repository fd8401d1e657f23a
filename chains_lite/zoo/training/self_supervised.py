"""Contrastive views and masked patches: how ``shapes-vit-ssl`` learns without labels.

Each image gives two augmented views (crop, flip, a random hue rotation and saturation, contrast,
brightness, an added grey pattern), and
in each view a random share of the 8 x 8 patches is hidden (set to 0 in pixel space). One ViT
encodes both, and two simple heads read it:

* **CLS token — contrastive** (SimCLR, Chen et al. 2020): a small MLP projects each view's CLS
  token, and each view must pick out the other view of its own image among all views of the
  batch (:func:`nt_xent`). What survives cropping, recolouring and masking (the shapes, their
  sizes and layout) is what tells images apart.
* **Patch tokens — masked-patch prediction** (SimMIM, Xie et al. 2022): a linear layer predicts
  each hidden patch's pixels from its token, which saw only the visible patches: every patch
  token carries the objective.

Only pixels enter the loss: no class, mask or caption. After training, :func:`fit_linear_head`
fits the ViT's classification head on frozen CLS features (a linear probe: labels enter there,
and only there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE = 0.2         # of the contrastive loss's cosine similarities
CROP_SCALE = (0.35, 1.0)  # area share of a view's crop
MASK_RATIO = (0.1, 0.5)   # share of a view's patches that are hidden
OVERLAY = 0.2             # the largest amplitude of the grey pattern added to a view


def augment(images: torch.Tensor, gen: torch.Generator, scale=CROP_SCALE) -> torch.Tensor:
    """One random view of each image: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, H, W)`` in [0, 1].

    A random resized crop (area share uniform in ``scale``, aspect ratio 3/4 to 4/3, resampled
    bilinearly to ``H x W``), a horizontal flip with probability 1/2, a random colour transform
    (:func:`colour_matrices`), contrast (x0.7 to x1.3) and brightness (-0.1 to +0.1) jitter, and
    a grey pattern of its own added (:func:`overlay`). Every draw comes from ``gen``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    b, dev = len(images), images.device
    u = torch.rand(b, 10, generator=gen, device=gen.device).to(dev)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp((2 * u[:, 1] - 1) * math.log(4 / 3))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # shares of the side
    cx, cy = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)              # in [-1, 1] coordinates
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = torch.einsum("bij,bjhw->bihw", colour_matrices(u[:, 7:]), x)
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = (0.7 + 0.6 * u[:, 5])[:, None, None, None]
    brightness = (0.2 * u[:, 6] - 0.1)[:, None, None, None]
    x = (x - mean) * contrast + mean + brightness
    return (x + overlay(b, x.shape[-1], gen).to(dev)).clamp(0, 1)


def colour_matrices(u: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` uniform draws -> ``(B, 3, 3)`` colour transforms that keep each pixel's grey
    level (the mean of its channels) and move its hue and saturation.

    The chroma (a pixel minus its grey level, a vector in the plane orthogonal to (1, 1, 1)) is
    turned by an angle ``2 pi u[:, 0]``, mirrored (two channels swapped) when ``u[:, 2] < 1/2``,
    and scaled by the saturation ``s``: 0 (a grey view) when ``u[:, 1] < 0.2``, else
    ``0.5 + (u[:, 1] - 0.2) / 0.8`` in [0.5, 1.5]. Every channel permutation is among these
    transforms. A view keeps only its image's grey levels: what tells an image from the others
    must survive the transform, and an object's hue does not (a permutation of the channels
    alone would keep the set of channel values, and with it a colour's saturation and
    brightness).
    """
    grey = torch.full((3, 3), 1 / 3, dtype=u.dtype, device=u.device)
    axis = torch.tensor([1.0, 1.0, 1.0], dtype=u.dtype, device=u.device) / math.sqrt(3)
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
                     dtype=u.dtype, device=u.device)                   # cross product with the axis
    angle = 2 * math.pi * u[:, 0, None, None]
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    turn = eye + torch.sin(angle) * k + (1 - torch.cos(angle)) * (k @ k)  # Rodrigues' rotation
    swap = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=u.dtype, device=u.device)
    turn = torch.where(u[:, 2, None, None] < 0.5, turn @ swap, turn)
    sat = torch.where(u[:, 1] < 0.2, 0.0, 0.5 + (u[:, 1] - 0.2) / 0.8)[:, None, None]
    return grey + sat * turn @ (eye - grey)


def overlay(b: int, size: int, gen: torch.Generator, amplitude: float = OVERLAY) -> torch.Tensor:
    """``(b, 1, size, size)`` grey patterns to add to views: per image, stripes of a random
    angle, period and phase times a random amplitude in [0, ``amplitude``], plus pixel noise of
    a random std in [0, ``amplitude`` / 2].

    The images' own backgrounds are such muted patterns; the same in both views of an image, they
    would tell images apart with no regard for their shapes. A pattern of its own on each view,
    as strong as theirs, makes them a poor cue.
    """
    u = torch.rand(b, 5, generator=gen, device=gen.device)
    ys, xs = torch.meshgrid(*(torch.arange(size, device=gen.device) / size,) * 2, indexing="ij")
    angle, period = math.pi * u[:, 0], 0.08 + 0.2 * u[:, 1]
    phase = (torch.cos(angle)[:, None, None] * xs + torch.sin(angle)[:, None, None] * ys) / period[:, None, None]
    stripes = torch.where((phase + u[:, 2, None, None]) % 1.0 < 0.5, 1.0, -1.0)
    noise = torch.randn(b, size, size, generator=gen, device=gen.device)
    return (amplitude * u[:, 3, None, None] * stripes + amplitude / 2 * u[:, 4, None, None] * noise)[:, None]


def random_masks(b: int, n: int, gen: torch.Generator, ratio=MASK_RATIO) -> torch.Tensor:
    """``(b, n)`` bool: for each of ``b`` images a uniformly drawn share in ``ratio`` of its ``n``
    patches (at least one), chosen uniformly at random."""
    share = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(b, 1, generator=gen, device=gen.device)
    rank = torch.rand(b, n, generator=gen, device=gen.device).argsort(1).argsort(1)
    return rank < (share * n).round().clamp(min=1)


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/p)(W/p), C p p)``: the pixels of each ``p x p`` patch, patches in
    row-major order (the ViT's token order)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def mask_pixels(images: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """``images`` ``(B, C, H, W)`` with the ``p x p`` patches where ``mask`` ``(B, N)`` is True set
    to 0 (masked in pixel space, so that no convolution of the stem sees into a hidden patch)."""
    b, c, h, w = images.shape
    keep = (~mask).reshape(b, 1, h // p, 1, w // p, 1).expand(b, c, h // p, p, w // p, p)
    return images * keep.reshape(b, c, h, w)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's contrastive loss (Chen et al. 2020): ``z1``, ``z2`` ``(B, E)`` projections of two
    views of the same B images. Each of the 2B views must pick its partner out of the other 2B - 1
    by cosine similarity / ``temperature`` (cross-entropy); returns the mean."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    b = len(z1)
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, partner)


class ContrastiveMIM(nn.Module):
    """The trained state of the objective: the ViT, the projector of its CLS token and the
    decoder of its patch tokens. Its ``state_dict`` is all a resumed run needs.

    ``vit``: a timm ``VisionTransformer`` with a CLS token."""

    def __init__(self, vit: nn.Module, proj_dim: int = 128):
        super().__init__()
        dim, self.patch = vit.embed_dim, vit.patch_embed.patch_size[0]
        self.vit = vit
        self.projector = nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, proj_dim))
        self.decoder = nn.Linear(dim, 3 * self.patch ** 2)  # a patch token -> its pixels (SimMIM)

    def heads(self) -> nn.ModuleDict:
        """The objective's own modules (projector and decoder): what the shipped ViT does not hold,
        kept beside it so that training further starts from them."""
        return nn.ModuleDict({"projector": self.projector, "decoder": self.decoder})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> the ViT's tokens ``(B, prefix + N, D)`` (what :meth:`loss` reads;
        the module a training loop compiles)."""
        return self.vit.forward_features(images)

    def loss(self, images: torch.Tensor, gen: torch.Generator) -> dict:
        """The objective on ``images`` ``(B, 3, H, W)`` in [0, 1], random draws from ``gen``.

        Returns ``{"loss", "contrast", "mim"}`` (scalars; ``loss = contrast + mim``): the
        contrastive loss of the two views' CLS tokens, and the squared error of the masked
        patches' predicted pixels in units of their variance (1: predicting their mean).
        """
        views = [augment(images, gen) for _ in range(2)]
        n, p = self.vit.patch_embed.num_patches, self.vit.num_prefix_tokens
        masks = [random_masks(len(images), n, gen).to(images.device) for _ in views]
        z, mim = [], 0.0
        for v, m in zip(views, masks):
            tokens = self(mask_pixels(v, m, self.patch))                       # (B, p + N, D)
            z.append(self.projector(tokens[:, 0]))
            target = patchify(v, self.patch)[m]                                # (masked, 3 p p)
            err = (self.decoder(tokens[:, p:][m]) - target).pow(2).mean()
            mim = mim + err / target.var().clamp_min(1e-6) / len(views)
        contrast = nt_xent(*z)
        return {"loss": contrast + mim, "contrast": contrast.detach(), "mim": mim.detach()}


@torch.no_grad()
def cls_features(vit: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, D)`` float32 pre-logit features (the normalised CLS token)."""
    device = next(vit.parameters()).device
    return torch.cat([vit.forward_head(vit.forward_features(x.to(device)), pre_logits=True).float().cpu()
                      for x in images.split(batch)])


READOUTS = ("cls", "avg", "cls+avg", "cls_last4+avg")


@torch.no_grad()
def readout_features(vit: nn.Module, images: torch.Tensor, readout: str = "cls", batch: int = 256) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, k D)`` float32 frozen features of a timm ViT with a CLS token, read
    out as a linear probe sees them:

    * ``"cls"``: the final normed CLS token (``D``; what :func:`cls_features` returns);
    * ``"avg"``: the mean of the final normed patch tokens (``D``);
    * ``"cls+avg"``: both (``2 D``);
    * ``"cls_last4+avg"``: the normed CLS tokens of the last four blocks and the mean patch token
      (``5 D``; DINO's linear evaluation reads the last four CLS tokens, Caron et al. 2021).
    """
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    device, p = next(vit.parameters()).device, vit.num_prefix_tokens
    out = []
    for x in images.split(batch):
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x.to(device))))
        blocks = []
        for blk in vit.blocks:
            h = blk(h)
            blocks.append(h)
        last = vit.norm(h)
        cls, avg = last[:, 0], last[:, p:].mean(1)
        parts = {"cls": [cls], "avg": [avg], "cls+avg": [cls, avg],
                 "cls_last4+avg": [*(vit.norm(b)[:, 0] for b in blocks[-4:]), avg]}[readout]
        out.append(torch.cat(parts, 1).float().cpu())
    return torch.cat(out)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, weight_decay: float = 1e-3):
    """Multinomial logistic regression on ``features`` ``(N, D)`` for ``labels`` ``(N,)`` in
    ``[0, classes)``: standardised features, an L2 penalty ``weight_decay * |W|^2``, full batch,
    L-BFGS (deterministic). Returns ``(weight (classes, D), bias (classes,), train accuracy)`` in
    float64, with the standardisation folded in: ``features @ weight.T + bias`` are the logits."""
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got [{int(labels.min())}, {int(labels.max())}]")
    x, y = features.double(), labels.cpu()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / sd                       # logits = ((x - mu) / sd) w^T + b = x (w / sd)^T + b'
        bias = b - weight @ mu
        acc = ((z @ w.T + b).argmax(-1) == y).double().mean().item()
    return weight.detach(), bias.detach(), acc


def fit_linear_head(vit: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    weight_decay: float = 1e-3) -> dict:
    """Fit ``vit.head`` (``nn.Linear(D, C)``) as a linear probe on frozen CLS features
    (:func:`fit_probe`), so that ``vit(images)`` gives the probe's logits.

    ``images`` ``(N, 3, H, W)``, ``labels`` ``(N,)`` in ``[0, C)``. Returns ``{"train_accuracy",
    "n_train", "weight_decay"}``.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    weight, bias, acc = fit_probe(cls_features(vit, images), labels, vit.head.out_features, weight_decay)
    with torch.no_grad():
        vit.head.weight.copy_(weight.to(vit.head.weight))
        vit.head.bias.copy_(bias.to(vit.head.bias))
    return {"train_accuracy": round(acc, 4), "n_train": len(labels), "weight_decay": weight_decay}
