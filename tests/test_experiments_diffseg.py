"""Chapter 5's tables (chains_lite.experiments.diffseg and benchmarks/diffseg.py)."""
import math

import pytest
import torch

from chains_lite.experiments.diffseg import bootstrap, score_chains
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
    with pytest.raises(SystemExit):
        _runner().main(["--n-images", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == r


def test_diffseg_runner_resumes_from_its_run_dir(tmp_path):
    import json
    argv = ["--n-images", "3", "--n-boot", "20", "--batch-size", "2", "--run-dir", str(tmp_path / "run")]
    _runner().main(argv + ["--out", str(tmp_path / "a.json")])
    _runner().main(argv + ["--out", str(tmp_path / "b.json")])   # every record is on disk: nothing to do
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["results"] == b["results"]
    with pytest.raises(ValueError, match="threshold"):  # another configuration into the same folder
        _runner().main(argv + ["--threshold", "0.2"])
