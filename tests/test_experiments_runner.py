"""The dataset runner: sharded over processes (gloo on the CPU) with the same records as one
process, resumable after a crash or a torn line, and never mixing two configurations."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chains_lite.core.seeding import item_seed
from chains_lite.experiments import runner

ROOT = Path(__file__).resolve().parent.parent

# A cheap work function in a script, for runs in separate processes: each record says which chunk
# (batch) computed it and carries the item's seed.
SCRIPT = """
import json, sys
from chains_lite.core.seeding import item_seed
from chains_lite.experiments import runner
n, batch, out_dirs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def work(indices):
    return [{"i": i, "chunk": indices, "seed": item_seed(7, i)} for i in indices]
for out_dir in out_dirs:
    got = runner.run(work, n, out_dir, {"work": "cheap", "seed": 7}, batch=batch, progress=False)
    print("RECORDS " + json.dumps(got))
"""


def cheap(indices, calls=None, fail_at=None):
    if calls is not None:
        calls.append(list(indices))
    if fail_at in indices:
        raise RuntimeError(f"crash at {fail_at}")
    return [{"i": i, "chunk": list(indices), "seed": item_seed(7, i)} for i in indices]


def expected(n, batch):
    return [{"i": i, "chunk": list(range(i - i % batch, min(i - i % batch + batch, n))),
             "seed": item_seed(7, i)} for i in range(n)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv, nproc, timeout=120):
    """Run ``python argv`` as ``nproc`` processes of one gloo group, with the environment
    ``torchrun`` / ``accelerate launch`` gives them; returns each one's (returncode, stdout,
    stderr). If one fails the others are killed (as torchrun does), not left at a barrier."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc))
    procs = [subprocess.Popen([sys.executable, *argv], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(nproc)]
    t0 = time.time()
    while any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs) or time.time() - t0 > timeout:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    return [(p.returncode, *p.communicate()) for p in procs]


def records_of(stdout):
    return [json.loads(line[8:]) for line in stdout.splitlines() if line.startswith("RECORDS ")]


