"""The paper's Table 2 experiment: no guidance vs SAG with column-sum and TokenRank masks, each
with and without the 40 % cap, on the same seeds.

A run is ``work(indices) -> records`` (one JSON-able record per sample index, every method's
sample of that index in it) and ``summarize(records) -> table``; sample ``i`` starts from noise
seeded by ``(seed, i)`` (:func:`chains_lite.core.seeding.item_noise`), so records do not depend on how
the indices are chunked. Bind the settings with ``functools.partial``.

* lite (:func:`lite_work`, :func:`summarize_lite`): ``shapes-unet`` samples scored in
  ``shapes-vit`` feature space (Fréchet distance, KID, an IS analogue, confident share) against
  fresh ShapeWorld val images; a second set of real images gives the floor at the same size.
* full (:func:`full_work`, :func:`summarize_full`): SD1.5 samples of user prompts written as PNG
  files; FID / KID / IS from Inception features (torchmetrics' FID Inception, full mode only).

Methods: ``none`` (scale 0); ``sag_column_sum`` (column sum > 1) and ``sag_tokenrank``
(``N * pi > 1``), both without a cap; ``sag_column_sum_capped`` and ``sag_tokenrank_capped``, the
same masks cut to at most ``cap`` (40 %: the paper's App. A.2 masks "up to 40 %" in its SAG setup)
of the tokens. TokenRank against column sum is read at equal cap (:data:`CONTRASTS`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ..core.progress import progress_bar

from ..eval import quality
from ..core.seeding import item_noise
from ..methods.sag import SAG, sample

#: Each SAG method: its mask source and whether the cap applies.
ARMS = {"sag_column_sum": ("column_sum", False), "sag_tokenrank": ("tokenrank", False),
        "sag_column_sum_capped": ("column_sum", True), "sag_tokenrank_capped": ("tokenrank", True)}
METHODS = ("none",) + tuple(ARMS)
#: Paired differences ``(a, b)`` read at every scale: TokenRank - column sum at equal cap (the
#: comparison), the cap's own effect per source, and every SAG arm against no guidance.
CONTRASTS = (("sag_tokenrank", "sag_column_sum"), ("sag_tokenrank_capped", "sag_column_sum_capped"),
             ("sag_column_sum_capped", "sag_column_sum"), ("sag_tokenrank_capped", "sag_tokenrank")) + tuple(
                 (m, "none") for m in ARMS)
#: Paper Table 2 (SD1.5, 50K samples vs LAION-Aesthetics V2 > 6.65): IS, FID, KID. Its SAG setup
#: masks up to 40 % (App. A.2), so its rows stand beside the capped arms.
PAPER_TABLE2 = {"none": {"is": 16.32, "fid": 45.77, "kid": 0.018},
                "sag_column_sum_capped": {"is": 17.69, "fid": 52.48, "kid": 0.023},
                "sag_tokenrank_capped": {"is": 18.37, "fid": 50.14, "kid": 0.021}}
CAP = 0.4


def method_sag(method: str, scale: float, layer: str = "decoder", cap: float = CAP) -> SAG:
    """The :class:`~chains_lite.methods.sag.SAG` settings of a method of :data:`METHODS` at guidance
    ``scale``; ``cap`` is the masked share's ceiling of the ``*_capped`` arms."""
    if method == "none":
        return SAG(0.0, layer=layer)
    if method not in ARMS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    source, capped = ARMS[method]
    return SAG(scale, source, cap if capped else None, layer)


def runs(scales) -> list[tuple[str, float]]:
    """``(method, scale)`` of every run: ``none`` once, each SAG method at every scale."""
    scales = [float(s) for s in scales]
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"guidance scales must be finite and > 0, got {scales}")
    return [("none", 0.0)] + [(m, s) for s in scales for m in METHODS[1:]]


def _key(method: str, scale: float) -> str:
    return f"{method}@{scale:g}"


# ----------------------------------------------------------------------------- lite
def lite_images(indices, *, unet, scheduler, scales=(1.0,), steps: int = 20, seed: int = 0,
                layer: str = "decoder", cap: float = CAP) -> dict:
    """Every run's samples of ``indices`` from the unconditional ``unet``:
    ``{(method, scale): (images (B, 3, H, W) in [0, 1], masked_fraction (B,))}``."""
    indices = list(indices)
    size = unet.config.sample_size
    noise = item_noise((unet.config.in_channels, size, size), indices, seed)
    noise = noise.to(next(unet.parameters()).device)
    out = {}
    for method, scale in runs(scales):
        s = sample(unet, scheduler, noise, method_sag(method, scale, layer, cap), steps=steps)
        out[(method, scale)] = (((s.x.float() + 1) / 2).clamp(0, 1).cpu(), s.masked_fraction)
    return out


