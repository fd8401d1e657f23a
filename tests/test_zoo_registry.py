"""Checkpoint files and cards (chains_lite.zoo.registry)."""

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("safetensors")

from chains_lite.zoo.models import build  # noqa: E402
from chains_lite.zoo.registry import load_weights, read_card, save_checkpoint  # noqa: E402

TINY = ["--steps", "2", "--batch", "4", "--pool", "8", "--eval-n", "8"]


def test_checkpoint_round_trip_is_float16_exact(tmp_path):
    torch.manual_seed(0)
    model = build("shapes-vit").eval()
    card = {"name": "shapes-vit", "date": "x", "params": 1, "data": "d", "training": {}, "wall_time_s": 1.0,
            "hardware": "h", "torch": "t", "validation": {"accuracy": 0.5}, "config": {}}
    save_checkpoint(model, card, tmp_path)
    again = load_weights(build("shapes-vit"), "shapes-vit", tmp_path)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        expect = a.half().float() if a.is_floating_point() else a
        assert torch.equal(expect, b), k
    assert read_card("shapes-vit", tmp_path)["validation"]["accuracy"] == 0.5
    assert (tmp_path / "shapes-vit.md").read_text().startswith("# shapes-vit")
