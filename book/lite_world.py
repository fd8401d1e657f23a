"""The book's "lite world" page, written from the model cards when the book is built.

Each lite model ships a card in chains_lite/zoo/checkpoints/: NAME.json (config, data, training,
wall time, hardware, validation numbers), NAME.md and NAME-samples.png (a sample grid). This
script renders book/lite_world.md from them, and copies the sample grids to book/_generated/, so
every number on the page is the card's (none is typed here). Both outputs are build products
(git-ignored).

As a Sphinx extension (book/_config.yml: sphinx.local_extensions) it writes the page before the
table of contents is read. By hand, from the repository root:
    python book/lite_world.py          # writes book/lite_world.md and book/_generated/*.png
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BOOK = Path(__file__).resolve().parent
PAGE = "lite_world"  # the _toc.yml entry this script writes
ASSETS = "_generated"


def checkpoints() -> Path:
    import chains_lite.zoo
    return Path(chains_lite.zoo.__file__).parent / "checkpoints"


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def stands_in_for(name: str) -> list[str]:
    """The paper models that lite model `name` replaces in lite mode (from chains_lite.zoo.load)."""
    from chains_lite.zoo.catalog import FULL_MODELS
    return [f"`{full}` ({spec.note.split(' (')[0]})" if spec.note else f"`{full}`"
            for full, spec in FULL_MODELS.items() if spec.lite == name]


def order(names) -> list[str]:
    """Lite models in the order the paper models they stand in for are listed, then the rest."""
    from chains_lite.zoo.catalog import FULL_MODELS
    first = list(dict.fromkeys(spec.lite for spec in FULL_MODELS.values()))
    return sorted(names, key=lambda n: (first.index(n) if n in first else len(first), n))


def learned(card: dict) -> str:
    """What the card's validation numbers say the model learned, one paragraph."""
    v, c = card["validation"], card["config"]
    if card["headline"] == "accuracy":
        return (f"It names the largest shape of {pct(v['test_accuracy'])} of fresh test images "
                f"({pct(v['accuracy'])} of {v['n_images']} validation images; chance "
                f"{pct(1 / c['num_classes'])} with {c['num_classes']} classes).")
    if card["headline"] == "probe_accuracy":
        return (f"Its objective: {card['training']['objective']} A linear classification head fitted "
                f"afterwards on its frozen CLS features names the largest shape of "
                f"{pct(v['probe_test_accuracy'])} of fresh test images ({pct(v['probe_accuracy'])} of "
                f"{v['n_images']} validation images; chance {pct(1 / c['num_classes'])}).")
    if card["headline"] == "caption_match":
        return (f"Sampled with guidance {v['guidance_scale']:g} from {v['n_samples']} validation captions, "
                f"{pct(v['caption_match'])} of its images show the captioned (largest) shape to "
                f"`shapes-vit` (real images of the same captions: {pct(v['caption_match_real'])}; chance "
                f"{pct(v['chance'])}), and {pct(v['color_match'])} have the captioned colour as their "
                f"dominant colour (real: {pct(v['color_match_real'])}; chance {pct(v['color_chance'])}). "
                f"Without guidance: {pct(v['caption_match_unguided'])} and "
                f"{pct(v['color_match_unguided'])}. Fréchet distance to real images in `shapes-vit`'s "
                f"feature space: {v['frechet_distance_vit']:g} (real against real: "
                f"{v['frechet_distance_real_vs_real']:g}).")
    if card["headline"] == "confident_fraction":
        return (f"`shapes-vit` classifies {pct(v['confident_fraction'])} of {v['n_samples']} samples "
                f"with confidence 0.9 or more (real images: {pct(v['confident_fraction_real'])}). "
                f"Fréchet distance to real images in `shapes-vit`'s feature space: "
                f"{v['frechet_distance_vit']:g} (real against real: {v['frechet_distance_real_vs_real']:g}).")
    raise ValueError(f"{card['name']}: no description for headline {card['headline']!r}")


