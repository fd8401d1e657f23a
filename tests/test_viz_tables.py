"""Result tables (chains_lite.viz.tables): significant digits against Python's own %g rounding,
hand-written cells and a hand-written table."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chains_lite.viz import tables


@pytest.mark.parametrize("x, text", [(45.77, "45.8"), (0.018, "0.0180"), (0.0183456, "0.0183"), (1234.0, "1230"),
                                     (9.996, "10.0"), (0.09996, "0.100"), (-2.345, "-2.35"), (0, "0"),
                                     (100, "100"), (float("nan"), "–"), (None, "–")])
def test_sig_hand_cases(x, text):
    assert tables.sig(x) == text


def test_sig_signs_and_digits():
    assert tables.sig(0.1234, signed=True) == "+0.123"
    assert tables.sig(-0.1234, signed=True) == "-0.123"
    assert tables.sig(0.1234, digits=1) == "0.1"
    with pytest.raises(ValueError, match="digits"):
        tables.sig(1.0, digits=0)
    with pytest.raises(ValueError, match="real"):
        tables.sig("1.0")


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda v: abs(v) > 1e-6),
       st.integers(1, 5))
def test_sig_rounds_as_percent_g_and_keeps_the_digits(x, digits):
    text = tables.sig(x, digits)
    assert "e" not in text
    assert math.isclose(float(text), float(f"{x:.{digits}g}"), rel_tol=1e-12)
    mantissa = text.lstrip("-").replace(".", "").lstrip("0")
    # as many significant digits as asked (integers of more digits than that end in zeros)
    assert len(mantissa) >= digits and set(mantissa[digits:]) <= {"0"}


def test_cells_and_estimates():
    assert tables.cell("a | b") == "a | b"
    assert tables.cell({"value": 12.34, "low": 10.06, "high": 14.21}) == "12.3 [10.1, 14.2]"
    assert tables.cell({"value": 0.5, "low": -0.25, "high": 1.5, "signed": True}) == "+0.500 [-0.250, +1.50]"
    assert tables.cell({"value": 0.8823, "low": 0.864, "high": 0.899, "scale": 100}) == "88.2 [86.4, 89.9]"
    assert tables.cell((1.0, 0.5, 2.0)) == "1.00 [0.500, 2.00]"
    assert tables.cell({"value": 3.0}) == "3.00"
    with pytest.raises(ValueError, match="value"):
        tables.cell({"low": 1})
    with pytest.raises(ValueError, match="tuple"):
        tables.cell((1.0, 2.0))


def test_markdown_table_by_hand():
    md = tables.markdown_table(["method", "score"], [["a|b", 0.12345], ["c", None]])
    assert md == "| method | score |\n|---|---|\n| a\\|b | 0.123 |\n| c | – |"
    with pytest.raises(ValueError, match="row 0"):
        tables.markdown_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="column"):
        tables.markdown_table([], [])


def test_interval_order_and_floor():
    assert tables.interval(1.2345, 1.0, 1.5) == "1.23 [1.00, 1.50]"
    with pytest.raises(ValueError, match="floor"):
        tables.interval(0.5, -0.1, 1.0, floor=0.0)
    with pytest.raises(ValueError, match="order"):
        tables.interval(0.5, 1.0, 0.0)


def test_glue_text_stores_the_text_under_its_key(monkeypatch):
    import sys
    import types

    stored = {}
    fake = types.ModuleType("myst_nb")
    fake.glue = lambda key, value, display=True: stored.update({key: (value, display)})
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    assert tables.glue_text("lite_result", "TokenRank wins") is True
    assert stored == {"lite_result": ("TokenRank wins", False)}
    with pytest.raises(ValueError, match="identifier"):
        tables.glue_text("not a key", "x")
    monkeypatch.setitem(sys.modules, "myst_nb", None)   # the import fails: nothing stored
    assert tables.glue_text("other", "y") is False


def test_sig_takes_one_element_tensors_and_numpy_scalars():
    import numpy as np
    import torch
    assert tables.sig(torch.tensor(0.6261)) == "0.626" and tables.sig(np.float32(90.133)) == "90.1"
    assert tables.sig(torch.tensor(float("nan"))) == "–"
    with pytest.raises(ValueError, match="real"):
        tables.sig(torch.ones(2))
