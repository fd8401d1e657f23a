"""book/lite_world.py writes the lite-world page from the model cards: their numbers, not typed ones."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("lite_world", ROOT / "book" / "lite_world.py")
lite_world = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lite_world)


@pytest.fixture
def cards(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for f in lite_world.checkpoints().iterdir():
        if f.suffix in (".json", ".png"):
            shutil.copy(f, ckpt / f.name)
    (tmp_path / "book").mkdir()
    return ckpt, tmp_path / "book"


def _edit(path, **validation):
    card = json.loads(path.read_text())
    card["validation"].update(validation)
    path.write_text(json.dumps(card))


def test_page_shows_each_card_and_its_numbers(cards):
    ckpt, book = cards
    _edit(ckpt / "shapes-vit.json", test_accuracy=0.4321)
    _edit(ckpt / "shapes-unet.json", confident_fraction=0.1234, frechet_distance_vit=12.5)
    _edit(ckpt / "shapes-vit-ssl.json", probe_test_accuracy=0.5678)
    page = lite_world.render(ckpt, book).read_text()
    names = sorted(p.stem for p in ckpt.glob("*.json"))
    for name in names:
        assert f"## `{name}`" in page
        assert f"{lite_world.ASSETS}/{name}-samples.png" in page
        assert (book / lite_world.ASSETS / f"{name}-samples.png").exists()
    assert "43.2 % of fresh test images" in page      # the edited cards, as they now read
    assert "12.3 % of 500 samples" in page and "distance of 12.5 from real" in page
    # the self-supervised ViT: its objective from the card, its linear probe's accuracy
    assert "Its objective: Contrastive CLS tokens" in page and "names the largest shape of 56.8 %" in page
    assert "trained without labels (`shapes-vit-ssl`, whose linear probe names the largest shape of 56.8 %" in page
    # the vit stands in for the paper's DINO and CLIP models (from chains_lite.zoo.load)
    assert "`dino-vitb8` (DINOv1 ViT-B/8)" in page
    # the targets: met or missed by how much, with the learning curve, and findings on the limits
    assert "  * `test_accuracy` >= 0.9: 0.4321: missed by 0.468.\n" in page        # no second checkpoint
    assert "  * `frechet_distance_vit` <= 10: 12.5: missed by 2.5. Learning curve: " in page
    unet = json.loads((ckpt / "shapes-unet.json").read_text())
    unet["limits"] = {"confident_fraction": {"text": "the sampler", "source": "b.py", "date": "2026-12-07"}}
    (ckpt / "shapes-unet.json").write_text(json.dumps(unet))
    page = lite_world.render(ckpt, book).read_text()
    assert "What limits it (2026-12-07, `b.py`): the sampler" in page
    # the ViT's chain: 64 patches and the CLS token
    assert "65 tokens (8 x 8 patches" in page


def test_an_unknown_kind_of_card_is_refused(cards):
    ckpt, book = cards
    card = json.loads((ckpt / "shapes-vit.json").read_text())
    card["headline"] = "bleu"
    (ckpt / "shapes-vit.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="bleu"):
        lite_world.render(ckpt, book)