def test_one_process_runs_every_chunk_once_and_a_rerun_computes_nothing(tmp_path):
    calls = []
    got = runner.run(lambda idx: cheap(idx, calls), 10, tmp_path / "r", {"seed": 7}, batch=4,
                     progress=False)
    assert got == expected(10, 4)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    lines = (tmp_path / "r" / "rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(10))
    calls.clear()
    assert runner.run(lambda idx: cheap(idx, calls), 10, tmp_path / "r", {"seed": 7}, batch=4,
                      progress=False) == got
    assert calls == []


def test_a_crash_midway_then_a_rerun_gives_the_uninterrupted_result(tmp_path):
    whole = runner.run(cheap, 11, tmp_path / "whole", {"seed": 7}, batch=3, progress=False)
    with pytest.raises(RuntimeError, match="crash at 7"):
        runner.run(lambda idx: cheap(idx, fail_at=7), 11, tmp_path / "crash", {"seed": 7}, batch=3,
                   progress=False)
    done = [json.loads(line)["index"] for line in (tmp_path / "crash" / "rank0.jsonl").open()]
    assert done == [0, 1, 2, 3, 4, 5]  # the chunks before the crash were kept
    calls = []
    resumed = runner.run(lambda idx: cheap(idx, calls), 11, tmp_path / "crash", {"seed": 7}, batch=3,
                         progress=False)
    assert resumed == whole and calls == [[6, 7, 8], [9, 10]]


def test_another_config_n_or_batch_into_the_same_folder_is_refused(tmp_path):
    config = {"seed": 7, "model": "a", "layers": (0, 1)}
    runner.run(cheap, 5, tmp_path, config, batch=2, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=r"model: 'a' -> 'b'"):
        runner.run(cheap, 5, tmp_path, dict(config, model="b"), batch=2, progress=False)
    with pytest.raises(ValueError, match=r"layers: \[0, 1\] -> \[0, 2\]"):
        runner.run(cheap, 5, tmp_path, dict(config, layers=[0, 2]), batch=2, progress=False)
    with pytest.raises(ValueError, match=r"n: 5 -> 6"):
        runner.run(cheap, 6, tmp_path, config, batch=2, progress=False)
    with pytest.raises(ValueError, match=r"batch: 2 -> 3"):
        runner.run(cheap, 5, tmp_path, config, batch=3, progress=False)
    with pytest.raises(ValueError, match=r"extra: '<missing>' -> 1"):
        runner.run(cheap, 5, tmp_path, dict(config, extra=1), batch=2, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # the list JSON stores is the same config as the tuple it came from
    again = runner.run(cheap, 5, tmp_path, dict(config, layers=[0, 1]), batch=2, progress=False)
    assert again == expected(5, 2)


def test_a_torn_last_line_is_cut_off_and_recomputed(tmp_path):
    whole = runner.run(cheap, 6, tmp_path, {"seed": 7}, batch=2, progress=False)
    f = tmp_path / "rank0.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[:4]) + lines[4][:17])  # item 4's line torn, item 5's lost
    calls = []
    assert runner.run(lambda idx: cheap(idx, calls), 6, tmp_path, {"seed": 7}, batch=2,
                      progress=False) == whole
    assert calls == [[4, 5]]
    assert [json.loads(line)["index"] for line in f.open()] == [0, 1, 2, 3, 4, 5]
    # damage anywhere but the last line is not a crash: refused, not skipped
    f.write_text("".join(lines[:2]) + '{"index": 2, "rec\n' + "".join(lines[3:]))
    with pytest.raises(ValueError, match="line 3"):
        runner.run(cheap, 6, tmp_path, {"seed": 7}, batch=2, progress=False)


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path):
    import fcntl
    runner.run(cheap, 4, tmp_path, {}, batch=2, progress=False)
    with open(tmp_path / "rank0.jsonl", "ab") as other:  # another run holds rank 0's file
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another run"):
            runner.run(cheap, 4, tmp_path, {}, batch=2, progress=False)
    assert runner.run(cheap, 4, tmp_path, {}, batch=2, progress=False) == expected(4, 2)


def test_work_must_return_one_dict_per_index(tmp_path):
    with pytest.raises(ValueError, match="list of 2 dicts"):
        runner.run(lambda idx: [{}], 4, tmp_path, {}, batch=2, progress=False)
    with pytest.raises(ValueError, match="batch"):
        runner.run(cheap, 4, tmp_path / "b", {}, batch=0)


def test_two_processes_give_the_records_of_one_and_resume_a_one_process_crash(tmp_path):
    script = tmp_path / "work.py"
    script.write_text(SCRIPT)
    one = runner.run(cheap, 13, tmp_path / "one", {"work": "cheap", "seed": 7}, batch=2, progress=False)
    # one process crashes at item 5 into "mixed"; then two processes run "two" afresh and finish "mixed"
    with pytest.raises(RuntimeError):
        runner.run(lambda idx: cheap(idx, fail_at=5), 13, tmp_path / "mixed", {"work": "cheap", "seed": 7},
                   batch=2, progress=False)
    (r0, out0, err0), (r1, out1, err1) = launch([str(script), "13", "2", str(tmp_path / "two"),
                                                 str(tmp_path / "mixed")], 2)
    assert r0 == 0 and r1 == 0, err0 + err1
    assert records_of(out0) == [one, one] and one == expected(13, 2)
    assert records_of(out1) == [None, None]
    # chunks dealt round-robin: rank 0 ran chunks 0, 2, 4, 6; rank 1 chunks 1, 3, 5
    ranks = [[json.loads(line)["index"] for line in (tmp_path / "two" / f"rank{r}.jsonl").open()]
             for r in range(2)]
    assert ranks == [[0, 1, 4, 5, 8, 9, 12], [2, 3, 6, 7, 10, 11]]
    # the resumed run dealt only the chunks left (items 4 to 12) and wrote each item once
    ranks = [[json.loads(line)["index"] for line in (tmp_path / "mixed" / f"rank{r}.jsonl").open()]
             for r in range(2)]
    assert ranks == [[0, 1, 2, 3, 4, 5, 8, 9, 12], [6, 7, 10, 11]]


def _segmentation():
    path = ROOT / "benchmarks" / "segmentation.py"
    spec = importlib.util.spec_from_file_location("bench_segmentation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEG_ARGS = ["--n-images", "4", "--batch-size", "2", "--methods", "outgoing_2:uniform,row_select:uniform",
            "--steps", "1", "--size", "32"]


def test_segmentation_benchmark_on_two_processes_writes_the_json_of_one(tmp_path):
    # the launched processes run one thread each (OMP_NUM_THREADS=1, as accelerate gives 2 processes
    # on 2 cores): the same here, since other thread counts change float sums in the last digits
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _segmentation().main(SEG_ARGS + ["--out", str(tmp_path / "one.json")])
    finally:
        torch.set_num_threads(threads)
    script = str(ROOT / "benchmarks" / "segmentation.py")
    out = launch([script, *SEG_ARGS, "--out", str(tmp_path / "two.json")],
                 2, timeout=300)
    assert all(r == 0 for r, _, _ in out), out[0][2] + out[1][2]
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert one.pop("time_s") > 0 and two.pop("time_s") > 0
    assert one == two and set(one["results"]) == {"outgoing_2:uniform", "row_select:uniform"}
    files = sorted(p.name for p in (tmp_path / "two.run").iterdir())
    assert files == ["rank0.jsonl", "rank1.jsonl", "run.json"]
    # the same command again: refused before any work, the result kept
    with pytest.raises(SystemExit):
        _segmentation().main(SEG_ARGS + ["--out", str(tmp_path / "one.json")])


def test_masking_benchmark_killed_midway_then_rerun_writes_the_uninterrupted_json(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_masking", ROOT / "benchmarks" / "masking.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--n-images", "6", "--batch-size", "2", "--strategies", "random", "cls_row",
            "--fractions", "0", "0.3", "0.9"]
    bench.main(args + ["--out", str(tmp_path / "whole.json")])
    records, calls = bench.masking_records, []

    def crash_on_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return records(*a, **k)
    monkeypatch.setattr(bench, "masking_records", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        bench.main(args + ["--out", str(tmp_path / "resumed.json")])
    assert not (tmp_path / "resumed.json").exists()
    assert len((tmp_path / "resumed.run" / "rank0.jsonl").read_text().splitlines()) == 2
    bench.main(args + ["--out", str(tmp_path / "resumed.json")])
    assert len(calls) == 4  # the rerun computed the two batches left, not the first again
    whole, resumed = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("whole", "resumed"))
    assert whole.pop("seconds") >= 0 and resumed.pop("seconds") >= 0
    assert whole == resumed and whole["n_images"] == 6


def test_claim_outputs_refuses_an_existing_result_before_any_work(tmp_path):
    from chains_lite.experiments.runner import claim_outputs
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(FileExistsError):
        claim_outputs(tmp_path / "r.json")
    assert claim_outputs(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert claim_outputs() is None and claim_outputs(run_dir=tmp_path) is None


def test_a_start_that_failed_before_its_first_record_does_not_block_the_corrected_command(tmp_path):
    with pytest.raises(RuntimeError, match="crash at 0"):
        runner.run(lambda idx: cheap(idx, fail_at=0), 9, tmp_path, {"n_images": 9}, batch=3, progress=False)
    assert (tmp_path / "run.json").exists() and not runner.read_records(tmp_path, 9)
    assert runner.run(cheap, 4, tmp_path, {"n_images": 4}, batch=2, progress=False) == expected(4, 2)
    assert json.loads((tmp_path / "run.json").read_text()) == {"config": {"n_images": 4}, "n": 4, "batch": 2}
    # once a record is on disk, another configuration is refused again
    with pytest.raises(ValueError, match="n_images: 4 -> 9"):
        runner.run(cheap, 9, tmp_path, {"n_images": 9}, batch=3, progress=False)


def test_an_emptied_run_json_is_named(tmp_path):
    runner.run(cheap, 4, tmp_path / "done", {"seed": 7}, batch=2, progress=False)
    (tmp_path / "done" / "run.json").write_text("")
    with pytest.raises(ValueError, match=r"done/run.json is not a run's settings .*damaged"):
        runner.run(cheap, 4, tmp_path / "done", {"seed": 7}, batch=2, progress=False)
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "run.json").write_text("")     # no records: the run starts over
    assert runner.run(cheap, 4, tmp_path / "fresh", {"seed": 7}, batch=2, progress=False) == expected(4, 2)


def test_masking_full_caps_n_images_at_the_folder_before_any_work(tmp_path, monkeypatch):
    from chains_lite.zoo import dryrun
    monkeypatch.setenv("CHAINS_FULL_WEIGHTS", "random")
    env = dryrun.write_data(tmp_path / "data", n=2)
    spec = importlib.util.spec_from_file_location("bench_masking", ROOT / "benchmarks" / "masking.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--mode", "full", "--data", env["CHAINS_IMAGENET"], "--n-images", "5", "--strategies", "random",
                "--fractions", "0", "0.5", "--out", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n_images"] == 2 and len(r["strategies"]["random"]["curve"]) == 2
    with pytest.raises(SystemExit):   # a folder that is not ImageNet's: refused before the model loads
        monkeypatch.setattr(bench.zoo, "load", lambda *a, **k: pytest.fail("loaded before the check"))
        bench.main(["--mode", "full", "--data", str(tmp_path / "data" / "imagenette" / "val"),
                    "--out", str(tmp_path / "s.json")])
