"""The paper's datasets, read one item or one batch at a time (memory stays flat):

* ImageNet-Segmentation (chapter 3): :class:`ImageNetSegmentation`, below;
* ImageNet validation and Imagenette folders (chapter 6): :func:`image_folder`, :func:`imagenet_folder`;
* COCO-Stuff-27 (chapter 5): :class:`CocoStuff`.

ImageNet-Segmentation (Guillaumin et al.; 4,276 images of 445 ImageNet synsets with foreground
masks), as Chefer et al.'s benchmark ships it: one MATLAB v7.3 file, ``gtsegs_ijcv.mat``.

The file is HDF5 (needs ``h5py``). Its struct ``/value`` holds three ``(N, 1)`` cell arrays of
object references, one cell per image:

* ``/value/img``: a reference to the image, uint8 stored ``(3, W, H)`` (MATLAB's ``H x W x 3``
  with the dimensions reversed);
* ``/value/gt``: a reference to a ``1 x 1`` cell whose reference is the mask ``(W, H)``;
* ``/value/id``: a reference to a MATLAB char array (uint16 codes) naming the image, e.g.
  ``n02123045_1234``: the WordNet id (wnid) of its ImageNet synset, ``_``, its number.

Images and masks are read as Chefer et al.'s loader reads them; the class comes from ``id`` as
ConceptAttention's loader takes it. :class:`ImageNetSegmentation` reads one image at a time, so a
pass over the dataset holds one batch; :func:`write_imagenet_segmentation` writes a file in the
same layout (for tests and dry runs). Class names are offline: :func:`class_name` is a synset's
first WordNet lemma (timm's ImageNet lemma file, all 21k synsets), :func:`one_word` makes a
caption word of it.
"""
from __future__ import annotations

import functools
import re
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

WNID = re.compile(r"^n\d{8}$")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("ImageNet-Segmentation's gtsegs_ijcv.mat is MATLAB v7.3 (HDF5), read with h5py, "
                          "which is not installed: pip install h5py") from None
    return h5py


# ----------------------------------------------------------------------------- reading
def _image(f, i: int) -> np.ndarray:
    """Image ``i`` as uint8 ``(3, H, W)`` (a grey image gets three equal channels); ``ValueError``
    for another type or channel count."""
    img = np.asarray(f[f["/value/img"][i, 0]])
    if img.dtype != np.uint8:
        raise ValueError(f"image {i} is {img.dtype}; ImageNet-Segmentation's images are uint8")
    if img.ndim == 2:                       # MATLAB H x W
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image {i} has shape {img.shape} (stored (C, W, H)); expected 1 (grey) or 3 "
                         "(RGB) channels")
    img = img.transpose(0, 2, 1)            # (C, W, H) -> (C, H, W)
    return np.repeat(img, 3, 0) if img.shape[0] == 1 else img


def _mask(f, i: int) -> np.ndarray:
    """Mask ``i`` as bool ``(H, W)``, nonzero = foreground."""
    cell = f[f["/value/gt"][i, 0]]
    m = np.asarray(f[cell[0, 0]])
    if m.ndim != 2:
        raise ValueError(f"mask {i} has shape {m.shape}; expected a 2-D mask")
    return m.T > 0


def _id(f, i: int) -> str:
    """Image ``i``'s id string (a MATLAB char array of uint16 codes)."""
    return "".join(map(chr, np.asarray(f[f["/value/id"][i, 0]]).ravel())).strip()


def wnid_of(image_id: str) -> str:
    """The WordNet id of an image id: ``"n02123045_1234"`` -> ``"n02123045"``."""
    wnid = image_id.split("_")[0]
    if not WNID.match(wnid):
        raise ValueError(f"{image_id!r} does not start with a WordNet id (n + 8 digits)")
    return wnid


