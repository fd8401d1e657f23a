"""Each lite model's training plan (chains_lite.zoo.training.objectives) agrees with its shipped card."""

import pytest

pytest.importorskip("timm")
pytest.importorskip("safetensors")

from chains_lite.zoo.training import train  # noqa: E402
from chains_lite.zoo.registry import read_card  # noqa: E402

TINY = ["--steps", "2", "--batch", "4", "--pool", "8", "--eval-n", "8"]


def test_specs_agree_with_the_shipped_cards_and_their_configs():
    """One LiteSpec per lite model: its headline and optimizer text are what the shipped card says,
    its image size is the model's, and the loader attaches what its samples need."""
    from chains_lite.zoo.models import GEN_SIZE, LITE_SPECS
    from chains_lite.zoo.training.objectives import HEADLINE, TRAINING
    assert set(TRAINING) == set(LITE_SPECS)
    for name, s in LITE_SPECS.items():
        card, plan = read_card(name), TRAINING[name]
        assert HEADLINE[name] == plan.headline == card["headline"] and plan.headline in card["validation"], name
        assert card["training"]["optimizer"] == train.optimizer_description(), name
        assert plan.training.size == s.config.get("img_size", s.config.get("sample_size", GEN_SIZE)), name
        assert plan.samples in ("classify", "captions", "unconditional"), name
        assert s.text_encoder == (plan.samples == "captions") and s.class_names == (plan.samples == "classify"), name
