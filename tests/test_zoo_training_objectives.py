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


def test_targets_name_numbers_of_the_cards_and_the_shipped_cards_carry_them():
    from chains_lite.zoo.training.objectives import TRAINING, TrainingDefaults, TrainingSpec
    for name, plan in TRAINING.items():
        card = read_card(name)
        assert plan.targets and all(k in card["validation"] for k, _, _ in plan.targets), name
        assert card["targets"] == plan.card_targets(), f"{name}: re-render with --card-only"
    assert TRAINING["shapes-unet"].card_targets() == {"frechet_distance_vit": ["<=", 10.0],
                                                       "confident_fraction": [">=", 0.85]}
    with pytest.raises(ValueError, match=">="):
        TrainingSpec(None, TrainingDefaults(steps=1), "x", None, "classify", targets=(("x", ">", 1.0),))


def test_a_card_shows_each_target_met_or_by_how_much_it_is_missed():
    from chains_lite.zoo.registry import render_card, target_verdict
    assert target_verdict(0.586, ">=", 0.9) == "0.586: missed by 0.314"
    assert target_verdict(11.358, "<=", 10.0) == "11.358: missed by 1.36"
    assert target_verdict(9.5, "<=", 10.0) == "9.5: met" and target_verdict(0.9, ">=", 0.9) == "0.9: met"
    assert target_verdict(None, ">=", 0.9) == "not measured"
    card = {"name": "m", "date": "d", "params": 1, "data": "x", "training": {}, "wall_time_s": 1.0,
            "hardware": "cpu", "torch": "t", "config": {},
            "validation": {"fd": 12.0, "conf": 0.9}, "targets": {"fd": ["<=", 10.0], "conf": [">=", 0.85]}}
    md = render_card(card)
    assert "## Targets" in md and "| fd | <= 10 | 12: missed by 2 |" in md and "| conf | >= 0.85 | 0.9: met |" in md
    assert "## Targets" not in render_card({**card, "targets": {}})


def test_a_card_gives_each_targets_learning_curve_from_its_history():
    from chains_lite.zoo.registry import render_card, target_trend
    row = lambda steps, **v: {"date": "d", "total_steps": steps, "wall_time_s": 1.0, "validation": v}  # noqa: E731
    card = {"name": "m", "date": "d", "params": 1, "data": "x", "wall_time_s": 1.0, "hardware": "cpu",
            "torch": "t", "config": {}, "training": {"total_steps": 30_000},
            "validation": {"fd": 12.0, "conf": 0.7, "acc": 0.95},
            "targets": {"fd": ["<=", 10.0], "conf": [">=", 0.85], "acc": [">=", 0.9]},
            "history": [row(10_000, fd=20.0, conf=0.5), row(20_000, fd=16.0, acc=0.5)]}
    # fd: 16 -> 12 over 10,000 steps, 2 left to go at 4 per 10,000: 5,000 steps
    assert target_trend(card, "fd", "<=", 10.0) == \
        "-4 over the last 10,000 steps (-4 per 10,000); at that rate the target is 5,000 steps away"
    # conf: the 20,000-step row did not measure it, so the curve runs from 10,000 steps:
    # +0.2 over 20,000 steps, +0.1 per 10,000, 0.15 left: 15,000 steps
    assert target_trend(card, "conf", ">=", 0.85) == \
        "+0.2 over the last 20,000 steps (+0.1 per 10,000); at that rate the target is 15,000 steps away"
    assert target_trend(card, "acc", ">=", 0.9) == "+0.45 over the last 10,000 steps (+0.45 per 10,000)"
    worse = {**card, "validation": {**card["validation"], "fd": 17.0}}
    assert target_trend(worse, "fd", "<=", 10.0).endswith("; not moving toward the target")
    assert target_trend({**card, "history": []}, "fd", "<=", 10.0) == "one checkpoint: no learning curve yet"
    md = render_card(card)
    assert "| fd | <= 10 | 12: missed by 2 | -4 over the last 10,000 steps" in md


