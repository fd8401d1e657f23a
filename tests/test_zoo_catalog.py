"""Modes, names and the full-model lookup (chains_lite.zoo.catalog)."""
import pytest

pytest.importorskip("timm")
pytest.importorskip("diffusers")

from chains_lite import zoo  # noqa: E402
from chains_lite.zoo import load  # noqa: E402
from chains_lite.zoo.catalog import (ENV, FULL_MODELS, LITE_NAMES, can_run_full, full_spec,  # noqa: E402
                                     random_weights, resolve_mode)


def test_modes_and_names_are_validated(monkeypatch):
    with pytest.raises(ValueError, match="mode"):
        load("shapes-vit", mode="fast")
    with pytest.raises(ValueError, match="unknown model"):
        load("resnet-50")
    monkeypatch.setenv("CHAINS_MODE", "lite")
    assert resolve_mode("auto") == "lite" and resolve_mode("full") == "full"
    monkeypatch.setenv("CHAINS_MODE", "gpu")
    with pytest.raises(ValueError, match="CHAINS_MODE"):
        resolve_mode("auto")


def test_lite_names_cover_the_issue():
    assert set(LITE_NAMES) == {"shapes-vit", "shapes-vit-reg", "shapes-vit-ssl", "shapes-flux", "shapes-unet",
                                "minilm"}
    assert all(spec.lite in LITE_NAMES for spec in FULL_MODELS.values())


def test_full_spec_is_the_one_lookup_of_a_paper_model():
    assert full_spec("sd15") is FULL_MODELS["sd15"] and full_spec("sd15").needs_gpu
    assert full_spec("dino-vitb8").hub_repo == "timm/vit_base_patch8_224.dino"
    for lookup in (full_spec, zoo.preflight, zoo.load_full):   # the loaders and the preflight ask it
        with pytest.raises(ValueError, match="unknown full model 'resnet-50'; choose from"):
            lookup("resnet-50")


def test_random_weights_switch(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert not random_weights()
    monkeypatch.setenv(ENV, "random")
    assert random_weights() and can_run_full()
    monkeypatch.setenv(ENV, "zeros")
    with pytest.raises(ValueError, match=ENV):
        random_weights()


def test_choose_mode_runs_full_only_with_everything_it_needs(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "random")                       # full mode can run here (a dry run)
    monkeypatch.delenv("CHAINS_MODE", raising=False)
    assert zoo.choose_mode("lite", CHAINS_IMAGENET=None) == "lite" and capsys.readouterr().out == ""
    assert zoo.choose_mode("full", CHAINS_IMAGENET="/data") == "full"
    assert zoo.choose_mode("auto", CHAINS_IMAGENET="/data") == "full"
    assert zoo.choose_mode("full", CHAINS_IMAGENET=None, CHAINS_X="x") == "lite"
    out = capsys.readouterr().out
    assert "full mode needs CHAINS_IMAGENET" in out and "running lite mode" in out and "a GPU" not in out
    monkeypatch.setenv(ENV, "hub")
    if not can_run_full():                                  # no GPU here
        assert zoo.choose_mode("full") == "lite" and "needs a GPU" in capsys.readouterr().out
