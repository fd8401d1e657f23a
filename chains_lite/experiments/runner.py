"""One resumable, data-parallel runner for the dataset benchmarks (segmentation, masking, SAG, DiffSeg).

    records = runner.run(work, n, "runs/seg.run", config, batch=32, desc="segmentation")

``work(indices) -> records`` computes one JSON-able dict per item index: the item's *sufficient
statistics* (confusion counts, an AP, correct or not per fraction), never a dataset average, so
that the metric computed from the merged records is the one a single process would compute.

* **Data-parallel**: under ``accelerate launch`` (or ``torchrun``, SLURM + ``accelerate launch``)
  the items are cut into chunks of ``batch`` consecutive indices, ``[0, batch)``, ``[batch,
  2 batch)``, ..., and the chunks still to do are dealt round-robin to the processes. A chunk
  holds the same items whatever the number of processes, so a model sees the same batches in a
  one- and a many-process run. Without a launcher it is one process.
* **Resumable**: process ``r`` appends each chunk's records to ``out_dir/rank{r}.jsonl`` as one
  line per item, ``{"index": i, "record": {...}}``, flushed and fsynced. A rerun of the same
  command reads every ``rank*.jsonl`` (from any number of processes before) and computes only
  the chunks with a missing item (the whole chunk, so its batch is the same; only the missing
  records are written). A torn last line after a crash is ignored, cut off and recomputed.
* **Never mixed**: ``out_dir/run.json`` holds the run's ``config`` with ``n`` and ``batch``; a
  rerun with anything different is refused (``ValueError`` naming the differences), unless no
  record has been written yet (a start that failed before its first item does not block the
  corrected command). Nothing in ``out_dir`` is rewritten or deleted except a torn last line and
  such a record-less ``run.json``. Each process locks its file: a
  second run into a folder that a live run writes is refused (``RuntimeError``).
* **Merged on the main process**: after a barrier, it reads all records back (so a fresh,
  a resumed and a many-process run return the same JSON-decoded records) and returns them in
  index order; the other processes return ``None``.

Randomness is the benchmark's job: derive each item's seed from its index with
:func:`chains_lite.core.seeding.item_seed` (never from a generator shared across items), so an item's result does not
depend on which process ran it or what ran before it. ``out_dir`` must be on a file system every
process sees (one node: any folder; a cluster: a shared one).

``accelerate`` is a dependency of the package, imported on the first :func:`state` call only.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from ..core.progress import progress_bar

SPEC = "run.json"


def state():
    """The ``accelerate.PartialState`` of this process (created on first use): ``process_index``,
    ``num_processes``, ``is_main_process``, ``device`` (this process's GPU under ``accelerate
    launch``; the CPU without CUDA or with ``accelerate launch --cpu``)."""
    from accelerate import PartialState
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") \
        or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _canonical(config: dict) -> dict:
    """``config`` as JSON would give it back (tuples become lists); ``TypeError`` if not JSON-able."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    return json.loads(json.dumps(config, sort_keys=True))


