"""Chapter 6's records (chains_lite.experiments.masking): per-image records merge to the curves."""

import pytest
import torch

from chains_lite.core.layout import TokenLayout
from chains_lite.experiments.masking import masking_records, merge_masking_records
from chains_lite.methods.masking import masking_curves

LAYOUT = TokenLayout(cls_index=0, register_indices=(1,), grid=(2, 2), patch_start=2)


def test_masking_records_merge_to_the_curves_and_do_not_depend_on_the_batch(tiny_vit):
    vit = tiny_vit(embed_dim=32, depth=4)
    x, y = torch.rand(10, 3, 16, 16), torch.randint(0, 3, (10,))
    fr = (0.0, 0.25, 0.5, 1.0)
    det = ("tokenrank", "cls_row", "column_sum")
    whole = masking_curves(vit, x, y, strategies=det, fractions=fr, batch_size=4, progress=False)
    recs = [r for i in range(0, 10, 4)
            for r in masking_records(vit, x[i:i + 4], y[i:i + 4], list(range(i, min(i + 4, 10))),
                                     strategies=det, fractions=fr)]
    assert merge_masking_records(recs, fr, whole["layers"]) == whole
    # random scores: one generator per image, so an image's scores are the same in any batch
    from chains_lite.methods.masking import _ranked
    A = torch.rand(5, 2, 6, 6).softmax(-1)
    lay = TokenLayout(cls_index=0, register_indices=(), grid=(1, 5), patch_start=1)
    for s in ("random", "tokenrank_random"):
        gens = lambda seeds: [torch.Generator().manual_seed(k) for k in seeds]  # noqa: E731
        together = _ranked(A, s, lay, generators=gens(range(5)))
        apart = torch.cat([_ranked(A[:2], s, lay, generators=gens(range(2))),
                           _ranked(A[2:], s, lay, generators=gens(range(2, 5)))])
        assert torch.allclose(together, apart)
        assert not torch.allclose(together, _ranked(A, s, lay, generators=gens(range(10, 15))))
    with pytest.raises(ValueError, match="one int per image"):
        masking_records(vit, x, y, [1, 2, 3], strategies=("random",), fractions=fr)


def _bench():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_masking", Path(__file__).parent.parent / "benchmarks" / "masking.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_masking_run_is_refused_when_an_argument_or_the_weights_change(tmp_path, refused_on_resume,
                                                                        other_checkpoint):
    argv = ["--n-images", "2", "--batch-size", "1", "--strategies", "random", "cls_row",
            "--fractions", "0", "0.5", "--run-dir", str(tmp_path / "run")]
    changes = [["--model", "shapes-vit-reg"], ["--seed", "1"], ["--layers", "0"], ["--fractions", "0", "0.3"],
               ["--strategies", "random"], ["--n-images", "3"], ["--batch-size", "2"], other_checkpoint]
    refusals = refused_on_resume(_bench(), argv, changes)
    assert "identity.weights" in refusals[-1][1]


def test_masking_full_run_is_refused_when_its_folder_or_the_weights_change(tmp_path, monkeypatch,
                                                                           refused_on_resume, hub_weights):
    from chains_lite.zoo import dryrun
    monkeypatch.setenv("CHAINS_FULL_WEIGHTS", "random")
    env = dryrun.write_data(tmp_path / "data", n=2)
    argv = ["--mode", "full", "--data", env["CHAINS_IMAGENET"], "--n-images", "2", "--batch-size", "1",
            "--strategies", "random", "--fractions", "0", "0.5", "--run-dir", str(tmp_path / "run")]

    def an_image_added():
        from pathlib import Path
        first = sorted(Path(env["CHAINS_IMAGENET"]).iterdir())[0]
        (first / "more.JPEG").write_bytes((next(first.iterdir())).read_bytes())
        return []

    refusals = refused_on_resume(_bench(), argv, [an_image_added, hub_weights])
    assert "identity.files.--data.files: 2 -> 3" in refusals[0][1]
    assert "identity.weights: 'random' -> 'vit_base_patch16_224" in refusals[1][1]


def test_masking_benchmark_counts_negative_layers_from_the_last_and_refuses_others(tmp_path, capsys,
                                                                                 refused_on_resume):
    argv = ["--n-images", "2", "--batch-size", "1", "--strategies", "random", "--fractions", "0", "0.5",
            "--run-dir", str(tmp_path / "run")]
    # shapes-vit has 6 attention layers: -1 is layer 5, the same run as --layers 5
    refusal = refused_on_resume(_bench(), argv + ["--layers", "-1"], [["--layers", "4"]])[0][1]
    assert "layers: [5] -> [4]" in refusal
    for bad in ("6", "-7"):
        with pytest.raises(SystemExit):
            _bench().main(argv + ["--layers", bad, "--run-dir", str(tmp_path / "other")])
        assert f"--layers: layer {bad} out of range for a model with 6 attention layers" in capsys.readouterr().err


def test_benchmarks_refuse_a_negative_seed_before_loading(monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    from chains_lite import zoo
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("the model loaded before the checks"))
    for name in ("masking", "segmentation", "diffseg", "sag"):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).parent.parent / "benchmarks" / f"{name}.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        with pytest.raises(SystemExit):
            bench.main(["--seed", "-1", "--out", "/tmp/never-written.json"])
        assert "--seed: must be an int >= 0, got -1" in capsys.readouterr().err


def test_auc_bootstrap_point_is_the_table_and_draws_are_paired():
    import numpy as np
    from chains_lite.experiments.masking import auc_bootstrap, auc_table
    from chains_lite.eval.stats import resample_indices
    g = torch.Generator().manual_seed(0)
    fr = (0.0, 0.5, 1.0)
    recs = [{"clean": 1, "correct": {"a": [1, int(torch.rand(1, generator=g) < 0.7), 0],
                                     "b": [1, 1, int(torch.rand(1, generator=g) < 0.5)]}}
            for _ in range(30)] + [{"clean": 0, "correct": {"a": [0, 0, 0], "b": [0, 1, 0]}}]
    point, draws = auc_bootstrap(recs, fr, n_boot=50, seed=3)
    want = auc_table(merge_masking_records(recs, fr, [0]))
    assert point == pytest.approx(want)
    # one resample by hand: the same image indices for every strategy
    idx = resample_indices(len(recs), 50, 3)[7]
    sub = merge_masking_records([recs[i] for i in idx], fr, [0])
    assert [draws[s][7] for s in ("a", "b")] == pytest.approx([auc_table(sub)[s] for s in ("a", "b")])
    assert draws["a"].shape == (50,) and np.isfinite(draws["a"]).all()
    with pytest.raises(ValueError, match="empty"):
        auc_bootstrap([], fr)


def test_masking_aucs_are_the_auc_of_the_merged_records(tiny_vit):
    from chains_lite.core.seeding import item_seed
    from chains_lite.experiments.masking import auc_table, masking_aucs
    vit = tiny_vit()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = vit(x).argmax(-1)                       # every image right when clean
    fr, strategies = (0.0, 0.25, 0.5), ("random", "cls_row")
    point, draws = masking_aucs(vit, x, y, strategies=strategies, fractions=fr, batch_size=2,
                                seed=4, n_boot=20)
    recs = masking_records(vit, x, y, [item_seed(4, i) for i in range(5)], strategies=strategies,
                           fractions=fr)
    assert sum(r["clean"] for r in recs) == 5
    assert point == pytest.approx(auc_table(merge_masking_records(recs, fr, [0])))
    assert set(draws) == set(strategies) and draws["cls_row"].shape == (20,)
