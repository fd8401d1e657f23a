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


def test_a_run_improves_only_when_no_number_gets_worse():
    from chains_lite.zoo.training.objectives import TRAINING, improves
    rule = TRAINING["shapes-unet"].ship_on
    assert dict(rule) == {"confident_fraction": "higher", "frechet_distance_vit": "lower"}
    old = {"confident_fraction": 0.558, "frechet_distance_vit": 69.4}
    # half the Fréchet distance, same confident fraction: better
    assert improves({"confident_fraction": 0.558, "frechet_distance_vit": 34.7}, old, rule)[0]
    # one number better, the other worse: not better, and the line names the worse one
    ok, why = improves({"confident_fraction": 0.9, "frechet_distance_vit": 70.0}, old, rule)
    assert not ok and "worse: frechet_distance_vit" in why
    assert not improves(dict(old), old, rule)[0]             # equal on both: nothing gained
    assert improves(old, None, rule) == (True, "no shipped card")
    # a number the shipped card lacks is not compared
    assert improves({"confident_fraction": 0.6, "frechet_distance_vit": 99.0}, {"confident_fraction": 0.5}, rule)[0]
    with pytest.raises(KeyError, match="frechet"):
        improves({"confident_fraction": 0.6}, old, rule)


def test_every_ship_rule_names_numbers_of_its_card():
    from chains_lite.zoo.training.objectives import TRAINING, TrainingDefaults, TrainingSpec
    for name, plan in TRAINING.items():
        card = read_card(name)["validation"]
        assert plan.ship_on and all(k in card and d in ("higher", "lower") for k, d in plan.ship_on), name
    with pytest.raises(ValueError, match="lower"):
        TrainingSpec(None, TrainingDefaults(steps=1), "x", None, "classify", ship_on=(("x", "smaller"),))