class ImageNetSegmentation:
    """``gtsegs_ijcv.mat`` read one image at a time: memory holds one batch, not the dataset.

    path: the file; size: images and masks are resized to ``size x size`` (images bilinear,
    masks nearest), as FLUX takes them. ``len(data)`` images; ``data.batch(indices)`` reads some;
    ``data.batches(batch_size)`` iterates over them; ``data.ids`` / ``data.wnids`` are the
    per-image ids and WordNet ids (read on first use; a few KB). Needs ``h5py``.
    """

    def __init__(self, path, size: int = 512):
        h5py = _h5py()
        self.path, self.size = path, int(size)
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        from pathlib import Path
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file (ImageNet-Segmentation's gtsegs_ijcv.mat)")
        if not h5py.is_hdf5(path):
            raise ValueError(f"{path} is not an HDF5 file: not ImageNet-Segmentation's gtsegs_ijcv.mat "
                             "(MATLAB v7.3)")
        with h5py.File(path, "r") as f:
            missing = [k for k in ("/value/img", "/value/gt") if k not in f]
            if missing:
                raise ValueError(f"{path} has no {', '.join(missing)}: not ImageNet-Segmentation's "
                                 "gtsegs_ijcv.mat")
            counts = {k: len(f[f"/value/{k}"]) for k in ("img", "gt", "id") if f"/value/{k}" in f}
            if len(set(counts.values())) > 1:
                raise ValueError(f"{path} holds {counts} entries: every image needs one mask (and one id)")
            self.n = counts["img"]
        self._ids = None

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> list[str]:
        """Each image's id, e.g. ``"n02123045_1234"``."""
        if self._ids is None:
            with _h5py().File(self.path, "r") as f:
                if "/value/id" not in f:
                    raise ValueError(f"{self.path} has no /value/id: its images carry no class")
                self._ids = [_id(f, i) for i in range(self.n)]
        return self._ids

    @property
    def wnids(self) -> list[str]:
        """Each image's WordNet id (its ImageNet synset), e.g. ``"n02123045"``."""
        return [wnid_of(s) for s in self.ids]

    def _resized(self, f, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = _image(f, i), _mask(f, i)
        if mask.shape != img.shape[1:]:
            raise ValueError(f"{self.path}: mask {i} is {mask.shape}, its image {img.shape[1:]} (H, W)")
        x = torch.from_numpy(np.ascontiguousarray(img)).float()[None] / 255
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
        return x, F.interpolate(m, size=(self.size, self.size), mode="nearest")[0, 0] > 0.5

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, size, size)`` float32 in [0, 1] and masks ``(B, size, size)`` bool."""
        with _h5py().File(self.path, "r") as f:
            return self._batch(f, indices)

    def _batch(self, f, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.n]
        if not indices:
            raise ValueError("no indices: a batch needs at least one image")
        if bad:
            raise ValueError(f"indices {bad[:5]} are outside [0, {self.n})")
        pairs = [self._resized(f, i) for i in indices]
        return torch.stack([x for x, _ in pairs]), torch.stack([m for _, m in pairs])

    def batches(self, batch_size: int = 1, indices: Sequence[int] | None = None
                ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """``(indices, images, masks)`` for consecutive batches of ``indices`` (default all)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        indices = list(range(self.n)) if indices is None else [int(i) for i in indices]
        with _h5py().File(self.path, "r") as f:
            for s in range(0, len(indices), batch_size):
                chunk = indices[s:s + batch_size]
                yield (chunk, *self._batch(f, chunk))


def imagenet_segmentation_size(path) -> int:
    """The number of images in ImageNet-Segmentation's ``gtsegs_ijcv.mat`` (needs ``h5py``)."""
    return len(ImageNetSegmentation(path))


def load_imagenet_segmentation(path, n: int | None = None, size: int = 512, indices=None):
    """``(images (N, 3, size, size) in [0, 1], masks (N, size, size) bool)`` of the first ``n``
    images (default all) or of the images ``indices``, all in memory at once: 3 MiB per image at
    512 x 512, 13.4 GB for the whole dataset. Iterate :meth:`ImageNetSegmentation.batches`
    instead for a pass over many images."""
    data = ImageNetSegmentation(path, size)
    if indices is None:
        indices = range(len(data) if n is None else min(n, len(data)))
    return data.batch(indices)


# ----------------------------------------------------------------------------- writing
_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: chains_lite HDF5 schema 1.00 ."


def _matlab(ds, cls: str, **attrs):
    ds.attrs["MATLAB_class"] = np.bytes_(cls)
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def _as_uint8_image(img) -> np.ndarray:
    """``(3, H, W)`` uint8 from a uint8 array or a float one in [0, 1]."""
    a = img.detach().cpu().numpy() if torch.is_tensor(img) else np.asarray(img)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"each image must be (3, H, W), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return a


def write_imagenet_segmentation(path, images, masks, ids: Sequence[str | int] | None = None) -> None:
    """Write images and masks as a ``gtsegs_ijcv.mat`` that the readers of the real file read.

    images: ``(N, 3, H, W)`` or a list of ``(3, H_i, W_i)`` (uint8, or float in [0, 1]);
    masks: ``(N, H, W)`` or a list of ``(H_i, W_i)`` (nonzero = foreground, stored uint8);
    ids: one per image, an image id such as ``"n02123045_1234"`` or a WordNet id, or an int, an
    ImageNet-1k class index (written as ``"<its wnid>_<image number>"``; needs timm). Without
    ``ids`` the file has no ``/value/id``. MATLAB v7.3 layout: a 512-byte MATLAB header, the
    objects under ``/#refs#``, and ``/value/{img,gt,id}`` as ``(N, 1)`` cells of references (see
    the module docstring); ``MATLAB_class`` attributes as MATLAB writes them.
    """
    h5py = _h5py()
    n = len(images)
    if len(masks) != n or (ids is not None and len(ids) != n):
        raise ValueError(f"images, masks and ids must have one entry per image; got {n}, {len(masks)}"
                         f"{'' if ids is None else f' and {len(ids)}'}")
    names = None if ids is None else [_id_string(v, i) for i, v in enumerate(ids)]
    ref = h5py.special_dtype(ref=h5py.Reference)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs, count = f.create_group("#refs#"), iter(range(10 ** 9))

        def obj(data, cls, dtype=None, **attrs):
            return _matlab(refs.create_dataset(f"o{next(count)}", data=data, dtype=dtype), cls, **attrs).ref

        value = f.create_group("value")
        value.attrs["MATLAB_class"] = np.bytes_("struct")
        img_refs, gt_refs = np.empty((n, 1), dtype=object), np.empty((n, 1), dtype=object)
        for i in range(n):
            img = _as_uint8_image(images[i])
            m = masks[i].detach().cpu().numpy() if torch.is_tensor(masks[i]) else np.asarray(masks[i])
            if m.shape != img.shape[1:]:
                raise ValueError(f"mask {i} is {m.shape}, its image {img.shape[1:]}")
            img_refs[i, 0] = obj(img.transpose(0, 2, 1), "uint8")                  # (3, W, H)
            inner = np.array([[obj((m.T != 0).astype(np.uint8), "uint8")]], dtype=object)
            gt_refs[i, 0] = obj(inner, "cell", dtype=ref)                           # a 1 x 1 cell
        _matlab(value.create_dataset("img", data=img_refs, dtype=ref), "cell")
        _matlab(value.create_dataset("gt", data=gt_refs, dtype=ref), "cell")
        if names is not None:
            id_refs = np.empty((n, 1), dtype=object)
            for i, s in enumerate(names):
                codes = np.array([[ord(c)] for c in s], dtype=np.uint16)            # 1 x L char -> (L, 1)
                id_refs[i, 0] = obj(codes, "char", MATLAB_int_decode=np.int32(2))
            _matlab(value.create_dataset("id", data=id_refs, dtype=ref), "cell")
    with open(path, "r+b") as fh:                     # the MATLAB header in the userblock
        fh.write(_HEADER.ljust(116) + bytes(8) + b"\x00\x02IM")


def _id_string(v, i: int) -> str:
    """An image id for the file: kept if it is one, ``"<wnid>_<i+1>"`` for a wnid or a 1k index."""
    if isinstance(v, (int, np.integer)):
        v = imagenet_wnid(int(v))
    wnid_of(str(v))                                    # validates
    return str(v) if "_" in str(v) else f"{v}_{i + 1}"


# ----------------------------------------------------------------------------- class names
@functools.lru_cache(maxsize=1)
def _imagenet_info():
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        raise ImportError("ImageNet class names come from timm's offline synset files: pip install timm") from None
    return ImageNetInfo("imagenet-1k")


def imagenet_wnid(index: int) -> str:
    """The WordNet id of ImageNet-1k class ``index`` (timm's order: sorted wnids), e.g. 0 -> n01440764."""
    info = _imagenet_info()
    if not 0 <= int(index) < info.num_classes():
        raise ValueError(f"ImageNet-1k index {index} is outside [0, {info.num_classes()})")
    return info.index_to_label_name(int(index))


def imagenet_index(wnid: str) -> int | None:
    """The ImageNet-1k class index of a WordNet id, ``None`` for the synsets outside ImageNet-1k
    (most of ImageNet-Segmentation's 445: it was drawn from the whole of ImageNet)."""
    names = _imagenet_info().label_names()
    return names.index(wnid) if wnid in names else None


def class_name(synset: str | int) -> str:
    """The first WordNet lemma of a synset (a wnid, or an ImageNet-1k index), e.g. 281 -> "tabby".

    This is the English name ConceptAttention gives each image (``synset.lemmas()[0]`` in NLTK's
    WordNet); here it is read from timm's copy of the ImageNet lemma list, offline."""
    info = _imagenet_info()
    wnid = imagenet_wnid(synset) if isinstance(synset, (int, np.integer)) else wnid_of(synset)
    try:
        lemmas = info.label_name_to_description(wnid)
    except KeyError:
        raise ValueError(f"{wnid} is not an ImageNet synset") from None
    return lemmas.split(",")[0].strip()


def one_word(name: str, names: dict[str, str] | None = None) -> str:
    """A one-word caption word for a class name: ``names[name]`` when given (e.g. ConceptAttention's
    hand-made map, the ``"categories"`` of its ``imagenet_class_map.json``), else the name's last
    word (the head noun of most lemmas: "giant schnauzer" -> "schnauzer", "frosted bat" -> "bat")."""
    if names is not None:
        if name not in names:
            raise ValueError(f"the class name {name!r} is not in the given names map")
        return names[name]
    return name.split()[-1]


def class_words(wnids: Sequence[str], names: dict[str, str] | None = None) -> list[str]:
    """One caption word per image from its WordNet id: :func:`one_word` of :func:`class_name`."""
    words = {w: one_word(class_name(w), names) for w in dict.fromkeys(wnids)}
    return [words[w] for w in wnids]


def image_folder_files(path, n_classes: int | None = None) -> tuple[list[tuple], list[str]]:
    """The images of an ImageFolder-layout folder (``root/<class>/<image>``) without reading them:
    ``([(file, label), ...], class_folders)``, labels in sorted class-folder order. ``n_classes``:
    the number of class folders expected (a ``ValueError`` otherwise)."""
    from pathlib import Path
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder (an ImageFolder layout: root/<class>/<image>)")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if n_classes is not None and len(classes) != n_classes:
        raise ValueError(f"{path} should hold {n_classes} class folders, found {len(classes)}")
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((path / c).iterdir()) if f.is_file()]
    return files, classes


