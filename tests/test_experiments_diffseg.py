"""Chapter 5's tables (chains_lite.experiments.diffseg and benchmarks/diffseg.py)."""
import math

import pytest
import torch

from chains_lite.experiments.diffseg import bootstrap, choose_threshold, own_segment_mass, score_chains
from references import block_chain, halves


def test_bootstrap_of_identical_strategies_has_zero_difference():
    from chains_lite.eval.metrics import hungarian_counts
    g = torch.Generator().manual_seed(9)
    gt = torch.randint(0, 3, (12, 8, 8), generator=g)
    pred = torch.randint(0, 4, (12, 8, 8), generator=g)
    c = hungarian_counts(pred, gt, 3)
    t = bootstrap({"uniform": c, "tokenrank": c}, n_boot=200)
    assert t["tokenrank - uniform"]["acc"] == 0 and t["tokenrank - uniform"]["acc_p"] == 1.0
    lo, hi = t["uniform"]["acc_ci"]
    assert lo <= t["uniform"]["acc"] <= hi and lo < hi
    assert math.isclose(t["uniform"]["acc"], c["tp"].sum() / c["pixels"].sum())


def test_choose_threshold_takes_the_best_validation_score_of_the_strategy():
    sweep = {0.1: {"uniform": {"miou": 0.30}, "tokenrank": {"miou": 0.50}},
             0.02: {"uniform": {"miou": 0.40}, "tokenrank": {"miou": 0.10}},
             0.05: {"uniform": {"miou": 0.40}, "tokenrank": {"miou": 0.20}}}
    assert choose_threshold(sweep) == 0.02                  # tie at 0.40: the smaller threshold
    assert choose_threshold(sweep, "tokenrank") == 0.1
    with pytest.raises(ValueError, match="empty"):
        choose_threshold({})
    with pytest.raises(ValueError, match="acc"):
        choose_threshold(sweep, metric="acc")


def test_own_segment_mass_by_hand():
    # a 2 x 2 token grid on a 4 x 4 image: token 0 is an object (class 3), the rest background
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    gt[0, :2, :2] = 3
    A = torch.tensor([[[0.7, 0.1, 0.1, 0.1],      # the object token keeps 0.7 on itself
                       [0.4, 0.2, 0.2, 0.2],      # background tokens: 0.6 on the background
                       [0.1, 0.3, 0.3, 0.3],      # 0.9
                       [0.0, 0.0, 0.0, 1.0]]])    # 1.0
    out = own_segment_mass(A, gt)
    assert out["object"] == pytest.approx({"mass": 0.7, "area": 0.25, "tokens": 1})
    assert out["background"] == pytest.approx({"mass": (0.6 + 0.9 + 1.0) / 3, "area": 0.75, "tokens": 3})
    # a uniform chain puts on each segment exactly its area
    uniform = own_segment_mass(torch.full((1, 4, 4), 0.25), gt)
    assert all(v["mass"] == pytest.approx(v["area"]) for v in uniform.values())
    with pytest.raises(ValueError, match="square"):
        own_segment_mass(torch.full((1, 3, 3), 1 / 3), gt)
    with pytest.raises(ValueError, match="ground-truth"):
        own_segment_mass(A, torch.cat([gt, gt]))


def test_score_chains_counts_every_strategy_per_image():
    A = torch.stack([block_chain(8, halves(8)), block_chain(8, halves(8).T.contiguous(), seed=1)])
    gt = torch.stack([halves(16), halves(16).T]).long()
    scored = score_chains(A, gt, 2, ("uniform", "tokenrank"), threshold=1.1, min_distance=4)
    for s in ("uniform", "tokenrank"):
        assert scored[s]["tp"].sum() == 2 * 256 and list(scored[s]["n_segments"]) == [2, 2]


def _runner():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "diffseg.py"
    spec = importlib.util.spec_from_file_location("bench_diffseg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [["--n-images", "0"], ["--threshold", "0"], ["--strategies", "nope"],
                                  ["--timestep", "1000"], ["--mode", "full", "--data", "/nonexistent"]])
def test_diffseg_runner_checks_arguments_before_work(argv, monkeypatch):
    from chains_lite import zoo
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("work started before the checks"))
    with pytest.raises(SystemExit):
        _runner().main(argv)


