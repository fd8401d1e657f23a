"""Chapter 4's runs (chains_lite.experiments.sag and benchmarks/sag.py) on small random-weight UNets."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from chains_lite.experiments import sag as exp



def test_lite_work_records_do_not_depend_on_chunks_and_summarize(unet, sched):
    work = lambda idx: exp.lite_work(idx, unet=unet, scheduler=sched, judge=_Judge(), scales=(1.0,),  # noqa: E731
                                     steps=2, seed=3)
    whole, parts = work([0, 1, 2, 3]), work([0, 1]) + work([2, 3])
    assert json.loads(json.dumps(whole)) == whole
    # the same noise per index; batched kernels may round differently, so equal up to float32 rounding
    feats = lambda recs: torch.tensor([[r["features"] for r in x["runs"]] for x in recs])  # noqa: E731
    assert torch.allclose(feats(whole), feats(parts), atol=1e-5)
    assert [r["method"] for r in whole[0]["runs"]] == list(exp.METHODS)
    ref = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    table = exp.summarize(parts[::-1], ref, n_boot=5)
    assert set(table["methods"]) == set(exp.METHODS) and table["headline_scale"] == 1.0
    assert set(table["pairs"]) == {
        "sag_tokenrank@1 - sag_column_sum@1", "sag_tokenrank_capped@1 - sag_column_sum_capped@1",
        "sag_column_sum_capped@1 - sag_column_sum@1", "sag_tokenrank_capped@1 - sag_tokenrank@1",
        "sag_column_sum@1 - none@0", "sag_tokenrank@1 - none@0", "sag_column_sum_capped@1 - none@0",
        "sag_tokenrank_capped@1 - none@0"}
    assert table["methods"]["none"]["masked_fraction"] == 0
    for m in ("sag_column_sum_capped", "sag_tokenrank_capped"):   # floor(0.4 * 64) = 25 of 64 tokens
        assert 0 < table["methods"][m]["masked_fraction"] <= 25 / 64 + 1e-6
    columns, rows = exp.contrast_rows(table, "lite")
    assert [r[0] for r in rows] == ["TokenRank - column sum", "TokenRank, capped - column sum, capped"]
    d = table["pairs"]["sag_tokenrank_capped@1 - sag_column_sum_capped@1"]["frechet"]
    assert rows[1][1] == dict(d, signed=True) and len(rows[1]) == len(columns)
    columns, rows = exp.method_rows(table, "lite")
    assert [r[1] for r in rows] == ["–", "–", "–", "40%", "40%"]
    assert rows[4][-1] == "18.37 / 50.14 / 0.021" and rows[2][-1] == "–"   # the paper's capped TokenRank
    with pytest.raises(ValueError, match="no pair"):
        exp.contrast_rows(table, "lite", scale=2.0)


def test_only_the_capped_arms_get_the_cap():
    for method, (source, capped) in exp.ARMS.items():
        g = exp.method_sag(method, 1.5, cap=0.3)
        assert (g.source, g.cap, g.scale) == (source, 0.3 if capped else None, 1.5)
    assert {exp.ARMS[m][0] for m in exp.ARMS} == {"column_sum", "tokenrank"}
    assert sorted(c for _, c in exp.ARMS.values()) == [False, False, True, True]
    assert exp.method_sag("none", 1.5).scale == 0
    with pytest.raises(ValueError, match="method"):
        exp.method_sag("sag_pagerank", 1.0)


def test_full_work_on_a_random_conditional_unet(cond_unet, sched, tmp_path):
    gen = torch.Generator().manual_seed(0)
    table = {p: torch.randn(3, 12, generator=gen) for p in ["", "a red circle", "two stars", "a cat"]}
    encode = lambda ps: torch.stack([table[p] for p in ps])  # noqa: E731
    decode = lambda z: torch.sigmoid(z[:, :3])  # noqa: E731
    kw = dict(unet=cond_unet, scheduler=sched, encode=encode, decode=decode,
              prompts=["a red circle", "two stars", "a cat"], scales=(0.5,), steps=2, cfg=2.0)
    whole = exp.full_work([0, 1, 2], out_dir=tmp_path / "a", **kw)
    parts = exp.full_work([0], out_dir=tmp_path / "b", **kw) + exp.full_work([1, 2], out_dir=tmp_path / "b", **kw)
    for r, q in zip(whole, parts):
        assert r["prompt"] == q["prompt"]
        for x, y in zip(r["runs"], q["runs"]):
            a, b = (np.asarray(Image.open(z["path"])).astype(int) for z in (x, y))
            assert np.abs(a - b).max() <= 1   # 8-bit images of the same noise (float rounding aside)
    with pytest.raises(ValueError, match="prompts"):
        exp.full_work([3], out_dir=tmp_path / "c", **kw)
    fake = lambda imgs: (imgs.double().mean((-2, -1)), torch.softmax(imgs.double().mean((-2, -1)), -1))  # noqa: E731
    refs = [x["path"] for x in whole[0]["runs"]] + [x["path"] for x in whole[1]["runs"]]
    t = exp.summarize_full(parts, refs, extract=fake, n_boot=5)
    assert set(t["methods"]) == set(exp.METHODS) and t["n_samples"] == 3


def test_sample_change_by_hand():
    ref = torch.tensor([0.0, 1.0, 0.5]).reshape(3, 1, 1, 1).expand(3, 3, 2, 2)   # three seeds
    moved = ref + torch.tensor([0.1, -0.2, 0.3]).reshape(3, 1, 1, 1)
    change = exp.sample_change({("none", 0.0): ref, ("sag_tokenrank", 1.0): moved})
    assert change["seeds"] == pytest.approx((1.0 + 0.5) / 2)              # |0 - 1|, |1 - 0.5|
    assert change[("sag_tokenrank", 1.0)] == pytest.approx((0.1 + 0.2 + 0.3) / 3)
    assert set(change) == {"seeds", ("sag_tokenrank", 1.0)}
    with pytest.raises(ValueError, match="reference"):
        exp.sample_change({("sag_tokenrank", 1.0): moved})
    with pytest.raises(ValueError, match="B >= 2"):
        exp.sample_change({("none", 0.0): ref[:1]})
    with pytest.raises(ValueError, match="shape"):
        exp.sample_change({("none", 0.0): ref, ("sag_tokenrank", 1.0): moved[:2]})


def test_benchmark_refuses_bad_arguments_and_an_existing_out_before_work(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_sag", Path(__file__).parent.parent / "benchmarks" / "sag.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    out.write_text("{}")
    for argv, msg in ((["--out", str(out)], "exists"), (["--n-samples", "0", "--out", str(tmp_path / "x.json")], "n-samples"),
                      (["--scales", "-1", "--out", str(tmp_path / "y.json")], "scales"),
                      (["--mode", "full", "--out", str(tmp_path / "z.json")], "--prompts")):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_benchmark_writes_json_and_resumes_from_its_run_dir(tmp_path):
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_sag", Path(__file__).parent.parent / "benchmarks" / "sag.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--n-samples", "2", "--steps", "2", "--scales", "1", "--n-boot", "5", "--batch", "1",
            "--run-dir", str(tmp_path / "run")]
    bench.main(argv + ["--out", str(tmp_path / "a.json")])
    bench.main(argv + ["--out", str(tmp_path / "b.json")])   # every record is on disk: nothing to sample
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert set(a["methods"]) == set(exp.METHODS) and a["methods"] == b["methods"] and a["cap"] == exp.CAP


class _Judge(torch.nn.Module):
    """A stand-in for shapes-vit with timm's forward_features / forward_head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f, self.h = torch.nn.Linear(3, 5), torch.nn.Linear(5, 4)

    def forward_features(self, x):
        return self.f(x.mean((-2, -1)))

    def forward_head(self, z, pre_logits=False):
        return z if pre_logits else self.h(z)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _bench():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_sag", Path(__file__).parent.parent / "benchmarks" / "sag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sag_run_is_refused_when_an_argument_or_the_weights_change(tmp_path, refused_on_resume, other_checkpoint):
    argv = ["--n-samples", "2", "--batch", "1", "--steps", "2", "--scales", "1", "--n-boot", "5",
            "--out", str(tmp_path / "r.json")]
    changes = [["--scales", "2"], ["--steps", "3"], ["--layer", "bottleneck"], ["--cap", "0.3"], ["--seed", "1"],
               ["--n-samples", "3"], ["--batch", "2"], other_checkpoint]
    refusals = refused_on_resume(_bench(), argv, changes)
    assert "identity.weights" in refusals[-1][1] and "identity.judge_weights" in refusals[-1][1]


