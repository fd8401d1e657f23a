"""Per-word maps against hand-computed bounces, word tokens and settings, the ShapeWorld task, and
the lite segmentation path end to end."""
import numpy as np
import pytest
import torch

from chains_lite.experiments.segmentation import class_word_task


def shapeworld_task(n, seed):
    from chains_lite.zoo import shapeworld
    return class_word_task(shapeworld(n, seed=seed, split="test", size=32))


def test_class_word_task_masks_every_object_of_the_word():
    batch, masks, words = shapeworld_task(40, seed=0)
    for i in range(40):
        same = [k + 1 for k, s in enumerate(batch.shapes[i]) if s == words[i]]
        assert words[i] == batch.shapes[i][0] and words[i] in batch.captions[i]
        assert torch.equal(masks[i], torch.isin(batch.masks[i], torch.tensor(same)))


def test_lite_segmentation_end_to_end():
    from chains_lite import zoo
    from chains_lite.experiments.segmentation import evaluate
    from chains_lite.methods.segmentation import segment
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch, masks, words = shapeworld_task(4, seed=3)
    m = segment(loaded, batch.images[0], batch.captions[0], words[0], "column_select")
    assert m.shape == (16, 16) and (m >= 0).all() and m.sum() <= 1 + 1e-5
    res = evaluate(loaded, batch.images, masks, batch.captions, words,
                   ["column_select", "outgoing_2:uniform:single"], progress=False)
    for name in ("column_select:lambda2", "outgoing_2:uniform:single"):
        assert res[name]["n"] == 4 and 0 <= res[name]["acc"] <= 100 and 0 <= res[name]["map"] <= 100


def test_word_object_scores_runs_on_multi_object_images():
    from chains_lite import zoo
    from chains_lite.experiments.segmentation import word_object_scores
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch = zoo.shapeworld(12, seed=1, split="test", size=32)
    n = sum(len(s) for s in batch.shapes if len(s) >= 2 and len(set(s)) == len(s))
    for kind in ("shape", "color"):
        r = word_object_scores(loaded, batch, kind, progress=False)
        assert r["n"] == n and 0 <= r["map"] <= 100
    with pytest.raises(ValueError, match="kind"):
        word_object_scores(loaded, batch, "size")


def test_segmentation_records_do_not_depend_on_the_batch_and_merge_to_the_scores():
    """One seed per image: an image's record is the same alone or in a batch, and merged records
    are binary_segmentation of the maps of the whole set."""
    from chains_lite import zoo
    from chains_lite.eval.metrics import binary_segmentation
    from chains_lite.experiments.segmentation import merge_records, segmentation_records
    from chains_lite.methods.segmentation import word_maps
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch, masks, words = shapeworld_task(3, seed=3)
    kw = dict(settings=["outgoing_2:uniform"], steps=1)
    seeds = [11, 12, 13]
    together = segmentation_records(loaded, batch.images, masks, batch.captions, words, size=32,
                                    seed=seeds, **kw)
    alone = segmentation_records(loaded, batch.images[2:], masks[2:], batch.captions[2:], words[2:],
                                 size=32, seed=seeds[2:], **kw)
    key = "outgoing_2:uniform"
    assert alone[0][key]["correct"] == together[2][key]["correct"]
    # equal up to float32 rounding: the products of a batch of 3 and of 1 round differently
    # (1.5e-6 apart on one thread)
    assert alone[0][key]["ap"] == pytest.approx(together[2][key]["ap"], abs=1e-5)
    maps = word_maps(loaded, batch.images, batch.captions, words, seed=seeds, **kw)[key]
    assert merge_records(together)[key] == binary_segmentation(maps, masks, size=32)
    # the seed matters: other noise, other maps
    other = word_maps(loaded, batch.images, batch.captions, words, seed=[1, 2, 3], **kw)[key]
    assert not torch.allclose(maps, other)
    with pytest.raises(ValueError, match="one int per image"):
        word_maps(loaded, batch.images, batch.captions, words, seed=[1, 2], **kw)


def test_evaluate_batches_scores_a_stream_as_evaluate_scores_the_whole_set():
    from chains_lite import zoo
    from chains_lite.experiments.segmentation import evaluate, evaluate_batches
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch, masks, words = shapeworld_task(4, seed=5)
    kw = dict(settings=["outgoing_2:uniform", "row_select:uniform"], steps=1, size=32, seed=7,
              progress=False)
    whole = evaluate(loaded, batch.images, masks, batch.captions, words, batch_size=2, **kw)
    stream = ((batch.images[i:i + 2], masks[i:i + 2], batch.captions[i:i + 2], words[i:i + 2])
              for i in (0, 2))
    got = evaluate_batches(loaded, stream, total=2, **kw)
    for k in ("outgoing_2:uniform", "row_select:uniform"):
        assert got[k]["n"] == 4
        for m in ("acc", "miou", "map"):
            assert got[k][m] == pytest.approx(whole[k][m], abs=1e-9)
    assert got["time_s"] > 0


