"""Result tables for the book: numbers to 3 significant digits, intervals, Markdown.

    from IPython.display import Markdown, display
    display(Markdown(markdown_table(["method", "FD"], [["none", {"value": 12.34, "low": 10.1, "high": 14.2}]])))
    # | method | FD |            -> rendered by Jupyter and the book as a table:
    # |---|---|                     none | 12.3 [10.1, 14.2]
    # | none | 12.3 [10.1, 14.2] |

A cell is a string (kept as is), ``None`` or NaN (a dash), a number (:func:`sig`), or an estimate:
a dict ``{"value", "low", "high"}`` (the format of :func:`chains_lite.eval.quality.bootstrap_table`)
or a tuple ``(value, low, high)``, written ``value [low, high]``. A dict with ``"signed": True``
(a difference) writes every number with its sign; ``"scale"`` multiplies all three (e.g. 100 for
percent).
"""
from __future__ import annotations

import math
from numbers import Real

DASH = "–"


def sig(x: float, digits: int = 3, signed: bool = False) -> str:
    """``x`` rounded to ``digits`` significant digits, in positional notation (``0.0183``, ``45.8``,
    ``1230``); ``signed`` writes a ``+`` before positive numbers. NaN and None give a dash."""
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be an int >= 1, got {digits!r}")
    if x is None:
        return DASH
    if not isinstance(x, Real):       # one-element tensors and NumPy scalars convert; text does not
        try:
            if isinstance(x, (str, bytes)):
                raise TypeError
            x = float(x)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"sig needs a real number, got {x!r}") from None
    x = float(x)
    if math.isnan(x):
        return DASH
    if math.isinf(x):
        return ("+" if signed and x > 0 else "") + ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    decimals = digits - 1 - exponent
    rounded = round(x, decimals)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > exponent:   # 9.996 -> 10.0: one digit fewer
        decimals -= 1
        rounded = round(x, decimals)
    text = f"{rounded:.{max(decimals, 0)}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return ("+" + text) if signed and rounded > 0 else text


def estimate(value: float, low: float | None = None, high: float | None = None, digits: int = 3,
             signed: bool = False) -> str:
    """``value [low, high]`` with :func:`sig`; only ``value`` when the interval is missing."""
    head = sig(value, digits, signed)
    if low is None or high is None:
        return head
    return f"{head} [{sig(low, digits, signed)}, {sig(high, digits, signed)}]"


def cell(x, digits: int = 3) -> str:
    """One table cell as text (see the module's docstring for what a cell may be)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        if "value" not in x:
            raise ValueError(f"an estimate needs a 'value', got keys {sorted(x)}")
        s = float(x.get("scale", 1.0))
        low, high = x.get("low"), x.get("high")
        return estimate(s * x["value"] if x["value"] is not None else None, None if low is None else s * low,
                        None if high is None else s * high, digits, bool(x.get("signed", False)))
    if isinstance(x, tuple):
        if len(x) != 3:
            raise ValueError(f"an estimate tuple is (value, low, high), got {x!r}")
        return estimate(*x, digits=digits)
    return sig(x, digits)


def markdown_table(columns, rows, digits: int = 3) -> str:
    """A Markdown table: a header of ``columns`` (strings) and ``rows`` of cells, each row as long
    as ``columns``. Pipes inside cells are escaped."""
    columns = list(columns)
    if not columns:
        raise ValueError("a table needs at least one column")
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"row {i} has {len(row)} cells for {len(columns)} columns")
        lines.append("| " + " | ".join(cell(x, digits).replace("|", "\\|") for x in row) + " |")
    return "\n".join(lines)


def interval(value: float, low: float, high: float, digits: int = 3, floor: float | None = None) -> str:
    """``"value [low, high]"`` (:func:`estimate`) for a quantity whose interval must be ordered, and,
    with ``floor`` (the smallest value the quantity can take, e.g. 0 for a distance), must not reach
    below it: such a bound is not one of this quantity, so it raises rather than print it."""
    if not low <= high:
        raise ValueError(f"interval bounds out of order: low {low!r} > high {high!r}")
    if floor is not None and low < floor:
        raise ValueError(f"the interval's low bound {low!r} is below the quantity's floor {floor!r}")
    return estimate(value, low, high, digits)


def glue_text(key: str, text: str) -> bool:
    """Store ``text`` under ``key`` for other pages of the built book (MyST-NB's ``glue``: another
    page shows it with ``{glue:text}`path/to/notebook.ipynb::key:s```), without displaying it here.
    Outside the book's build environment (no ``myst_nb``, e.g. Colab) nothing happens. Returns
    whether the text was stored."""
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"key must be a Python identifier, got {key!r}")
    try:
        from myst_nb import glue
    except ImportError:
        return False
    glue(key, str(text), display=False)
    return True
