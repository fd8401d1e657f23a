"""ImageNet-Segmentation's file: a synthetic gtsegs_ijcv.mat in the real layout, read back by the
published readers' own dereferencing (Chefer et al.'s images and masks, ConceptAttention's ids) and
by ours; the streaming reader's peak memory; class names against hand-checked WordNet entries."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from chains_lite.zoo.datasets import (ImageNetSegmentation, class_name, class_words,  # noqa: E402
                                      imagenet_index, imagenet_segmentation_size, imagenet_wnid,
                                      load_imagenet_segmentation, one_word, wnid_of,
                                      write_imagenet_segmentation)

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(20, 30), (25, 17), (16, 16)]
IDS = ["n02123045_1234", "n01440764_17", "n02084071_5"]


def synthetic(tmp_path, ids=IDS):
    g = np.random.default_rng(0)
    images = [g.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in SHAPES]
    masks = [g.random((h, w)) > 0.5 for h, w in SHAPES]
    path = tmp_path / "gtsegs_ijcv.mat"
    write_imagenet_segmentation(path, images, masks, ids=ids)
    return path, images, masks


def test_the_published_readers_read_the_synthetic_file(tmp_path):
    """The dereferencing of Chefer et al.'s data/imagenet.py and ConceptAttention's
    experiments/imagenet_segmentation/data_processing.py, retyped here, gives back what was written."""
    path, images, masks = synthetic(tmp_path)
    with h5py.File(path, "r") as f:
        assert len(f["/value/img"]) == len(images)
        for i in range(len(images)):
            img = np.array(f[f["/value/img"][i, 0]]).transpose((2, 1, 0))                # (H, W, 3)
            target = np.array(f[f[f["/value/gt"][i, 0]][0, 0]]).transpose((1, 0))         # (H, W)
            code = b"".join(f[f["/value/id"][i, 0]]).decode("utf-16").strip()
            np.testing.assert_array_equal(img, images[i].transpose(1, 2, 0))
            np.testing.assert_array_equal(target, masks[i].astype(np.uint8))
            assert code == IDS[i] and code[0] == "n" and int(code[1:].split("_")[0]) > 0
        assert f["/value"].attrs["MATLAB_class"] == b"struct"
    assert open(path, "rb").read(19) == b"MATLAB 7.3 MAT-file"


def test_reader_round_trips_images_masks_and_classes(tmp_path):
    path, images, masks = synthetic(tmp_path)
    data = ImageNetSegmentation(path, size=16)
    assert len(data) == imagenet_segmentation_size(path) == 3
    assert data.ids == IDS and data.wnids == ["n02123045", "n01440764", "n02084071"]
    # image 2 is already 16 x 16: read at size 16 it is the stored pixels exactly
    x, m = data.batch([2])
    np.testing.assert_array_equal((x[0] * 255).round().byte().numpy(), images[2])
    np.testing.assert_array_equal(m[0].numpy(), masks[2])
    x, m = data.batch([0, 1])
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and m.dtype == torch.bool
    assert 0 <= x.min() and x.max() <= 1
    # batches cover the indices in order, and agree with batch() and load_imagenet_segmentation
    got = list(data.batches(2, indices=[2, 0, 1]))
    assert [idx for idx, _, _ in got] == [[2, 0], [1]]
    x_all, m_all = load_imagenet_segmentation(path, size=16)
    assert torch.equal(torch.cat([b[1] for b in got]), x_all[[2, 0, 1]])
    assert torch.equal(load_imagenet_segmentation(path, size=16, indices=[1])[1], m_all[1:2])
    with pytest.raises(ValueError, match="outside"):
        data.batch([3])


def test_writer_takes_float_images_class_indices_and_checks_shapes(tmp_path):
    path = tmp_path / "f.mat"
    images = torch.rand(2, 3, 8, 8)
    write_imagenet_segmentation(path, images, torch.zeros(2, 8, 8), ids=[281, "n01440764"])
    data = ImageNetSegmentation(path, size=8)
    assert data.ids == ["n02123045_1", "n01440764_2"]
    assert (data.batch([0])[0][0] - images[0]).abs().max() <= 0.5 / 255 + 1e-6
    write_imagenet_segmentation(tmp_path / "no_ids.mat", images, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="no /value/id"):
        ImageNetSegmentation(tmp_path / "no_ids.mat").ids
    with pytest.raises(ValueError, match="mask 0"):
        write_imagenet_segmentation(tmp_path / "bad.mat", images, torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="WordNet id"):
        write_imagenet_segmentation(tmp_path / "bad.mat", images, torch.zeros(2, 8, 8), ids=["cat", "dog"])


def test_streaming_peak_memory_is_one_batch_not_the_dataset(tmp_path):
    """The rise of the peak resident set size (VmHWM, reset after a warm-up, in a fresh process)
    during a batch-size-1 pass over 48 images read at 512 x 512 (3.3 MB each) stays under 8
    images; loading them all at once, as load_imagenet_segmentation does, raises it by more than
    the 160 MB they take (which shows the measure can fail)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident set size")
    n, size = 48, 512
    g = np.random.default_rng(1)
    write_imagenet_segmentation(tmp_path / "m.mat", g.integers(0, 256, (n, 3, 24, 32), dtype=np.uint8),
                                g.random((n, 24, 32)) > 0.5)
    script = textwrap.dedent(f"""
        import re
        from chains_lite.zoo.datasets import ImageNetSegmentation, load_imagenet_segmentation
        def peak():                   # the peak resident set size since the last reset, in bytes
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        data = ImageNetSegmentation({str(tmp_path / "m.mat")!r}, size={size})
        for _ in data.batches(1, indices=[0, 1]):   # warm up: imports, first allocations
            pass
        with open("/proc/self/clear_refs", "w") as f:   # reset the peak to the current size
            f.write("5")
        base = peak()
        for idx, x, m in data.batches(1):
            pass
        stream = peak() - base
        everything = load_imagenet_segmentation(data.path, size={size})
        print(stream, peak() - base)
    """)
    # one thread, and glibc returning every large block to the system when it is freed: the peak
    # then counts the arrays alive at once, not the allocator's caching of freed ones
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(2**17)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    stream, everything = map(int, out.split())
    per_image = 3 * size * size * 4 + size * size
    assert everything > 0.8 * n * per_image, (stream, everything)
    assert stream < 8 * per_image, f"a batch-size-1 pass raised the peak by {stream / 2**20:.0f} MiB"


