"""Per-word maps against hand-computed bounces, word tokens and settings, the ShapeWorld task, and
the lite segmentation path end to end."""
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
    assert alone[0][key]["ap"] == pytest.approx(together[2][key]["ap"], abs=1e-6)
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