def tokens(card: dict) -> str:
    """How long the model's attention chains are."""
    c = card["config"]
    if "img_size" in c:
        side = c["img_size"] // c["patch_size"]
        extra = int(c.get("class_token", False)) + c.get("reg_tokens", 0)
        return (f"{side * side + extra} tokens ({side} x {side} patches of {c['patch_size']} x "
                f"{c['patch_size']} pixels, {extra} CLS/register token(s)), {c['depth']} layers x "
                f"{c['num_heads']} heads")
    if "num_single_layers" in c:
        return (f"joint attention over caption tokens and image tokens, {c['num_layers']} double-stream + "
                f"{c['num_single_layers']} single-stream blocks x {c['num_attention_heads']} heads")
    sides = [c["sample_size"] // 2 ** i for i, b in enumerate(c["down_block_types"]) if "Attn" in b]
    return "self-attention over " + " and ".join(f"{s} x {s} = {s * s}" for s in sides) + " tokens"


def targets(card: dict) -> list[str]:
    """The card's targets, one sub-item each: met or missed by how much, its learning curve where
    the card has two checkpoints that measured it, and the card's finding on what limits it
    (``chains_lite.zoo.registry``)."""
    from chains_lite.zoo.registry import target_trend, target_verdict
    if not card.get("targets"):
        return []
    out = ["* **Targets:**"]
    for key, (op, bound) in card["targets"].items():
        line = f"  * `{key}` {op} {bound:g}: {target_verdict(card['validation'].get(key), op, bound)}."
        trend = target_trend(card, key, op, bound)
        if not trend.startswith("one checkpoint"):
            line += f" Learning curve: {trend}."
        finding = card.get("limits", {}).get(key)
        if finding:
            line += f" What limits it ({finding['date']}, `{finding['source']}`): {finding['text']}"
        out.append(line)
    return out


def section(card: dict, image: str | None) -> str:
    t = card["training"]
    config = ", ".join(f"{k} = {v}" for k, v in card["config"].items() if k != "class")
    lines = [f"## `{card['name']}`", "",
             f"* **What it is:** `{card['config']['class']}`, {card['params']:,} parameters; {config}.",
             f"* **Attention chains:** {tokens(card)}."]
    replaced = stands_in_for(card["name"])
    if replaced:
        lines.append(f"* **Stands in for:** {', '.join(replaced)}.")
    lines += [f"* **Data:** {card['data']}.",
              f"* **Training:** {t['steps']} steps of batch {t['batch']}"
              + (f" ({t['total_steps']} in all, from {t['init']})" if "total_steps" in t else "")
              + f", {t['optimizer']}, final loss "
              f"{t['final_loss']:g}; {card['wall_time_s'] / 60:.0f} min on {card['hardware']} "
              f"(torch {card['torch']}, {card['date']}).",
              f"* **What it learned:** {learned(card)}"]
    lines += targets(card) + [""]
    if image:
        lines += [f"```{{figure}} {image}", f":alt: sample grid of {card['name']}", "",
                  f"Samples from the card of `{card['name']}`.", "```", ""]
    return "\n".join(lines)


def reading(cards: dict) -> str:
    """How to read lite numbers beside the paper's, with the cards' numbers."""
    out = ["## Reading lite results beside the paper's", "",
           "* **The same code, another world.** Every chapter computes its chains, bounces, TokenRank and "
           "λ2 weights with the same functions in both modes; lite mode changes the models and the data. "
           "A lite number says whether the paper's *ordering* (TokenRank above the column sum, the "
           "paper's method above its ablations) holds for a small model on images with exact ground "
           "truth. It is not an estimate of the paper's number, and the chapters never print them as one."]
    vit, ssl = cards.get("shapes-vit"), cards.get("shapes-vit-ssl")
    if vit:
        trained = ("a model trained to find the largest shape" if ssl is None else
                   "a model trained to find the largest shape and of the same architecture trained "
                   "without labels (`shapes-vit-ssl`, whose linear probe names the largest shape of "
                   f"{pct(ssl['validation']['probe_test_accuracy'])} of test images)")
        out.append(f"* **Small chains.** `shapes-vit` attends over {tokens(vit)}, so its maps are "
                   f"coarse grids; it names the largest shape of "
                   f"{pct(vit['validation']['test_accuracy'])} of test images. Chapters 2 and 6 measure "
                   f"the attention of {trained}, not of DINO or CLIP.")
    flux = cards.get("shapes-flux")
    if flux:
        v = flux["validation"]
        better, worse = (("colour", "shape") if v["color_match"] > v["caption_match"]
                         else ("shape", "colour"))
        out.append(f"* **Words the model knows.** `shapes-flux` gets the captioned colour right "
                   f"{pct(v['color_match'])} of the time and the captioned shape "
                   f"{pct(v['caption_match'])} (chance {pct(v['chance'])}): in chapter 3, maps of "
                   f"{better} words come from a model that draws what those words say more often "
                   f"than it draws what its {worse} words say.")
    unet = cards.get("shapes-unet")
    if unet:
        v = unet["validation"]
        out.append(f"* **The diffusion model behind chapters 4 and 5.** `shapes-unet`'s samples are "
                   f"judged confidently {pct(v['confident_fraction'])} of the time (real images: "
                   f"{pct(v['confident_fraction_real'])}), at a Fréchet distance of "
                   f"{v['frechet_distance_vit']:g} from real images (real against real: "
                   f"{v['frechet_distance_real_vs_real']:g}). Chapter 4's guidance results are "
                   "measured on its samples and chapter 5's segments on its attention over real "
                   "images, not on Stable Diffusion.")
    return "\n".join(out) + "\n"


def render(ckpt: Path, book: Path = BOOK) -> Path:
    """Write book/lite_world.md (and copy the sample grids) from the cards in `ckpt`."""
    found = {p.stem: json.loads(p.read_text()) for p in ckpt.glob("*.json")}
    cards = {name: found[name] for name in order(found)}
    if not cards:
        raise FileNotFoundError(f"no model cards (*.json) in {ckpt}")
    assets = book / ASSETS
    assets.mkdir(exist_ok=True)
    parts = ["# The lite world", "",
             "Lite mode runs every chapter offline on a CPU, on small models this project trains on "
             "ShapeWorld, a synthetic world of coloured shapes with exact masks and captions "
             "(`chains_lite.zoo.shapeworld`). This page is written from the model cards in "
             "`chains_lite/zoo/checkpoints/` each time the book is built: what each lite model is, "
             "what it learned, and what that means for reading lite results beside the paper's.", "",
             "| model | parameters | headline number of its card |", "| --- | --- | --- |"]
    sections = []
    for name, card in cards.items():
        grid = ckpt / f"{name}-samples.png"
        image = None
        if grid.exists():
            shutil.copyfile(grid, assets / grid.name)
            image = f"{ASSETS}/{grid.name}"
        sections.append(section(card, image))  # refuses a card it cannot describe
    for name, card in cards.items():
        head = card["headline"]
        parts.append(f"| `{name}` | {card['params']:,} | {head} = {card['validation'][head]:g} |")
    parts += [""] + sections + [reading(cards)]
    page = book / f"{PAGE}.md"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _on_config_inited(app, config):
    render(checkpoints(), Path(app.srcdir))


def setup(app):
    # before the table of contents (sphinx-external-toc, priority 900) looks for the page
    app.connect("config-inited", _on_config_inited, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(render(checkpoints()))
