"""The skeleton every chapter benchmark (``benchmarks/segmentation.py``, ``masking.py``, ``sag.py``,
``diffseg.py``) shares, so that each script is its own arguments, data and table only:

    ap = cli.parser(__doc__)                       # --mode, --seed, --out, --run-dir
    ap.add_argument(...)                           # the benchmark's own
    args = ap.parse_args(argv)
    cli.at_least_one(ap, args, "n_images", ...)    # every check before any work (ap.error exits)
    out_path = cli.claim(ap, args)                 # --out must not exist yet
    cli.preflight(ap, args, "sd15", data={...})    # full mode: GPU, packages, hub, data paths
    config = dict(..., identity=cli.run_identity(loaded, {"--data": args.data}))  # weights and files
    records = cli.run(work, n, args, config, batch=..., desc=...)   # resumable, data-parallel
    if records is None: return                     # not the main process
    ... the table ...
    cli.write(out_path, result)                    # result carries config["identity"]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .. import zoo
from . import results, runner

#: What full mode's preflight tells a user to do instead.
FULL_MODE_FIX = "run lite mode with --mode lite, or set HF_HUB_OFFLINE=1 with the weights cached"


def parser(doc: str, items: str = "images") -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: ``--mode``, ``--seed``, ``--out``
    (the JSON, never overwritten) and ``--run-dir`` (the per-``items`` records, for resuming)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["lite", "full"], default="lite")
    ap.add_argument("--seed", type=_seed, default=0, help="the data stream (lite) and the noise (an int >= 0)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here (never overwritten)")
    ap.add_argument("--run-dir", type=Path, default=None,
                    help=f"the run's per-{items[:-1]} records, for resuming (default: --out with .run; "
                         "without either, a temporary folder)")
    return ap


def _seed(text: str) -> int:
    """``--seed``'s type: an int >= 0 (item seeds are derived from it, :func:`chains_lite.core.seeding.item_seed`)."""
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {v}")
    return v


def at_least_one(ap: argparse.ArgumentParser, args, *names: str) -> None:
    """``ap.error`` unless each named argument is ``None`` (its default applies) or ``>= 1``."""
    for name in names:
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def claim(ap: argparse.ArgumentParser, args) -> Path | None:
    """The output check before any work (:func:`chains_lite.experiments.runner.claim_outputs`):
    ``--out`` as a ``Path`` (``None`` without one), or ``ap.error``."""
    try:
        return runner.claim_outputs(args.out, args.run_dir)
    except (ValueError, FileExistsError) as e:
        ap.error(str(e))


def preflight(ap: argparse.ArgumentParser, args, model: str, data: dict | None = None, packages=()) -> None:
    """In full mode, :func:`chains_lite.zoo.preflight` of ``model`` (``ap.error`` naming the fix)."""
    if args.mode != "full":
        return
    try:
        zoo.preflight(model, data=data, packages=list(packages), fix=FULL_MODE_FIX)
    except zoo.FullModeUnavailable as e:
        ap.error(str(e))


def weights_identity(loaded) -> str:
    """What identifies the weights of a :class:`~chains_lite.zoo.Loaded`: ``"random"`` for a dry
    run's random weights (``CHAINS_FULL_WEIGHTS=random``), the checkpoint's ``"sha256:..."`` for a
    lite model, the hub id for a full one. ``ValueError`` if it carries none of these."""
    if loaded.extra.get("weights") == "random":
        return "random"
    for key in ("checkpoint", "hub_id"):
        if loaded.extra.get(key):
            return loaded.extra[key]
    raise ValueError(f"{loaded.name}: its weights carry no identity (no checkpoint digest, hub id "
                     "or random weights in loaded.extra)")


def file_identity(path) -> dict:
    """What identifies a data file or folder: its absolute path, size in bytes and modification
    time (ns); for a folder, its file count, total size and latest modification time over every
    file below it. ``ValueError`` if ``path`` does not exist."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not p.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    files = size = mtime = 0
    for folder, _, names in os.walk(p):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            files, size, mtime = files + 1, size + st.st_size, max(mtime, st.st_mtime_ns)
    return {"path": str(p.resolve()), "files": files, "bytes": size, "mtime_ns": mtime}


def run_identity(loaded, files: dict | None = None, **models) -> dict:
    """What identifies a run beyond its arguments, for its ``config`` and its JSON:
    ``{"weights": ..., "files": {flag: ...}}`` (:func:`weights_identity` of ``loaded``, and of each
    further model in ``models`` under its own key; :func:`file_identity` of each path in ``files``
    that is not ``None``). A rerun with other weights or changed data is then refused by the
    runner, and a dry run's JSON says ``"weights": "random"``."""
    out = {"weights": weights_identity(loaded)}
    out.update({f"{k}_weights": weights_identity(m) for k, m in models.items()})
    out["files"] = {flag: file_identity(path) for flag, path in (files or {}).items() if path is not None}
    return out


def run(work, n: int, args, config: dict, *, batch: int, desc: str) -> list[dict] | None:
    """``work`` over ``n`` items through :func:`chains_lite.experiments.runner.run`, its records kept
    in ``--run-dir`` (default beside ``--out``) or, without either, in a temporary folder.
    Returns the records on the main process, ``None`` on the others."""
    with tempfile.TemporaryDirectory() as tmp:
        return runner.run(work, n, runner.run_dir(args.out, args.run_dir) or tmp, config, batch=batch, desc=desc)


def write(out_path: Path | None, result: dict) -> None:
    """Write ``result`` to ``out_path`` (when given) and say where."""
    if out_path:
        print(f"wrote {results.write_json(out_path, result)}")
