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


def test_checkpoint_digest_is_the_files_sha256_and_follows_a_retrained_file(tmp_path):
    import hashlib

    from chains_lite import zoo
    from chains_lite.zoo.registry import checkpoint_digest, weights_path
    path = weights_path("m", tmp_path)
    path.write_bytes(b"first weights")
    assert checkpoint_digest("m", tmp_path) == "sha256:" + hashlib.sha256(b"first weights").hexdigest()
    path.write_bytes(b"retrained weights, longer")
    assert checkpoint_digest("m", tmp_path) == "sha256:" + hashlib.sha256(b"retrained weights, longer").hexdigest()
    shipped = hashlib.sha256(weights_path("shapes-vit").read_bytes()).hexdigest()
    assert zoo.load("shapes-vit", mode="lite", device="cpu", verbose=False).extra["checkpoint"] == f"sha256:{shipped}"
