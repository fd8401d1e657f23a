"""Result files: claimed before work, written atomically, never replaced; the runners check every
argument and their output path before any work."""
import importlib.util
import json
from pathlib import Path

import pytest

from chains_lite.experiments import results

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_prepare_out_refuses_existing_files_and_folders_and_creates_parents(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('{"precious": 1}')
    with pytest.raises(FileExistsError, match="never overwritten"):
        results.prepare_out(f)
    with pytest.raises(ValueError, match="folder"):
        results.prepare_out(tmp_path)
    deep = tmp_path / "a" / "b" / "r.json"
    assert results.prepare_out(deep) == deep and deep.parent.is_dir() and not deep.exists()
    assert f.read_text() == '{"precious": 1}'


def test_write_json_is_atomic_and_never_replaces(tmp_path):
    out = results.prepare_out(tmp_path / "r.json")
    assert results.write_json(out, {"a": 1}) == out and json.loads(out.read_text()) == {"a": 1}
    # another run took the name after prepare_out: this one goes beside it, the first is kept
    with pytest.warns(RuntimeWarning, match="r.1.json"):
        second = results.write_json(out, {"a": 2})
    assert second == tmp_path / "r.1.json" and json.loads(second.read_text()) == {"a": 2}
    assert json.loads(out.read_text()) == {"a": 1}
    # a result that cannot be written leaves no file and no temporary behind
    with pytest.raises(TypeError):
        results.write_json(tmp_path / "bad.json", {"a": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.1.json", "r.json"]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_work(monkeypatch):
    """Any model load means the runner started working: fail the test."""
    from chains_lite import zoo

    def refuse(*a, **k):
        raise AssertionError("the runner started work before checking its arguments")
    monkeypatch.setattr(zoo, "load", refuse)


@pytest.mark.parametrize("argv", [["--n-images", "0"], ["--batch-size", "0"], ["--t", "0"],
                                  ["--methods", "outgoing_9"], ["--mode", "full"]])
def test_segmentation_runner_checks_arguments_before_work(argv, no_work, capsys):
    with pytest.raises(SystemExit) as e:
        _script("segmentation").main(argv)
    assert e.value.code == 2 and "error" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["segmentation", "masking"])
def test_runners_refuse_an_existing_out_before_work(name, tmp_path, no_work):
    f = tmp_path / "x.json"
    f.write_text('{"precious": 1}')
    with pytest.raises(SystemExit):
        _script(name).main(["--out", str(f)])
    assert f.read_text() == '{"precious": 1}'


@pytest.mark.parametrize("argv", [["--fractions", "0.5", "0.2"], ["--fractions", "0.0", "1.5"],
                                  ["--n-images", "0"], ["--mode", "full"]])
def test_masking_runner_checks_arguments_before_work(argv, no_work, capsys):
    with pytest.raises(SystemExit) as e:
        _script("masking").main(argv)
    assert e.value.code == 2 and "error" in capsys.readouterr().err


def test_runner_creates_a_missing_out_folder_before_work(tmp_path, no_work):
    out = tmp_path / "new" / "dir" / "r.json"
    with pytest.raises(AssertionError, match="started work"):  # past the checks: the folder exists
        _script("masking").main(["--out", str(out), "--n-images", "2"])
    assert out.parent.is_dir() and not out.exists()


def test_write_json_writes_nan_as_null_and_prepare_out_refuses_an_unwritable_folder(tmp_path):
    import json
    import os

    from chains_lite.experiments import results, runner
    path = results.write_json(tmp_path / "r.json", {"acc": float("nan"), "curve": [1.0, float("inf")], "n": 3})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"acc": None, "curve": [1.0, None], "n": 3}
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="cannot write in .*a-file"):     # a folder that cannot be made
        results.prepare_out(tmp_path / "a-file" / "r.json")
    with pytest.raises(ValueError, match="cannot write in .*a-file"):
        runner.claim_outputs(tmp_path / "ok.json", run_dir=tmp_path / "a-file" / "run")
    if os.geteuid() == 0:
        pytest.skip("root writes in read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="cannot write in .*locked"):
            results.prepare_out(locked / "r.json")
        with pytest.raises(ValueError, match="cannot write in .*locked"):
            runner.claim_outputs(tmp_path / "ok.json", run_dir=locked / "run")
    finally:
        locked.chmod(0o700)