def _bench():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_segmentation",
                                                  Path(__file__).parent.parent / "benchmarks" / "segmentation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segmentation_run_is_refused_when_an_argument_or_the_weights_change(tmp_path, refused_on_resume,
                                                                             other_checkpoint):
    argv = ["--n-images", "2", "--batch-size", "1", "--methods", "outgoing_2:uniform", "--steps", "1",
            "--size", "32", "--run-dir", str(tmp_path / "run")]
    changes = [["--t", "0.3"], ["--steps", "2"], ["--store", "qk"], ["--size", "16"], ["--resize", "bilinear"],
               ["--methods", "row_select:uniform"], ["--seed", "1"], ["--n-images", "3"], ["--batch-size", "2"],
               other_checkpoint]
    refusals = refused_on_resume(_bench(), argv, changes)
    assert "identity.weights" in refusals[-1][1]


def test_segmentation_full_run_is_refused_when_a_data_file_changes(tmp_path, monkeypatch, refused_on_resume):
    import os
    from chains_lite.zoo import dryrun
    pytest.importorskip("h5py")
    monkeypatch.setenv("CHAINS_FULL_WEIGHTS", "random")
    env = dryrun.write_data(tmp_path / "data", n=2)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    argv = ["--mode", "full", "--data", env["IMAGENET_SEG"], "--classes", str(classes), "--n-images", "2",
            "--batch-size", "1", "--methods", "outgoing_2:uniform", "--steps", "1", "--size", "32",
            "--image-size", "64", "--run-dir", str(tmp_path / "run")]

    def data_rewritten():    # the same size, written later
        st = os.stat(env["IMAGENET_SEG"])
        os.utime(env["IMAGENET_SEG"], ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
        return []

    def other_classes():
        classes.write_text("cat\nbird\n")
        return []
    refusals = refused_on_resume(_bench(), argv, [data_rewritten, other_classes, ["--caption", "the {}"],
                                                   ["--image-size", "32"]])
    assert "identity.files.--data.mtime_ns" in refusals[0][1]
    assert "identity.files.--classes.bytes: 8 -> 9" in refusals[1][1]


def test_color_word_task_masks_every_object_of_the_colour():
    from chains_lite.zoo import shapeworld
    batch = shapeworld(30, seed=2, split="test", size=32)
    _, masks, words = class_word_task(batch, "color")
    for i in range(30):
        same = [k + 1 for k, c in enumerate(batch.colors[i]) if c == words[i]]
        assert words[i] == batch.colors[i][0] and words[i] in batch.captions[i]
        assert torch.equal(masks[i], torch.isin(batch.masks[i], torch.tensor(same)))
    with pytest.raises(ValueError, match="kind"):
        class_word_task(batch, "size")


def test_map_mass_on_hand_made_maps():
    from chains_lite.experiments.segmentation import map_mass
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True                       # the object: the top-left quarter (a 2x2 grid cell)
    on = torch.tensor([[3.0, 1.0], [1.0, 1.0]])   # half of the mass on a quarter of the area
    off = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # nothing on the object
    r = map_mass(torch.stack([on, off]), masks, reference=torch.stack([on, on]))
    assert r["enrichment"] == pytest.approx((0.5 / 0.25 + 0.0) / 2)
    assert r["inverted"] == 50.0 and r["n"] == 2
    # Pearson with the reference: 1 for the same map, numpy's corrcoef for the other
    want = (1 + np.corrcoef(off.flatten(), on.flatten())[0, 1]) / 2
    assert r["corr"] == pytest.approx(want)
    with pytest.raises(ValueError, match="non-negative"):
        map_mass(-torch.stack([on, off]), masks)


def test_seed_statistics_match_numpy_and_scipy():
    from scipy.stats import wilcoxon
    from chains_lite.experiments.segmentation import over_seeds, wilcoxon_seeds
    a = [70.0, 71.5, 69.0, 72.0, 70.5]
    b = [69.0, 70.0, 69.5, 70.0, 68.0]
    runs = [{"x": {"acc": u, "miou": u, "map": u}, "y": {"acc": v, "miou": v, "map": v}} for u, v in zip(a, b)]
    mean, std = over_seeds(runs, "x", "acc")
    assert mean == pytest.approx(np.mean(a)) and std == pytest.approx(np.std(a, ddof=1))
    w = wilcoxon_seeds(runs, "x", "y")
    assert w["map"]["wins"] == 4 and w["map"]["n"] == 5
    assert w["acc"]["p"] == pytest.approx(wilcoxon(np.subtract(a, b), alternative="greater").pvalue)
    # all five in favour: the smallest one-sided p of 5 pairs, 1/32 (the paper's Table 9)
    assert wilcoxon_seeds(runs, "x", "x")["acc"]["p"] == 1.0
    five = [{"x": {"acc": 2.0 + i}, "y": {"acc": 1.0}} for i in range(5)]
    assert wilcoxon_seeds(five, "x", "y", ["acc"])["acc"]["p"] == pytest.approx(1 / 32)
    with pytest.raises(ValueError, match="2 runs"):
        over_seeds(runs[:1], "x", "acc")


def test_step_correlations_are_numpys_corrcoef():
    from chains_lite.experiments.segmentation import cross_image_correlation, step_correlations
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 3, 5, 5, generator=g)    # (steps, images, h, w)
    c = step_correlations(maps)
    assert c.shape == (3, 4, 4)
    for b in range(3):
        np.testing.assert_allclose(c[b].numpy(), np.corrcoef(maps[:, b].flatten(1).numpy()), atol=1e-12)
    cc = np.corrcoef(maps[-1].flatten(1).numpy())
    assert cross_image_correlation(maps[-1]) == pytest.approx(cc[~np.eye(3, dtype=bool)].mean())