def test_sag_full_run_is_refused_when_its_prompts_reference_or_weights_change(tmp_path, monkeypatch,
                                                                              refused_on_resume, hub_weights):
    from chains_lite.zoo import dryrun
    monkeypatch.setenv("CHAINS_FULL_WEIGHTS", "random")
    env = dryrun.write_data(tmp_path / "data", n=2)
    argv = ["--mode", "full", "--prompts", env["CHAINS_SAG_PROMPTS"], "--reference", env["CHAINS_SAG_REFERENCE"],
            "--n-samples", "2", "--batch", "1", "--steps", "2", "--n-boot", "5", "--out", str(tmp_path / "r.json")]

    def other_prompts():
        from pathlib import Path
        p = Path(env["CHAINS_SAG_PROMPTS"])
        p.write_text("a red square\n" + p.read_text())
        return []

    def a_reference_added():
        from pathlib import Path
        ref = Path(env["CHAINS_SAG_REFERENCE"])
        (ref / "more.png").write_bytes(next(ref.iterdir()).read_bytes())
        return []

    refusals = refused_on_resume(_bench(), argv, [other_prompts, a_reference_added, ["--cfg", "5"], hub_weights])
    assert "identity.files.--prompts.bytes" in refusals[0][1]
    assert "identity.files.--reference.files" in refusals[1][1]
    assert "identity.weights: 'random' ->" in refusals[3][1]