def sample_change(images: dict, reference=("none", 0.0)) -> dict:
    """How far each method moves a sample from ``reference``'s sample of the same seed.

    ``images``: ``{(method, scale): (B, C, H, W)}`` pixel values, the same B seeds in the same order
    under every key (B >= 2). Returns ``{key: mean |x - x_ref|}`` over seeds and pixels for every
    key other than ``reference``, and ``"seeds"``: the same mean between ``reference``'s samples of
    consecutive seeds ``(i, i + 1)``, the difference of two samples that start from other noise.
    """
    if reference not in images:
        raise ValueError(f"no samples of the reference {reference!r}; keys: {list(images)}")
    ref = images[reference].double()
    if ref.ndim != 4 or len(ref) < 2:
        raise ValueError(f"samples must be (B, C, H, W) with B >= 2, got {tuple(ref.shape)}")
    out = {"seeds": (ref[1:] - ref[:-1]).abs().mean().item()}
    for key, x in images.items():
        if key == reference:
            continue
        if x.shape != ref.shape:
            raise ValueError(f"{key!r}: samples of shape {tuple(x.shape)}, the reference's {tuple(ref.shape)}")
        out[key] = (x.double() - ref).abs().mean().item()
    return out


def lite_records(indices, images: dict, judge) -> list[dict]:
    """:func:`lite_images`' samples scored by the classifier ``judge`` (``shapes-vit``): one record
    per index, ``{"index", "runs": [{"method", "scale", "features" (D,), "probs" (C,),
    "masked_fraction"}]}``."""
    from ..zoo.judge import classify, features
    records = [{"index": int(i), "runs": []} for i in indices]
    for (method, scale), (imgs, masked) in images.items():
        f, p = features(judge, imgs), classify(judge, imgs)
        for r, fi, pi, mf in zip(records, f, p, masked):
            r["runs"].append({"method": method, "scale": scale, "features": fi.tolist(),
                              "probs": pi.tolist(), "masked_fraction": float(mf)})
    return records


def lite_work(indices, *, judge, **settings) -> list[dict]:
    """:func:`lite_records` of :func:`lite_images` (``settings``: its keyword arguments)."""
    indices = list(indices)
    return lite_records(indices, lite_images(indices, **settings), judge)


def lite_reference(judge, n_reference: int, n_real: int, seed: int = 0, size: int = 32) -> dict:
    """Real ShapeWorld val images in ``judge``'s space: ``reference`` features ``(M, D)`` that every
    run is compared with, and an independent ``real`` set ``(features, probs)`` of ``n_real``."""
    from ..zoo.judge import classify, features
    from ..zoo.shapeworld import shapeworld
    ref = shapeworld(n_reference, seed=seed + 1000, split="val", size=size).images
    real = shapeworld(n_real, seed=seed + 2000, split="val", size=size).images
    return {"reference": features(judge, ref), "real": (features(judge, real), classify(judge, real))}


def _collect(records: list[dict]) -> dict:
    """``{(method, scale): (features (N, D), probs (N, C), masked_fraction (N,))}`` in index order."""
    records = sorted(records, key=lambda r: r["index"])
    out = {}
    for r in records:
        for run in r["runs"]:
            out.setdefault((run["method"], run["scale"]), []).append(run)
    return {k: (torch.tensor([x["features"] for x in v], dtype=torch.float64),
                torch.tensor([x["probs"] for x in v], dtype=torch.float64),
                torch.tensor([x["masked_fraction"] for x in v])) for k, v in out.items()}


def summarize(records: list[dict], reference: torch.Tensor, real=None, headline: float | None = None,
              n_boot: int = 200, seed: int = 0) -> dict:
    """The table of a run: per method at the ``headline`` scale (default 1 if run, else the smallest) and
    per scale (``sweep``), each metric with its bootstrap interval; paired differences of
    :data:`CONTRASTS` at every scale; ``real`` (features, probs) adds the real-image row."""
    got = _collect(records)
    data = {_key(*k): (f, p) for k, (f, p, _) in got.items()}
    if real is not None:
        n = len(next(iter(data.values()))[0])
        data["real"] = (real[0][:n].double(), real[1][:n].double())
    scales = sorted({s for m, s in got if m != "none"})
    pairs = [(_key(a, s), _key(b, s if b != "none" else 0.0)) for s in scales for a, b in CONTRASTS]
    table = quality.bootstrap_table(data, reference, pairs, n_boot=n_boot, seed=seed)
    if headline is None:
        headline = 1.0 if 1.0 in scales else scales[0]
    headline = float(headline)
    if headline not in scales:
        raise ValueError(f"headline scale {headline} was not run; scales: {scales}")
    row = lambda m, s: {**table["runs"][_key(m, s)], "masked_fraction": float(got[(m, s)][2].mean())}  # noqa: E731
    return {"headline_scale": headline, "n_samples": len(records),
            "methods": {m: row(m, 0.0 if m == "none" else headline) for m in METHODS},
            "real": table["runs"].get("real"),
            "sweep": {m: {f"{s:g}": row(m, s) for s in scales} for m in METHODS[1:]},
            "pairs": table["pairs"]}