def test_a_run_not_installed_is_recorded_on_the_card_and_extends_its_learning_curve():
    from chains_lite.zoo.registry import record_run, render_card, target_trend
    card = {"name": "m", "date": "d", "params": 1, "data": "x", "wall_time_s": 100.0, "hardware": "cpu",
            "torch": "t", "config": {}, "training": {"total_steps": 20_000},
            "validation": {"fd": 12.0, "conf": 0.7}, "targets": {"fd": ["<=", 10.0], "conf": [">=", 0.85]},
            "history": [{"date": "d0", "total_steps": 10_000, "wall_time_s": 50.0,
                         "validation": {"fd": 20.0, "conf": 0.5}}]}
    run = {**card, "date": "d2", "wall_time_s": 150.0, "training": {"total_steps": 30_000},
           "validation": {"fd": 9.0, "conf": 0.69, "other": 1.0}}
    out = record_run(card, run, "worse: conf", ["conf", "fd"], source="a note")
    assert "runs_not_installed" not in card                     # the input is not changed
    assert out["runs_not_installed"] == [{"date": "d2", "total_steps": 30_000, "wall_time_s": 150.0,
                                          "validation": {"conf": 0.69, "fd": 9.0}, "why": "worse: conf",
                                          "source": "a note"}]
    # conf: 0.7 at 20,000 steps -> 0.69 at 30,000 in the run not installed
    assert target_trend(out, "conf", ">=", 0.85) == ("-0.01 over the last 10,000 steps (-0.01 per 10,000), "
                                                     "in a run not installed (0.69 at 30,000 steps); "
                                                     "not moving toward the target")
    assert target_trend(out, "fd", "<=", 10.0) == ("-3 over the last 10,000 steps (-3 per 10,000), "
                                                   "in a run not installed (9 at 30,000 steps)")
    md = render_card(out)
    assert "## Runs not installed" in md and "| d2 | 30000 | 150 s | 0.69 | 9.0 | worse: conf (a note) |" in md
    for _ in range(7):
        out = record_run(out, run, "again", ["fd"])
    assert len(out["runs_not_installed"]) == 5


def test_a_finding_on_what_limits_a_target_is_written_on_the_card(tmp_path):
    import json
    from chains_lite.zoo.registry import render_card, with_limit
    from chains_lite.zoo.training import train
    card = {"name": "m", "date": "d", "params": 1, "data": "x", "wall_time_s": 1.0, "hardware": "cpu",
            "torch": "t", "config": {}, "training": {}, "validation": {"fd": 12.0},
            "targets": {"fd": ["<=", 10.0]}}
    out = with_limit(card, "fd", " the sampler: 100 steps give 9 ", "bench.py", "2026-12-07")
    assert "limits" not in card and out["limits"] == {
        "fd": {"text": "the sampler: 100 steps give 9", "source": "bench.py", "date": "2026-12-07"}}
    assert "## What limits the targets\n\n* **fd** (2026-12-07, `bench.py`): the sampler: 100 steps give 9" \
        in render_card(out)
    assert with_limit(out, "fd", "compute", "b2", "e")["limits"]["fd"]["text"] == "compute"  # replaced
    with pytest.raises(ValueError, match="not one of the card's targets"):
        with_limit(card, "conf", "x", "y", "d")
    with pytest.raises(ValueError, match="needs its text and the source"):
        with_limit(card, "fd", "x", " ", "d")
    (tmp_path / "shapes-vit.json").write_text(json.dumps({**card, "name": "shapes-vit"}))
    train.main(["shapes-vit", "--limit", "fd", "compute", "--limit-source", "s.py", "--checkpoint-dir", str(tmp_path)])
    assert json.loads((tmp_path / "shapes-vit.json").read_text())["limits"]["fd"]["source"] == "s.py"
    assert "* **fd** (" in (tmp_path / "shapes-vit.md").read_text()
    with pytest.raises(ValueError, match="needs its text and the source"):
        train.main(["shapes-vit", "--limit", "fd", "compute", "--checkpoint-dir", str(tmp_path)])
