"""chains_lite.viz.tables renders numbers to their significant digits and tables that parse."""

import math

import pytest

from chains_lite.viz.tables import interval, markdown_table, sig


@pytest.mark.parametrize("x, expected", [
    (0.012345, "0.0123"), (1234.5, "1230"), (-2.0, "-2.00"), (9.996, "10.0"), (0.0, "0.00"),
    (123456789.0, "1.23e+08"), (0.00001234, "1.23e-05"), (41.237, "41.2"), (0.5, "0.500"),
])
def test_sig_three_digits(x, expected):
    assert sig(x) == expected


@pytest.mark.parametrize("x", [0.000123456, 0.9876, 3.14159, 27.18, 999.5, 123456.0, -0.04567])
def test_sig_matches_python_g_formatting_in_value(x):
    # the value shown equals Python's own 3-significant-digit rounding
    assert math.isclose(float(sig(x)), float(f"{x:.3g}"), rel_tol=1e-12)


def test_sig_special_values_and_bad_digits():
    assert sig(float("nan")) == "nan" and sig(float("inf")) == "inf" and sig(-math.inf) == "-inf"
    with pytest.raises(ValueError, match="digits"):
        sig(1.0, 0)


def test_interval_and_floor():
    assert interval(1.2345, 1.0, 1.5) == "1.23 [1.00, 1.50]"
    with pytest.raises(ValueError, match="floor"):
        interval(0.5, -0.1, 1.0, floor=0.0)
    with pytest.raises(ValueError, match="order"):
        interval(0.5, 1.0, 0.0)


def test_markdown_table_layout():
    text = markdown_table(["method", "mIoU (%)", "n"], [["uniform", 41.237, 64], ["a|b", 0.5, 64]])
    lines = text.splitlines()
    assert lines[0] == "| method | mIoU (%) | n |"
    assert lines[1] == "|:---|---:|---:|"
    assert lines[2] == "| uniform | 41.2 | 64 |"
    assert lines[3] == "| a\\|b | 0.500 | 64 |"


def test_markdown_table_rejects_ragged_rows_and_bad_align():
    with pytest.raises(ValueError, match="row 1"):
        markdown_table(["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a"], [[1]], align=["c"])
    with pytest.raises(ValueError, match="column"):
        markdown_table([], [])


def test_glue_text_stores_the_text_under_its_key(monkeypatch):
    import sys
    import types

    stored = {}
    fake = types.ModuleType("myst_nb")
    fake.glue = lambda key, value, display=True: stored.update({key: (value, display)})
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    from chains_lite.viz.tables import glue_text
    assert glue_text("lite_result", "TokenRank wins") is True
    assert stored == {"lite_result": ("TokenRank wins", False)}
    with pytest.raises(ValueError, match="identifier"):
        glue_text("not a key", "x")
    monkeypatch.setitem(sys.modules, "myst_nb", None)   # import fails: nothing stored
    assert glue_text("other", "y") is False
