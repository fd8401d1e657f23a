"""The skeleton every chapter benchmark (``benchmarks/segmentation.py``, ``masking.py``, ``sag.py``,
``diffseg.py``) shares, so that each script is its own arguments, data and table only:

    ap = cli.parser(__doc__)                       # --mode, --seed, --out, --run-dir
    ap.add_argument(...)                           # the benchmark's own
    args = ap.parse_args(argv)
    cli.at_least_one(ap, args, "n_images", ...)    # every check before any work (ap.error exits)
    out_path = cli.claim(ap, args)                 # --out must not exist yet
    cli.preflight(ap, args, "sd15", data={...})    # full mode: GPU, packages, hub, data paths
    records = cli.run(work, n, args, config, batch=..., desc=...)   # resumable, data-parallel
    if records is None: return                     # not the main process
    ... the table ...
    cli.write(out_path, result)
"""
from __future__ import annotations

import argparse
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
    ap.add_argument("--seed", type=int, default=0, help="the data stream (lite) and the noise")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here (never overwritten)")
    ap.add_argument("--run-dir", type=Path, default=None,
                    help=f"the run's per-{items[:-1]} records, for resuming (default: --out with .run; "
                         "without either, a temporary folder)")
    return ap


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
