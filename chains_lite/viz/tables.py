"""Result tables for the book: numbers to a fixed count of significant digits, rendered as one
Markdown table (``IPython.display.Markdown``), so a notebook shows a table, never printed pipes.

    from chains_lite.viz.tables import sig, interval, markdown_table
    display(Markdown(markdown_table(["method", "mIoU (%)"], [["uniform", sig(41.237)]])))
"""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["sig", "interval", "markdown_table", "glue_text"]


def sig(x: float, digits: int = 3) -> str:
    """``x`` rounded to ``digits`` significant digits, without an exponent for |x| in
    [1e-4, 1e6): ``sig(0.012345) == "0.0123"``, ``sig(1234.5) == "1230"``, ``sig(-2.0) == "-2.00"``.
    NaN gives ``"nan"``, infinities ``"inf"`` / ``"-inf"``."""
    if not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be a positive int, got {digits!r}")
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0" if digits == 1 else "0." + "0" * (digits - 1)
    exponent = math.floor(math.log10(abs(x)))
    rounded = round(x, digits - 1 - exponent)
    exponent = math.floor(math.log10(abs(rounded)))          # 9.996 -> 10.0 moves up a decade
    if not -4 <= exponent < 6:
        return f"{rounded:.{digits - 1}e}"
    decimals = max(digits - 1 - exponent, 0)
    return f"{rounded:.{decimals}f}"


def interval(value: float, low: float, high: float, digits: int = 3, floor: float | None = None) -> str:
    """``"value [low, high]"``, each to ``digits`` significant digits. ``floor``: the smallest value the
    quantity can take (0 for a distance); a bound below it raises, since such an interval is not one of
    this quantity (report the interval of a quantity that can cross it, e.g. a difference)."""
    if not low <= high:
        raise ValueError(f"interval bounds out of order: low {low!r} > high {high!r}")
    if floor is not None and low < floor:
        raise ValueError(f"the interval's low bound {low!r} is below the quantity's floor {floor!r}")
    return f"{sig(value, digits)} [{sig(low, digits)}, {sig(high, digits)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], digits: int = 3,
                   align: Sequence[str] | None = None) -> str:
    """One Markdown table: ``header`` (k column names) over ``rows`` (each k cells). Floats are
    rendered with :func:`sig`; strings and ints as they are. ``align``: per column ``"l"`` or ``"r"``
    (default: text columns left, numeric ones right). A ``|`` inside a cell is escaped."""
    header = [str(h) for h in header]
    k = len(header)
    if k == 0:
        raise ValueError("a table needs at least one column")
    cells = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != k:
            raise ValueError(f"row {i} has {len(row)} cells, the header {k}")
        cells.append([sig(c, digits) if isinstance(c, float) else str(c) for c in row])
    if align is None:
        numeric = [all(isinstance(r[j], (int, float)) and not isinstance(r[j], bool) for r in rows) and len(rows) > 0
                   for j in range(k)]
        align = ["r" if n else "l" for n in numeric]
    if len(align) != k or any(a not in ("l", "r") for a in align):
        raise ValueError(f"align must give 'l' or 'r' for each of the {k} columns, got {align!r}")
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in cells]
    return "\n".join(lines)


def glue_text(key: str, text: str) -> bool:
    """Store ``text`` under ``key`` for other pages of the built book (MyST-NB's ``glue``: another
    page shows it with ``{glue:text}`path/to/notebook.ipynb::key```), without displaying it here.
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