def image_folder(path, n: int, seed: int, loaded, n_classes: int | None = None):
    """At most ``n`` images drawn with ``seed`` from an ImageFolder-layout folder
    (``root/<class>/<image>``; labels in sorted class-folder order), preprocessed by the model's
    own transform: ``min(n, images in the folder)`` of them (a chapter asks for "up to 5,000";
    a benchmark caps its ``--n-images`` first and records the count).

    ``n_classes``: the number of class folders expected (a ``ValueError`` otherwise); an empty
    folder is a ``ValueError``. Returns ``(x, labels, class_folders)``.
    """
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    files, classes = image_folder_files(path, n_classes)
    if n < 1 or not files:
        raise ValueError(f"asked for {n} images from {path}, which holds {len(files)}: need n >= 1 and an image")
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n]
    tf = loaded.preprocess or create_transform(**resolve_data_config({}, model=loaded.model))
    x = torch.stack([tf(Image.open(files[j][0]).convert("RGB")) for j in pick.tolist()])
    return x, torch.tensor([files[j][1] for j in pick.tolist()]), classes


IMAGENET_CLASSES = 1000


def imagenet_folder(path, n: int, seed: int, loaded):
    """:func:`image_folder` on an ImageNet validation folder (``val/<wnid>/*.JPEG``, 1000 classes in
    sorted wnid order: the ImageNet-1k index of timm classifiers)."""
    return image_folder(path, n, seed, loaded, n_classes=IMAGENET_CLASSES)


