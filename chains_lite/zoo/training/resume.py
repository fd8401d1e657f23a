"""The resumable state of a training run, in files under a size limit.

A state is a nested dict of tensors and plain values (the model's and the optimiser's state
dicts, generator states, the step, the losses so far). :func:`save_state` writes its tensors in
shards of at most ``limit`` bytes (``shard-STEP-I.pt``) and the rest, naming the shards, in
``state.pt``, which is replaced last and atomically: a run killed while saving leaves the previous
state readable. :func:`load_state` puts the dict back together.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

LIMIT = 15 * 2**20   # bytes per file (the repository's and the device machines' limit is 16 MB)
INDEX = "state.pt"


def _split(obj, tensors: dict, prefix: str = ""):
    """``obj`` with every tensor replaced by ``{"__tensor__": key}``; the tensors go into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {k: _split(v, tensors, f"{prefix}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_split(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    return obj


def _join(obj, tensors: dict):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_join(v, tensors) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def save_state(state: dict, folder, tag: str, limit: int = LIMIT) -> list[Path]:
    """Write ``state`` into ``folder`` (created) as shards of at most ``limit`` bytes of tensor
    data plus ``state.pt``; ``tag`` (e.g. the step) names this save's shards. Shards of earlier
    saves are removed once the new index is in place. Returns the files written.

    ``ValueError`` if one tensor alone is larger than ``limit``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    skeleton = _split(state, tensors)
    shards, size = [{}], 0
    for key, t in tensors.items():
        if _nbytes(t) > limit:
            raise ValueError(f"tensor {key} takes {_nbytes(t)} bytes, more than a file's limit of {limit}")
        if size + _nbytes(t) > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += _nbytes(t)
    names = [f"shard-{tag}-{i}.pt" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        torch.save(shard, folder / (name + ".tmp"))
        os.replace(folder / (name + ".tmp"), folder / name)
    torch.save({"shards": names, "state": skeleton}, folder / (INDEX + ".tmp"))
    os.replace(folder / (INDEX + ".tmp"), folder / INDEX)
    for old in folder.glob("shard-*.pt"):
        if old.name not in names:
            old.unlink()
    return [folder / n for n in names] + [folder / INDEX]


def load_state(folder) -> dict:
    """The state :func:`save_state` wrote into ``folder`` (tensors on the CPU);
    ``FileNotFoundError`` naming the folder if there is none."""
    folder = Path(folder)
    if not (folder / INDEX).exists():
        raise FileNotFoundError(f"no resumable state in {folder} (no {INDEX}): start the run without --resume")
    index = torch.load(folder / INDEX, weights_only=True)
    tensors = {}
    for name in index["shards"]:
        tensors.update(torch.load(folder / name, weights_only=True))
    return _join(index["state"], tensors)