def _differences(old, new, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every (nested) key whose value differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k, "<missing>") != new.get(k, "<missing>"):
                out += _differences(old.get(k, "<missing>"), new.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _has_records(out_dir: Path) -> bool:
    """Whether any ``rank*.jsonl`` in ``out_dir`` holds a whole line (a record)."""
    return any(b"\n" in p.read_bytes() for p in out_dir.glob("rank*.jsonl"))


def _check_spec(out_dir: Path, spec: dict, take_over: bool = False) -> bool:
    """``True`` if ``out_dir`` holds the same spec, ``False`` if it holds none; ``ValueError`` if
    it holds another one (an unreadable one included). ``take_over``: a spec without any record
    (a start that failed before its first item) counts as none."""
    path = out_dir / SPEC
    if not path.exists():
        return False
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        if take_over and not _has_records(out_dir):
            return False
        raise ValueError(f"{path} is not a run's settings ({e}): the file is damaged. Delete {out_dir} "
                         "to start over.") from None
    if old != spec:
        if take_over and not _has_records(out_dir):
            return False
        raise ValueError(f"{out_dir} holds a run with another configuration ("
                         + "; ".join(_differences(old, spec)) + "): its records are not mixed with "
                         "this run's. Pass another output folder, or delete that one to start over.")
    return True


def _write_spec(out_dir: Path, spec: dict) -> None:
    """Create ``out_dir/run.json`` whole or not at all (a temporary file, then a link that fails
    if a concurrent run created it first; then :func:`_check_spec` decides), or replace one that
    has no records yet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{SPEC}.", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, out_dir / SPEC)
        except FileExistsError:
            if not _has_records(out_dir):  # a failed start's settings: replaced whole
                os.replace(tmp, out_dir / SPEC)
                return
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_records(out_dir, n: int) -> dict[int, dict]:
    """``{index: record}`` from every ``rank*.jsonl`` in ``out_dir`` (the first record of an index
    wins). A last line without its newline (a write torn by a crash) is skipped; any other line
    that is not a record of an index in ``[0, n)`` is a ``ValueError``."""
    out = {}
    for path in sorted(Path(out_dir).glob("rank*.jsonl")):
        data = path.read_bytes()
        lines = data.split(b"\n")[:-1]  # the part after the last newline is torn (or empty)
        for k, line in enumerate(lines):
            try:
                row = json.loads(line)
                i, rec = row["index"], row["record"]
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{path}, line {k + 1}: not a record ({e}); the file is damaged") from None
            if not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"{path}, line {k + 1}: index {i!r} is not in [0, {n})")
            out.setdefault(i, rec)
    return out


def _open_own(path: Path):
    """This process's records file, opened to append and locked against a second run into the same
    folder (``RuntimeError``), its torn last line (if any) cut off so that it cannot prefix the
    next record."""
    f = open(path, "ab")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RuntimeError(f"{path} is being written by another run; one run per folder at a time") from None
    except OSError:  # a file system without locks: go on unlocked
        pass
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return f


class _Progress:
    """Rank 0's bar over the whole run: items done by every process (new lines in each
    ``rank*.jsonl`` since the start), of ``n``; tqdm's rate gives the ETA."""

    def __init__(self, out_dir: Path, n: int, done: int, desc: str, enabled: bool):
        self.out_dir, self.enabled = out_dir, enabled
        self.offsets = {p: p.stat().st_size for p in out_dir.glob("rank*.jsonl")} if enabled else {}
        self.bar = progress_bar(total=n, initial=done, desc=desc or "items", unit="item", disable=not enabled)

    def update(self):
        if not self.enabled:
            return
        new = 0
        for p in self.out_dir.glob("rank*.jsonl"):
            with open(p, "rb") as f:
                f.seek(self.offsets.get(p, 0))
                chunk = f.read()
            self.offsets[p] = self.offsets.get(p, 0) + len(chunk)
            new += chunk.count(b"\n")
        self.bar.update(new)

    def close(self):
        self.bar.close()


def chunks(n: int, batch: int) -> list[list[int]]:
    """Items ``0..n-1`` cut into chunks of at most ``batch`` consecutive indices."""
    return [list(range(a, min(a + batch, n))) for a in range(0, n, batch)]


def _checked(chunk: list[int], got) -> list[dict]:
    if not isinstance(got, (list, tuple)) or len(got) != len(chunk) or not all(isinstance(r, dict) for r in got):
        raise ValueError(f"work({chunk}) must return a list of {len(chunk)} dicts, one "
                         f"per index, got {type(got).__name__} of length "
                         f"{len(got) if hasattr(got, '__len__') else '?'}")
    return list(got)