class CocoStuff:
    """COCO-Stuff images with coarse class maps, read one item at a time (memory stays flat).

    root: a folder with ``val2017/<id>.jpg`` and ``annotation_val2017/<id>.png`` (the stuffthingmaps:
    fine labels, 255 = unlabelled); file_list: a text file of image ids, one per line (e.g. the
    curated COCO-Stuff-27 validation list of STEGO and DiffSeg); fine_to_coarse: a JSON file
    ``{fine label: coarse label}`` (fine labels it lacks become -1 = ignored). Item ``i`` is the
    centre square of image ``i`` resized to ``size`` (bilinear) and its label map (nearest).
    """

    def __init__(self, root, file_list, fine_to_coarse, size: int = 512):
        import json
        from pathlib import Path
        self.root, self.size = Path(root), int(size)
        self.ids = [x.strip() for x in Path(file_list).read_text().splitlines() if x.strip()]
        if not self.ids:
            raise ValueError(f"{file_list} lists no image ids (one per line)")
        mapping = json.loads(Path(fine_to_coarse).read_text())
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"{fine_to_coarse} must hold a JSON object {{fine label: coarse label}}, "
                             f"got {type(mapping).__name__}" + (" (empty)" if not mapping else ""))
        self.lut = np.full(256, -1, dtype=np.int64)
        for fine, coarse in mapping.items():
            try:
                fine_i, coarse_i = int(fine), int(coarse)
            except (TypeError, ValueError):
                raise ValueError(f"{fine_to_coarse}: {fine!r}: {coarse!r} is not a pair of integer labels") from None
            if not 0 <= fine_i < 256:
                raise ValueError(f"{fine_to_coarse}: fine label {fine} is outside [0, 256)")
            if coarse_i < 0:
                raise ValueError(f"{fine_to_coarse}: coarse label {coarse} of fine label {fine} is negative")
            self.lut[fine_i] = coarse_i
        self.n_classes = int(self.lut.max()) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, size, size)`` in [0, 1] and class maps ``(B, size, size)`` int64."""
        from PIL import Image
        images, labels = [], []
        for i in indices:
            img = Image.open(self.root / "val2017" / f"{self.ids[i]}.jpg").convert("RGB")
            lab = Image.open(self.root / "annotation_val2017" / f"{self.ids[i]}.png")
            if lab.mode not in ("L", "P", "RGB"):
                raise ValueError(f"{self.ids[i]}: label map of mode {lab.mode!r}; COCO-Stuff's are 8-bit "
                                 "(labels 0..255)")
            if lab.size != img.size:
                raise ValueError(f"{self.ids[i]}: label map {lab.size} and image {img.size} differ in size")
            s = min(img.size)
            x, y = (img.width - s) // 2, (img.height - s) // 2
            img = img.crop((x, y, x + s, y + s)).resize((self.size, self.size), Image.BILINEAR)
            lab = np.asarray(lab.crop((x, y, x + s, y + s)).resize((self.size, self.size), Image.NEAREST))
            lab = lab[..., 0] if lab.ndim == 3 else lab
            images.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1))
            labels.append(torch.from_numpy(self.lut[lab]))
        return torch.stack(images), torch.stack(labels)
