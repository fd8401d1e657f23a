"""benchmarks/gpu_check.py in its --tiny mode on the CPU: every part runs and writes its tables."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny_runs_every_part(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("diffusers")
    report = load().main(["--tiny", "--out", str(tmp_path), "--repeats", "1", "--device", "cpu",
                          "--sizes", "2x64,1x128@4"])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["tiny"] and saved["device"] == "cpu"
    for row in report["solvers"]:  # ours met the target, and its error is the one the power method had to meet
        assert row["tokenrank"]["err"] <= 1e-6
        assert row["power"]["steps"] is None or row["power"]["err"] <= max(row["tokenrank"]["err"], 1e-6)
        assert row["lambda2"]["err"] is None or row["lambda2"]["err"] <= 1e-4
    assert "| 128 | tokenrank | dense |" in (tmp_path / "bench_lazy.txt").read_text()
    steps = {(r["model"], r["step"].split()[0]) for r in report["models"]}
    assert {("DINOv2-B/14-reg", "forward"), ("SD1.5 UNet", "ch4"), ("SD1.5 UNet", "ch5"),
            ("FLUX.1-schnell transformer", "ch3")} <= steps
    assert {c["family"] for c in report["memory_plan"]} == {"flux", "sd"}
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "Solvers:" in text and "bench_lazy.py:" in text and "memory_plan:" in text


def test_gpu_check_rejects_unknown_parts(tmp_path):
    with pytest.raises(SystemExit):
        load().main(["--tiny", "--out", str(tmp_path), "--parts", "solvers,gpu"])
