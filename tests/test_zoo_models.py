"""Lite model configs and builders (chains_lite.zoo.models)."""

import pytest

pytest.importorskip("timm")
pytest.importorskip("safetensors")

from chains_lite.zoo.models import build  # noqa: E402
from chains_lite.zoo.registry import read_card  # noqa: E402

TINY = ["--steps", "2", "--batch", "4", "--pool", "8", "--eval-n", "8"]


def test_build_overrides_replace_config_entries_and_reject_unknown_ones():
    wide = build("shapes-unet", block_out_channels=(48, 96, 96))
    assert tuple(wide.config.block_out_channels) == (48, 96, 96)
    assert wide.config.norm_num_groups == build("shapes-unet").config.norm_num_groups
    with pytest.raises(ValueError, match="no config entries.*num_wings"):
        build("shapes-unet", num_wings=2)
    with pytest.raises(ValueError, match="class"):
        build("shapes-vit", **{"class": "x"})


def test_shipped_cards_match_the_configs_the_loader_builds():
    from chains_lite.zoo.models import LITE_CONFIGS
    for name, cfg in LITE_CONFIGS.items():
        card = read_card(name)["config"]
        assert card == {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}, name