def run(work: Callable[[list[int]], list[dict]], n: int, out_dir=None, config: dict | None = None, *,
        batch: int = 1, desc: str = "", progress: bool = True) -> list[dict] | None:
    """Run ``work(indices: list[int]) -> list[dict]`` (one JSON-able record per index, same order)
    over items 0..n-1 in chunks of at most ``batch``, sharded over the processes of an
    ``accelerate launch`` (one process without it), resumable: records are appended to
    out_dir/rank{r}.jsonl as they are produced (flushed + fsync), a rerun skips indices already
    done, a different ``config`` into the same out_dir is refused (ValueError naming the
    difference). Returns all n records in index order on the main process, None on the others.

    ``config``: a JSON-able dict of everything that changes a record (model, data, seed, options);
    stored in ``out_dir/run.json`` with ``n`` and ``batch``. ``desc``: the progress bar's label;
    ``progress=False`` hides the bar. Every process must call ``run`` with the same arguments.

    ``out_dir=None``: the same chunks in this process, in memory (nothing written, nothing
    resumed): a notebook's run of a chapter's ``work``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if out_dir is None:
        records = []
        for chunk in progress_bar(chunks(n, batch), desc=desc or None, disable=not progress):
            records += _checked(chunk, work(chunk))
        return records
    if config is None:
        raise ValueError("a run into out_dir needs its config (everything that changes a record)")
    spec = {"config": _canonical(config), "n": n, "batch": batch}
    out_dir = Path(out_dir)
    st = state()
    rank, world = st.process_index, st.num_processes
    # every process checks before any barrier, so a refusal stops all of them, not only the main one
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; give a folder for the run's records")
    if not _check_spec(out_dir, spec, take_over=True) and st.is_main_process:
        _write_spec(out_dir, spec)
    st.wait_for_everyone()
    _check_spec(out_dir, spec)
    with _open_own(out_dir / f"rank{rank}.jsonl") as f:
        done = read_records(out_dir, n)
        st.wait_for_everyone()  # nobody appends before everyone has read what is done
        todo = [c for c in chunks(n, batch) if any(i not in done for i in c)]
        bar = _Progress(out_dir, n, len(done), desc, progress and st.is_main_process)
        try:
            for chunk in todo[rank::world]:
                got = _checked(chunk, work(chunk))
                # only the missing items of a chunk (a torn line) are written; the chunk is
                # computed whole so that its batch is the same as in an uninterrupted run
                lines = [json.dumps({"index": i, "record": r}) for i, r in zip(chunk, got) if i not in done]
                f.write("".join(line + "\n" for line in lines).encode())
                f.flush()
                os.fsync(f.fileno())
                bar.update()
            st.wait_for_everyone()
            bar.update()
        finally:
            bar.close()
    if not st.is_main_process:
        return None
    merged = read_records(out_dir, n)
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise RuntimeError(f"{len(missing)} items have no record in {out_dir} after the run "
                           f"(first: {missing[:5]}); rerun the command to compute them")
    return [merged[i] for i in range(n)]


def run_dir(out=None, run_dir=None) -> Path | None:
    """Where a benchmark keeps its run state: ``run_dir`` if given, else beside its result file
    ``out`` (``runs/seg.json`` -> ``runs/seg.run/``); ``None`` if neither is given."""
    if run_dir is not None:
        return Path(run_dir)
    return None if out is None else Path(out).with_suffix(".run")


def claim_outputs(out=None, run_dir=None) -> Path | None:
    """A benchmark's output check, before any work: the result file ``out`` must not exist
    (:func:`chains_lite.experiments.results.prepare_out`; ``FileExistsError``), the folders of
    ``out`` and of the records (:func:`run_dir`) must be writable, and a run of several processes
    needs ``out`` or ``run_dir`` for the folder they share (``ValueError``). Returns ``out`` as a
    ``Path`` (``None`` without one)."""
    from .results import check_writable, prepare_out
    out_path = prepare_out(out) if out else None
    if run_dir is None and out is None and state().num_processes > 1:
        raise ValueError("a run of several processes needs --out or --run-dir (the folder they share)")
    folder = Path(run_dir) if run_dir is not None else None if out is None else Path(out).with_suffix(".run")
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file; give a folder for the run's records")
        check_writable(folder)
    return out_path
