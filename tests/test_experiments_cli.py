"""The benchmarks' shared skeleton (chains_lite.experiments.cli): common options, checks before any
work, the output claim, full mode's preflight, the runner behind it."""
import json

import pytest

from chains_lite.experiments import cli


def test_parser_has_the_common_options_and_checks_counts(capsys):
    ap = cli.parser("doc")
    ap.add_argument("--n-images", type=int)
    args = ap.parse_args(["--n-images", "3", "--seed", "2"])
    assert (args.mode, args.seed, args.out, args.run_dir, args.n_images) == ("lite", 2, None, None, 3)
    cli.at_least_one(ap, args, "n_images")
    args.n_images = 0
    with pytest.raises(SystemExit):
        cli.at_least_one(ap, args, "n_images")
    assert "--n-images must be >= 1, got 0" in capsys.readouterr().err


def test_claim_refuses_an_existing_out_before_any_work(tmp_path, capsys):
    ap = cli.parser("doc")
    out = tmp_path / "r.json"
    assert cli.claim(ap, ap.parse_args(["--out", str(out)])) == out
    out.write_text("{}")
    with pytest.raises(SystemExit):
        cli.claim(ap, ap.parse_args(["--out", str(out)]))
    assert "exists" in capsys.readouterr().err


def test_preflight_only_acts_in_full_mode(tmp_path, monkeypatch, capsys):
    ap = cli.parser("doc")
    cli.preflight(ap, ap.parse_args([]), "sd15", data={"--data": None})      # lite: nothing checked
    monkeypatch.setenv("CHAINS_FULL_WEIGHTS", "random")                      # no GPU or hub needed
    with pytest.raises(SystemExit):
        cli.preflight(ap, ap.parse_args(["--mode", "full"]), "sd15", data={"--data": str(tmp_path / "none")})
    err = capsys.readouterr().err
    assert "--data" in err and "does not exist" in err and cli.FULL_MODE_FIX in err


def test_run_keeps_records_beside_out_and_write_writes_json(tmp_path):
    ap = cli.parser("doc")
    args = ap.parse_args(["--out", str(tmp_path / "r.json")])
    work = lambda idx: [{"i": i} for i in idx]  # noqa: E731
    assert cli.run(work, 5, args, {"w": 1}, batch=2, desc="t") == [{"i": i} for i in range(5)]
    assert (tmp_path / "r.run" / "run.json").exists()                        # resumable
    no_out = ap.parse_args([])
    assert cli.run(work, 3, no_out, {"w": 1}, batch=2, desc="t") == [{"i": i} for i in range(3)]
    cli.write(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


def test_run_identity_names_the_weights_and_the_files(tmp_path):
    import os

    import torch
    from chains_lite.zoo import Loaded
    m = torch.nn.Linear(1, 1)
    assert cli.weights_identity(Loaded(m, "sd15", "full", "", extra={"hub_id": "sd/x", "weights": "random"})) == "random"
    assert cli.weights_identity(Loaded(m, "sd15", "full", "", extra={"hub_id": "sd/x"})) == "sd/x"
    assert cli.weights_identity(Loaded(m, "shapes-vit", "lite", "", extra={"checkpoint": "sha256:ab"})) == "sha256:ab"
    with pytest.raises(ValueError, match="no checkpoint digest"):
        cli.weights_identity(Loaded(m, "x", "lite", ""))
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("abc")
    (tmp_path / "d" / "sub" / "b.txt").write_text("defg")
    os.utime(tmp_path / "d" / "sub" / "b.txt", ns=(1, 5 * 10 ** 9))
    os.utime(tmp_path / "d" / "a.txt", ns=(1, 7 * 10 ** 9))
    ident = cli.run_identity(Loaded(m, "x", "full", "", extra={"hub_id": "h"}),
                             {"--data": tmp_path / "d", "--list": tmp_path / "d" / "a.txt", "--none": None},
                             judge=Loaded(m, "j", "lite", "", extra={"checkpoint": "sha256:cd"}))
    assert ident == {"weights": "h", "judge_weights": "sha256:cd", "files": {
        "--data": {"path": str((tmp_path / "d").resolve()), "files": 2, "bytes": 7, "mtime_ns": 7 * 10 ** 9},
        "--list": {"path": str((tmp_path / "d" / "a.txt").resolve()), "bytes": 3, "mtime_ns": 7 * 10 ** 9}}}
    with pytest.raises(ValueError, match="no such file or folder"):
        cli.file_identity(tmp_path / "missing")
