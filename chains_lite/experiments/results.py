"""Result files of the experiment runners: claimed before any work, written atomically, never replaced.

    out = results.prepare_out("runs/seg.json")   # before the run: refuses an existing file
    ...                                           # the run
    results.write_json(out, table)                # after it: temp file, then an atomic link

:func:`prepare_out` fails in a second, not after an hour of work, when the file exists, and
creates a missing folder. :func:`write_json` writes a temporary file in the same folder and links
it to the name only if the name is still free, so a crash leaves no half-written file and a
concurrent run that took the name first is never replaced: the result goes next to it instead.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path


def prepare_out(path) -> Path:
    """Check an output path before any work: ``FileExistsError`` if it exists (results are never
    overwritten), ``ValueError`` if it is a folder or its folder cannot be created or written;
    creates its missing parent folders."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the results")
    if path.exists():
        raise FileExistsError(f"{path} exists; pass another output path (results are never overwritten)")
    check_writable(path.parent)
    return path


def check_writable(folder) -> Path:
    """Create ``folder`` (and its parents) if missing and check that a file can be written in it
    (``ValueError`` naming it otherwise), before any work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"cannot write in {folder} ({e.strerror or e}); pass another output path") from None
    return folder


def _json_safe(obj):
    """``obj`` with every NaN or infinite float as ``None``: JSON has no NaN (a metric undefined on
    its data, e.g. a normalised curve of a clean accuracy of 0, is ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _free_name(path: Path) -> Path:
    """``path`` itself, or ``NAME.1.json``, ``NAME.2.json``, ... the first that does not exist."""
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}.{k}{path.suffix}")
    return candidate


def write_json(path, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and without replacing anything; NaN and
    infinite floats are written as ``null`` (JSON has no NaN).

    Returns the path written: ``path``, or, if another process created ``path`` after
    :func:`prepare_out`, the first free ``NAME.k.json`` beside it (a warning says so)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_json_safe(obj), f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        target = path
        while True:
            try:
                os.link(tmp, target)  # atomic, and fails if the name is taken
                break
            except FileExistsError:
                target = _free_name(path)
        if target != path:
            warnings.warn(f"{path} appeared while this run worked; its results went to {target}",
                          RuntimeWarning, stacklevel=2)
        return target
    finally:
        os.unlink(tmp)