def test_lite_tasks_share_the_passes_and_the_drift_table_reads_them():
    """Several word lists on one pass give each list's word_maps; bounce_drift reads every n."""
    from chains_lite import zoo
    from chains_lite.experiments.segmentation import DRIFT, bounce_drift, decode_latents, evaluate
    from chains_lite.methods.segmentation import task_maps, word_maps
    from chains_lite.zoo.models import pack
    loaded = zoo.load("shapes-flux", mode="lite", device="cpu", verbose=False)
    batch, masks, words = shapeworld_task(3, seed=7)
    _, cmasks, cwords = class_word_task(batch, "color")
    kw = dict(settings=["outgoing_2", "output_space", "concept_attention"], steps=1, seed=5)
    both = task_maps(loaded, batch.images, batch.captions, {"s": words, "c": cwords}, **kw)
    for key, ws in (("s", words), ("c", cwords)):
        alone = word_maps(loaded, batch.images, batch.captions, ws, **kw)
        for name in alone:
            if name == "concept_attention":  # concepts attend to each other: the pair is not each alone
                assert not torch.allclose(both[key][name], alone[name])
            else:
                torch.testing.assert_close(both[key][name], alone[name])
    settings = [k for d in DRIFT.values() for k in d.values()]
    res = evaluate(loaded, batch.images, {"shape": masks, "color": cmasks}, batch.captions,
                   {"shape": words, "color": cwords}, settings, steps=1, progress=False, keep_maps=True,
                   size=32)
    d = bounce_drift(res["shape"], masks)
    assert set(d) == {"incoming", "outgoing"} and set(d["outgoing"]) == {1, 2, 3, "inf"}
    assert d["outgoing"]["inf"]["corr"] == pytest.approx(1.0)
    assert d["incoming"][2]["map"] == res["shape"]["incoming_2:lambda2"]["map"]
    with pytest.raises(ValueError, match="keep_maps"):
        bounce_drift({"maps": {}}, masks)
    with pytest.raises(ValueError, match="same tasks"):
        evaluate(loaded, batch.images, {"shape": masks}, batch.captions, {"color": cwords}, progress=False)
    # lite latents decode back to the pixels they pack
    torch.testing.assert_close(decode_latents(loaded, pack(batch.images * 2 - 1), 32), batch.images,
                               atol=1e-6, rtol=0)


def test_step_stability_by_hand():
    """Maps built from orthogonal zero-mean patterns (rows of a Hadamard matrix), so that every
    correlation is known: step s of image i is c_s f_i + sqrt(1 - c_s^2) o_i, whose correlation
    with its final map f_i is c_s; the final maps of different images are orthogonal (0)."""
    from scipy.linalg import hadamard
    from chains_lite.experiments.segmentation import step_stability
    h = torch.tensor(hadamard(16), dtype=torch.float64)          # rows 1.. are zero-mean, orthogonal
    final, other = h[1:4].reshape(3, 4, 4), h[4:7].reshape(3, 4, 4)

    def run(c):
        c = torch.tensor(c, dtype=torch.float64)[:, None, None, None]
        return step_stability(c * final + (1 - c ** 2).sqrt() * other)

    early = run([0.6, 0.6, 0.9, 0.9, 1.0])
    assert early["per_step"].tolist() == pytest.approx([0.6, 0.6, 0.9, 0.9, 1.0])
    assert early["first"] == pytest.approx(0.6) and early["second"] == pytest.approx(0.9)
    assert early["unrelated"] == pytest.approx(0.0, abs=1e-12) and early["verdict"] == "early"
    assert run([0.2, 0.2, 0.9, 0.9, 1.0])["verdict"] == "later"   # above unrelated, below half of 0.9
    assert run([-0.2, 0.0, 0.9, 0.9, 1.0])["verdict"] == "late"   # no more than unrelated maps share
    with pytest.raises(ValueError, match="steps >= 3"):
        step_stability(torch.zeros(2, 3, 4, 4))
