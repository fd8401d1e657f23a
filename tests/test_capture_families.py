"""Which family knows a model, in which order families are tried, and which layers a call
chooses (chains_lite.capture.families)."""
import pytest
import torch

from chains_lite.capture import families
from chains_lite.capture.family import QK, Family
from chains_lite.core.layout import TokenLayout
from references import small_vit


def test_a_timm_vit_is_the_timm_family_and_an_unknown_model_is_refused_by_name():
    pytest.importorskip("timm")
    assert families.family_of(small_vit()).name == "timm-vit"
    vit = small_vit()
    assert families.attention_layers(vit) == [b.attn for b in vit.blocks]
    with pytest.raises(ValueError, match=r"capture does not know Linear; known families: \['timm-vit'"):
        families.family_of(torch.nn.Linear(2, 2))


def test_a_registered_family_is_tried_first(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", list(families.FAMILIES))
    mine = Family("mine", lambda m: isinstance(m, torch.nn.Linear), lambda m: [m],
                  lambda mod, a, k: QK(a[0], a[0], 1.0), lambda m: TokenLayout())
    families.register_family(mine)
    assert families.FAMILIES[0] is mine and families.family_of(torch.nn.Linear(2, 2)) is mine
    with pytest.raises(ValueError, match="one kind of attention"):
        families.attention_layers(torch.nn.Linear(2, 2), kind="cross")


def test_chosen_layers_sorts_and_validates():
    assert families.chosen_layers(4, None) == [0, 1, 2, 3]
    assert families.chosen_layers(4, [-1, 0]) == [0, 3] and families.chosen_layers(4, 2) == [2]
    for bad in ([4], [-5], [True], [1.0], [1, -3]):
        with pytest.raises(ValueError):
            families.chosen_layers(4, bad)