def test_class_names_against_hand_checked_wordnet_entries():
    # ImageNet-1k indices (sorted wnids): 0 tench, 1 goldfish, 207 golden retriever, 281 tabby cat
    assert imagenet_wnid(0) == "n01440764" and class_name(0) == "tench"
    assert class_name(1) == "goldfish"
    assert class_name(207) == "golden retriever" and one_word(class_name(207)) == "retriever"
    assert imagenet_wnid(281) == "n02123045" and class_name("n02123045") == "tabby"
    assert imagenet_index("n02123045") == 281
    # a synset of the whole ImageNet outside the 1k classes: dog (n02084071)
    assert imagenet_index("n02084071") is None and class_name("n02084071") == "dog"
    assert wnid_of("n02084071_5") == "n02084071"
    assert class_words(["n02123045", "n01440764", "n02123045"]) == ["tabby", "tench", "tabby"]
    # a hand-made map (ConceptAttention's imagenet_class_map.json "categories" has this form)
    assert class_words(["n02123045"], names={"tabby": "cat"}) == ["cat"]
    with pytest.raises(ValueError, match="not in the given names"):
        class_words(["n01440764"], names={"tabby": "cat"})
    with pytest.raises(ValueError):
        imagenet_wnid(1000)
    with pytest.raises(ValueError, match="WordNet id"):
        wnid_of("tabby_1")


