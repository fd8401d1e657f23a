"""zoo.preflight: full mode's needs (GPU, packages, data, hub) checked in seconds, without the
network: an unreachable hub is simulated by an endpoint nothing listens on, or a patched probe."""
import importlib
import time

import pytest
import torch

from chains_lite import zoo

preflight_module = importlib.import_module("chains_lite.zoo.preflight")
DEAD_HUB = "http://127.0.0.1:9"  # the discard port: connection refused at once


@pytest.fixture(autouse=True)
def online(monkeypatch, tmp_path):
    """The hub is not declared offline; an empty hub cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", DEAD_HUB)


def test_full_load_with_an_unreachable_hub_fails_in_seconds_naming_the_fix():
    """The issue's reproducer took ~50 s (ten hub retries) before failing."""
    start = time.perf_counter()
    with pytest.raises(zoo.FullModeUnavailable) as err:
        zoo.load("dino-vitb8", mode="full", device="cpu")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "unreachable" in msg and DEAD_HUB in msg and "timm/vit_base_patch8_224.dino" in msg
    assert "CHAINS_MODE=lite" in msg and "HF_HUB_OFFLINE=1" in msg


def test_a_hub_that_does_not_answer_in_time_is_unreachable(monkeypatch):
    calls = []

    def silent(repo, timeout):
        calls.append((repo, timeout))
        return "timed out"
    monkeypatch.setattr(preflight_module, "probe_hub", silent)
    with pytest.raises(RuntimeError, match="(?s)timed out.*Fix: use --mode lite"):
        zoo.preflight("vit-b16", device="cpu", fix="use --mode lite", timeout=0.5)
    assert calls == [("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", 0.5)]  # probed once


def test_auto_mode_on_a_gpu_falls_back_to_lite_quickly(monkeypatch, capsys):
    monkeypatch.delenv("CHAINS_MODE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(preflight_module, "probe_hub", lambda repo, timeout: "no route")
    real = zoo.load.__globals__["_load_lite"]
    monkeypatch.setitem(zoo.load.__globals__, "_load_lite", lambda name, device: real(name, "cpu"))
    loaded = zoo.load("dino-vits16", mode="auto", device="cuda")
    assert loaded.mode == "lite" and loaded.name == "shapes-vit"
    assert "no route" in capsys.readouterr().out


def test_offline_hub_needs_the_weights_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(preflight_module, "probe_hub", lambda *a: pytest.fail("offline: no probe"))
    with pytest.raises(RuntimeError, match="not in the hub cache"):
        zoo.preflight("dino-vitb8", device="cpu")
    snapshot = tmp_path / "hub" / "models--timm--vit_base_patch8_224.dino" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"")
    zoo.preflight("dino-vitb8", device="cpu")                # cached: nothing to report


def test_every_missing_need_is_listed_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as err:
        zoo.preflight("flux-schnell", data={"--data": tmp_path / "gtsegs_ijcv.mat", "--classes": None},
                      packages=["chains_lite_no_such_package"], fix="use --mode lite")
    msg = str(err.value)
    for part in ("needs a CUDA GPU", "pip install chains_lite_no_such_package", "--data", "--classes",
                 "unreachable", "Fix: use --mode lite"):
        assert part in msg


def test_nothing_missing_passes(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight_module, "probe_hub", lambda repo, timeout: None)
    data = tmp_path / "val"
    data.mkdir()
    zoo.preflight("clip-vitb32", device="cpu", data={"--data": data}, packages=["numpy"])
    with pytest.raises(ValueError, match="unknown full model"):
        zoo.preflight("resnet-50")