def test_diffseg_runner_writes_json_and_never_overwrites(tmp_path):
    import json
    out = tmp_path / "r.json"
    _runner().main(["--n-images", "3", "--n-boot", "20", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["n_images"] == 3 and r["mode"] == "lite" and set(r["results"]) >= {"uniform", "tokenrank"}
    for s in ("uniform", "tokenrank"):
        assert 0 <= r["results"][s]["acc"] <= 1 and len(r["results"][s]["acc_ci"]) == 2
    assert r["protocol"] == "clean" and r["timestep"] == 300 and r["val_choice"] is None
    with pytest.raises(SystemExit):
        _runner().main(["--n-images", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == r


def test_diffseg_runner_sweeps_thresholds_on_validation_images(tmp_path, capsys):
    import json
    out = tmp_path / "r.json"
    _runner().main(["--n-images", "2", "--n-boot", "5", "--sweep", "0.05", "0.5", "--threshold", "0.2",
                    "--out", str(out)])
    r = json.loads(out.read_text())
    assert set(r["val_sweep"]) == {"0.05", "0.5"} and r["threshold"] == 0.2
    assert r["val_choice"] == choose_threshold({float(k): v for k, v in r["val_sweep"].items()})
    assert f"validation choice: threshold {r['val_choice']}" in capsys.readouterr().out


def test_diffseg_runner_resumes_from_its_run_dir(tmp_path):
    import json
    argv = ["--n-images", "3", "--n-boot", "20", "--batch-size", "2", "--run-dir", str(tmp_path / "run")]
    _runner().main(argv + ["--out", str(tmp_path / "a.json")])
    _runner().main(argv + ["--out", str(tmp_path / "b.json")])   # every record is on disk: nothing to do
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["results"] == b["results"]
    with pytest.raises(ValueError, match="threshold"):  # another configuration into the same folder
        _runner().main(argv + ["--threshold", "0.2"])


def test_diffseg_run_is_refused_when_an_argument_or_the_weights_change(tmp_path, refused_on_resume,
                                                                        other_checkpoint):
    argv = ["--n-images", "2", "--batch-size", "1", "--n-boot", "5", "--run-dir", str(tmp_path / "run")]
    changes = [["--threshold", "0.3"], ["--sweep", "0.5"], ["--per-side", "2"], ["--min-distance", "2"],
               ["--distance", "chebyshev"], ["--timestep", "200"], ["--strategies", "uniform"],
               ["--seed", "1"], ["--n-images", "3"], ["--batch-size", "2"], ["--protocol", "noised"],
               other_checkpoint]
    refusals = refused_on_resume(_runner(), argv, changes)
    assert "sweep: None -> [0.5]" in refusals[1][1]
    assert "identity.weights: 'sha256:" in refusals[-1][1] and "-> 'sha256:retrained'" in refusals[-1][1]


def test_diffseg_full_run_is_refused_when_a_data_file_or_the_weights_change(tmp_path, monkeypatch,
                                                                             refused_on_resume, hub_weights):
    import json
    from chains_lite.zoo import dryrun
    monkeypatch.setenv("CHAINS_FULL_WEIGHTS", "random")
    env = dryrun.write_data(tmp_path / "data", n=2)
    f2c = tmp_path / "data" / "fine_to_coarse.json"
    argv = ["--mode", "full", "--data", env["COCO_STUFF_ROOT"], "--file-list", env["COCO_STUFF_LIST"],
            "--fine-to-coarse", str(f2c), "--n-images", "2", "--batch-size", "1", "--run-dir", str(tmp_path / "run")]

    def other_label_map():   # the same path, another map (27 classes still)
        m = json.loads(f2c.read_text())
        m.pop(next(iter(m)))
        f2c.write_text(json.dumps(m))
        return []

    def other_list():
        p = tmp_path / "data" / "coco_stuff_ids.txt"
        p.write_text(p.read_text() + "\n")
        return []

    def an_image_added():
        (tmp_path / "data" / "coco_stuff" / "val2017" / "extra.jpg").write_bytes(b"x")
        return []

    refusals = refused_on_resume(_runner(), argv, [other_label_map, other_list, an_image_added, hub_weights])
    assert "identity.files.--fine-to-coarse.bytes" in refusals[0][1]
    assert "identity.files.--data.files" in refusals[2][1]
    assert "identity.weights: 'random' -> 'stable-diffusion-v1-5/stable-diffusion-v1-5'" in refusals[3][1]


def test_diffseg_json_names_the_weights_and_files(tmp_path):
    import json
    out = tmp_path / "r.json"
    _runner().main(["--n-images", "2", "--n-boot", "5", "--out", str(out)])
    identity = json.loads(out.read_text())["identity"]
    assert identity["weights"].startswith("sha256:") and len(identity["weights"]) == 7 + 64
    assert identity["files"] == {}


def test_anchor_stats_by_hand():
    from chains_lite.experiments.diffseg import anchor_stats
    from chains_lite.methods.diffseg import uniform_grid
    A = block_chain(4, halves(4))[None]               # a 4 x 4 grid: uniform anchors (per_side 2) at the corners
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    gt[0, 0, 0], gt[0, 1, 2] = 1, 2                   # object 1 under an anchor, object 2 not
    pts = uniform_grid(4, 2)
    assert pts.tolist() == [[0, 0], [0, 3], [3, 0], [3, 3]]
    st = anchor_stats(A, gt, "uniform")
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    ref = torch.stack([((rows - r) ** 2 + (cols - c) ** 2).sqrt() for r, c in pts.tolist()]).min(0).values.mean()
    assert st["coverage"] == 0.5 and abs(st["spread"] - ref.item()) < 1e-6


def test_table_rows_in_percent_with_paired_differences():
    res = {"uniform": dict(acc=0.5, miou=0.25, acc_ci=[0.4, 0.6], miou_ci=[0.2, 0.3], segments=2.0),
           "tokenrank": dict(acc=0.6, miou=0.2, acc_ci=[0.5, 0.7], miou_ci=[0.1, 0.3]),
           "tokenrank - uniform": dict(acc=0.1, miou=-0.05, acc_ci=[0.0, 0.2], miou_ci=[-0.1, 0.0],
                                       acc_p=0.03, miou_p=0.9)}
    from chains_lite.experiments.diffseg import table_rows
    from chains_lite.viz.tables import cell
    columns, rows = table_rows(res, ["uniform", "tokenrank"])
    assert len(columns) == 6 and all(len(r) == 6 for r in rows)
    assert cell(rows[0][1]) == "50.0 [40.0, 60.0]" and rows[0][4:] == ["72.5", "43.6"] and rows[1][4:] == ["84.97", "44.87"]
    assert cell(rows[2][2]) == "-5.00 [-10.0, 0]" and "p = 0.03 / 0.90" in rows[2][0]