def test_segmentation_benchmark_reads_words_from_the_class_ids(tmp_path):
    import importlib.util
    import json
    from argparse import Namespace
    spec = importlib.util.spec_from_file_location("bench_segmentation", ROOT / "benchmarks" / "segmentation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path, _, masks = synthetic(tmp_path)
    args = Namespace(data=str(path), image_size=16, n_images=None, classes=None, class_map=None, caption="a {}")
    n, load = bench.full_data(args)
    images, got_masks, captions, words = load([0, 2])
    assert n == 3 and images.shape == (2, 3, 16, 16) and torch.equal(got_masks[1], torch.from_numpy(masks[2]))
    assert words == ["tabby", "dog"] and captions == ["a tabby", "a dog"]
    (tmp_path / "map.json").write_text(json.dumps({"categories": {"tabby": "cat", "tench": "fish", "dog": "dog"}}))
    args.class_map = str(tmp_path / "map.json")
    assert bench.full_data(args)[1]([0, 1])[3] == ["cat", "fish"]


def test_imagenet_segmentation_without_h5py_says_how_to_install_it(monkeypatch, tmp_path):
    import sys
    from chains_lite.zoo.datasets import load_imagenet_segmentation
    monkeypatch.setitem(sys.modules, "h5py", None)             # as if not installed
    with pytest.raises(ImportError, match="pip install h5py"):
        load_imagenet_segmentation(tmp_path / "gtsegs_ijcv.mat")


def raw_file(path, images, masks):
    """A gtsegs_ijcv.mat layout with the arrays stored as given (images ``(C, W, H)`` or ``(W, H)``,
    masks ``(W, H)``), unchecked: the files a reader must refuse."""
    ref = h5py.special_dtype(ref=h5py.Reference)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img, gt = np.empty((len(images), 1), dtype=object), np.empty((len(masks), 1), dtype=object)
        for i, a in enumerate(images):
            img[i, 0] = refs.create_dataset(f"i{i}", data=a).ref
        for i, m in enumerate(masks):
            inner = np.array([[refs.create_dataset(f"m{i}", data=m).ref]], dtype=object)
            gt[i, 0] = refs.create_dataset(f"c{i}", data=inner, dtype=ref).ref
        f.create_dataset("value/img", data=img, dtype=ref)
        f.create_dataset("value/gt", data=gt, dtype=ref)
    return path


def test_imagenet_segmentation_reader_refuses_what_it_cannot_read_right(tmp_path):
    ok_img, ok_mask = np.zeros((3, 8, 6), np.uint8), np.ones((8, 6), np.uint8)
    cases = {"other size": ([ok_img], [np.ones((8, 7), np.uint8)], r"mask 0 is \(7, 8\), its image \(6, 8\)"),
             "16-bit": ([np.zeros((3, 8, 6), np.uint16)], [ok_mask], "image 0 is uint16; .* are uint8"),
             "float": ([np.zeros((3, 8, 6), np.float32)], [ok_mask], "image 0 is float32"),
             "RGBA": ([np.zeros((4, 8, 6), np.uint8)], [ok_mask], r"image 0 has shape \(4, 8, 6\).*channels")}
    for name, (images, masks, msg) in cases.items():
        data = ImageNetSegmentation(raw_file(tmp_path / f"{name}.mat", images, masks), size=4)
        with pytest.raises(ValueError, match=msg):
            data.batch([0])
    grey = ImageNetSegmentation(raw_file(tmp_path / "grey.mat", [np.full((8, 6), 255, np.uint8)], [ok_mask]), size=4)
    assert grey.batch([0])[0].eq(1).all()                        # one channel becomes three, in [0, 1]
    with pytest.raises(ValueError, match=r"holds \{'img': 2, 'gt': 1\} entries"):
        ImageNetSegmentation(raw_file(tmp_path / "counts.mat", [ok_img, ok_img], [ok_mask]))
    (tmp_path / "not.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(ValueError, match="not.mat is not an HDF5 file"):
        ImageNetSegmentation(tmp_path / "not.mat")
    with pytest.raises(FileNotFoundError, match="missing.mat: no such file"):
        ImageNetSegmentation(tmp_path / "missing.mat")


def test_coco_stuff_reader_refuses_16_bit_labels_a_list_map_and_an_empty_list(tmp_path):
    import json

    from PIL import Image

    from chains_lite.zoo.datasets import CocoStuff
    for sub in ("val2017", "annotation_val2017"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val2017" / "1.jpg")
    Image.fromarray(np.full((8, 8), 300, np.uint16)).save(tmp_path / "annotation_val2017" / "1.png")
    (tmp_path / "ids.txt").write_text("1\n")
    (tmp_path / "map.json").write_text(json.dumps({"0": 0, "1": 1}))
    data = CocoStuff(tmp_path, tmp_path / "ids.txt", tmp_path / "map.json", size=4)
    with pytest.raises(ValueError, match="1: label map of mode 'I;16'"):
        data.batch([0])
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "annotation_val2017" / "1.png")
    assert data.batch([0])[1].eq(1).all()                         # an 8-bit map reads
    (tmp_path / "list.json").write_text(json.dumps([0, 1]))
    with pytest.raises(ValueError, match=r"list.json must hold a JSON object .* got list"):
        CocoStuff(tmp_path, tmp_path / "ids.txt", tmp_path / "list.json")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty.txt lists no image ids"):
        CocoStuff(tmp_path, tmp_path / "empty.txt", tmp_path / "map.json")