# ----------------------------------------------------------------------------- full
def read_prompts(path) -> list[str]:
    """One prompt per line of a text file (blank lines skipped)."""
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} has no prompts (one per line)")
    return prompts


def full_work(indices, *, unet, scheduler, encode, decode, prompts: list[str], out_dir, scales=(1.0,),
              steps: int = 50, seed: int = 0, cfg: float = 7.5, layer: str = "decoder",
              cap: float = CAP) -> list[dict]:
    """Sample every run for ``indices`` with a text-conditioned ``unet`` and write PNGs to
    ``out_dir/<method>@<scale>/<index>.png``. ``encode``: prompts -> text states ``(B, L, D)``;
    ``decode``: latents -> images ``(B, 3, H, W)`` in [0, 1]. Index ``i`` takes ``prompts[i]``.
    One record per index: ``{"index", "prompt", "runs": [{"method", "scale", "path", "masked_fraction"}]}``."""
    from PIL import Image
    indices = list(indices)
    if indices and max(indices) >= len(prompts):
        raise ValueError(f"index {max(indices)} needs more than the {len(prompts)} prompts given")
    p0 = next(unet.parameters())
    size, ch = unet.config.sample_size, unet.config.in_channels
    noise = item_noise((ch, size, size), indices, seed).to(p0.device, p0.dtype)
    texts = [prompts[i] for i in indices]
    cond, uncond = encode(texts), encode([""] * len(texts))
    records = [{"index": int(i), "prompt": t, "runs": []} for i, t in zip(indices, texts)]
    for method, scale in runs(scales):
        out = sample(unet, scheduler, noise, method_sag(method, scale, layer, cap), steps=steps,
                     context=cond, uncond_context=uncond, cfg=cfg)
        imgs = (decode(out.x).float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        folder = Path(out_dir) / _key(method, scale)
        folder.mkdir(parents=True, exist_ok=True)
        for r, img, mf in zip(records, imgs, out.masked_fraction):
            path = folder / f"{r['index']:06d}.png"
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
            r["runs"].append({"method": method, "scale": scale, "path": str(path), "masked_fraction": float(mf)})
    return records


def sd_codec(loaded):
    """``(encode, decode)`` of a loaded SD pipeline (``zoo.load("sd15", mode="full")``): prompts ->
    text states ``(B, 77, 768)``, latents -> images ``(B, 3, H, W)`` in [0, 1]."""
    pipe = loaded.pipeline

    @torch.no_grad()
    def encode(prompts):
        return pipe.encode_prompt(list(prompts), pipe._execution_device, 1, False)[0]

    @torch.no_grad()
    def decode(z):
        return pipe.vae.decode(z.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample / 2 + 0.5
    return encode, decode


def inception_extractor(device=None):
    """``uint8 (B, 3, H, W)`` -> ``(2048-d pool features, class probabilities)`` of the FID
    Inception network (torchmetrics / torch-fidelity weights, downloaded at first use; in a dry
    run, ``CHAINS_FULL_WEIGHTS=random``, a random-weight stand-in: :func:`zoo.dryrun.inception_stand_in`)."""
    from ..zoo import dryrun
    from ..zoo.catalog import random_weights
    if random_weights():
        net = dryrun.inception_stand_in()
    else:
        from torchmetrics.image.fid import NoTrainInceptionV3
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048", "logits_unbiased"])
    net = net.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()

    @torch.no_grad()
    def extract(images: torch.Tensor):
        feats, logits = net(images.to(next(net.parameters()).device))
        return feats.double().cpu(), logits.double().softmax(-1).cpu()
    return extract


def load_images(paths) -> torch.Tensor:
    """``uint8 (N, 3, 299, 299)``: image files as RGB, resized (bicubic) to Inception's input."""
    from PIL import Image
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((299, 299), Image.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def image_features(paths, extract, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D), probs (N, C))`` of the image files ``paths`` through ``extract``."""
    f, p = [], []
    for i in progress_bar(range(0, len(paths), batch), desc="features"):
        fi, pi = extract(load_images(paths[i:i + batch]))
        f.append(fi)
        p.append(pi)
    return torch.cat(f), torch.cat(p)


def summarize_full(records: list[dict], reference_paths, extract=None, headline: float | None = None,
                   n_boot: int = 200, seed: int = 0) -> dict:
    """:func:`summarize` of :func:`full_work`'s records: features of every PNG and of the
    reference images through ``extract`` (default :func:`inception_extractor`: FID, KID, IS)."""
    extract = extract or inception_extractor()
    reference = image_features(list(reference_paths), extract)[0]
    scored = []
    by_run = {}
    for r in records:
        for run in r["runs"]:
            by_run.setdefault((run["method"], run["scale"]), []).append((r["index"], run))
    feats = {k: image_features([run["path"] for _, run in sorted(v, key=lambda x: x[0])], extract)
             for k, v in by_run.items()}
    order = sorted(r["index"] for r in records)
    for j, i in enumerate(order):
        runs_i = [{"method": m, "scale": s, "features": feats[(m, s)][0][j].tolist(),
                   "probs": feats[(m, s)][1][j].tolist(),
                   "masked_fraction": next(run["masked_fraction"] for k, run in by_run[(m, s)] if k == i)}
                  for m, s in by_run]
        scored.append({"index": i, "runs": runs_i})
    return summarize(scored, reference, headline=headline, n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------- the table
METRIC_NAMES = {"lite": {"frechet": "Fréchet (vit)", "kid": "KID (vit)", "is": "IS analogue",
                         "confident": "p>=0.9 share"},
                "full": {"frechet": "FID", "kid": "KID", "is": "IS", "confident": "p>=0.9 share"}}
#: How the tables name the methods.
LABELS = {"none": "no guidance", "sag_column_sum": "column sum", "sag_tokenrank": "TokenRank",
          "sag_column_sum_capped": "column sum, capped", "sag_tokenrank_capped": "TokenRank, capped",
          "real": "real images (floor)"}


def method_rows(table: dict, mode: str, cap: float = CAP) -> tuple[list[str], list[list]]:
    """:func:`summarize`'s methods at the headline scale as ``(columns, rows)`` for
    :func:`chains_lite.viz.tables.markdown_table`: per method its cap, masked share, each metric
    ``{"value", "low", "high"}`` and the paper's Table 2 row (IS / FID / KID) where it has one."""
    names = METRIC_NAMES[mode]
    columns = ["method", "cap", "masked share"] + [names[m] for m in names] + ["paper IS / FID / KID"]
    rows = dict(table["methods"], **({"real": table["real"]} if table.get("real") else {}))
    out = []
    for meth, row in rows.items():
        paper = PAPER_TABLE2.get(meth)
        capped = ARMS.get(meth, (None, False))[1]
        out.append([LABELS.get(meth, meth), f"{cap:.0%}" if capped else "–",
                    row["masked_fraction"] if "masked_fraction" in row else "–"]
                   + [row[m] for m in names]
                   + [f"{paper['is']} / {paper['fid']} / {paper['kid']}" if paper else "–"])
    return columns, out


def contrast_rows(table: dict, mode: str, contrasts=CONTRASTS[:2], scale: float | None = None
                  ) -> tuple[list[str], list[list]]:
    """Paired differences ``a - b`` of :func:`summarize` at ``scale`` (default: the headline) as
    ``(columns, rows)``: per contrast and metric the difference with its interval (signed), and
    the share of resamples where ``a`` is better."""
    names = METRIC_NAMES[mode]
    scale = table["headline_scale"] if scale is None else float(scale)
    columns = ["a - b"] + [f"Δ {names[m]}" for m in names] + [f"a better ({names['frechet']} / {names['is']})"]
    out = []
    for a, b in contrasts:
        key = f"{_key(a, scale)} - {_key(b, 0.0 if b == 'none' else scale)}"
        if key not in table["pairs"]:
            raise ValueError(f"the table has no pair {key!r}; pairs: {sorted(table['pairs'])}")
        row = table["pairs"][key]
        out.append([f"{LABELS.get(a, a)} - {LABELS.get(b, b)}"] + [dict(row[m], signed=True) for m in names]
                   + [f"{row['frechet']['better_share']:.0%} / {row['is']['better_share']:.0%}"])
    return columns, out
