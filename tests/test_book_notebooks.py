"""Notebooks are committed clean, listed in the book, and carry the right Colab badge and install line."""

import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _load_book_script(name):
    # book/ is not a package: import the script by path.
    spec = importlib.util.spec_from_file_location(name, BOOK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toc_files(node) -> list[str]:
    """Every `file:` (and `root:`) entry of book/_toc.yml, in order."""
    if isinstance(node, dict):
        own = [node[k] for k in ("root", "file") if k in node]
        return own + [f for k, v in node.items() if k not in ("root", "file") for f in _toc_files(v)]
    if isinstance(node, list):
        return [f for item in node for f in _toc_files(item)]
    return []


TOC = _toc_files(yaml.safe_load((BOOK / "_toc.yml").read_text()))


def test_colab_badges_and_install_cells_match_config():
    out_of_sync = _load_book_script("colab_badges").check()
    assert not out_of_sync, f"run `python book/colab_badges.py` to fix: {out_of_sync}"


def test_notebooks_are_committed_without_outputs():
    dirty = []
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                dirty.append(f"{path.name} cell {i}")
    assert not dirty, f"clear outputs before committing: {dirty}"


def test_every_cell_has_a_unique_id():
    # nbformat 4.5 cells carry ids; a cell pasted in without one fails validation in future nbformat
    bad = []
    for path in NOTEBOOKS:
        ids = [c.get("id") for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
        if None in ids or len(set(ids)) != len(ids):
            bad.append(path.name)
    assert not bad, f"cells without an id or with a repeated one: {bad}"


def test_every_notebook_is_in_the_toc():
    missing = [p.name for p in NOTEBOOKS if f"notebooks/{p.stem}" not in TOC]
    assert not missing, f"add to book/_toc.yml: {missing}"


def test_every_toc_entry_exists():
    # Entries are paths relative to book/ without suffix; book/notebooks links to ../notebooks.
    # book/lite_world.py writes its page at build time.
    generated = {_load_book_script("lite_world").PAGE}
    missing = [f for f in TOC if f not in generated
               and not any((BOOK / f).with_suffix(s).exists() for s in (".md", ".ipynb"))]
    assert not missing, f"book/_toc.yml lists missing files: {missing}"


def _cells(path, kind):
    return [(i, "".join(c["source"])) for i, c in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"])
            if c["cell_type"] == kind]


def test_code_cells_are_short():
    # a longer cell is a pipeline that belongs in the package, with a test
    long = [f"{p.name} cell {i}: {s.count(chr(10)) + 1} lines" for p in NOTEBOOKS for i, s in _cells(p, "code")
            if s.count("\n") + 1 > 25]
    assert not long, f"split these cells or move their logic into chains_lite: {long}"


# The book's code blocks show about 88 characters; a longer line is cut off in the page.
MAX_LINE = 88


def test_code_lines_fit_the_page():
    # a URL cannot be wrapped, so a line that holds one may be longer
    long = [f"{p.name} cell {i} line {j + 1}: {len(line)} characters"
            for p in NOTEBOOKS for i, s in _cells(p, "code")
            for j, line in enumerate(s.split("\n")) if len(line) > MAX_LINE and "://" not in line]
    assert not long, f"wrap these lines to at most {MAX_LINE} characters: {long}"


def test_markdown_does_not_report_earlier_runs():
    # measured numbers are rendered by a code cell from this run's results, never typed from an old run
    stale = ("last run", "when this chapter was written", "measured when", "when this was last")
    found = [f"{p.name} cell {i}: {w!r}" for p in NOTEBOOKS for i, s in _cells(p, "markdown")
             for w in stale if w in s.lower()]
    assert not found, f"render these statements from the results instead: {found}"


def _code_cells():
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                yield path.name, i, "".join(cell["source"]), cell["metadata"].get("tags", [])


def test_the_book_shows_lessons_not_plumbing():
    """The built book hides what a reader need not read: the Colab install cell is removed, the
    parameters and import cells and full-mode branches are folded, and a cell that renders prose
    (IPython's Markdown) shows its prose without the code that builds it."""
    wrong = []
    for name, i, src, tags in _code_cells():
        last = src.strip().split("\n")[-1]
        if "google.colab" in src and "remove-cell" not in tags:
            wrong.append(f"{name} cell {i}: the Colab install cell needs the remove-cell tag")
        if 'os.environ.get("CHAINS_MODE"' in src and "hide-input" not in tags:
            wrong.append(f"{name} cell {i}: the parameters cell needs the hide-input tag")
        if ("Markdown(" in last or "display(Markdown" in src) and "remove-input" not in tags:
            wrong.append(f"{name} cell {i}: a cell that renders prose needs the remove-input tag")
        if src.startswith(("if FULL", "if not FULL")) and not {"hide-input", "remove-input"} & set(tags):
            wrong.append(f"{name} cell {i}: a full-mode branch needs the hide-input tag")
    assert not wrong, "\n".join(wrong)
