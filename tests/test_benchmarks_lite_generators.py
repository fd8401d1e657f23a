"""benchmarks/lite_generators.py on a few samples: each setting gives one row of its table."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("diffusers")


def test_lite_generators_prints_a_row_per_sampler_setting(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(__file__).parent.parent / "benchmarks" / "lite_generators.py"
    spec = importlib.util.spec_from_file_location("lite_generators", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--n", "4", "--unet-steps", "2", "3", "--flux-steps", "2"])
    out = capsys.readouterr().out
    assert "| DDIM steps | confident fraction | Fréchet distance |" in out
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith(("| 2 |", "| 3 |"))] == ["| 2", "| 3"]
    flux = out[out.index("| guidance | Euler steps |"):].splitlines()[2:]
    assert [row.split(" | ")[1] for row in flux if row.startswith("|")] == ["2", "2"]  # unguided, card's guidance
