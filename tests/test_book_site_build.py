"""book/build_site.py builds from executed copies only when they match the notebooks of the book."""

import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_site", ROOT / "book" / "build_site.py")
site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site)


def _notebook(code: str, executed: bool, title: str = "# A page"):
    # the executed copy's output is not checked against the code: the cache matches code only
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    cell = nbformat.v4.new_code_cell(code)
    if executed:
        cell.execution_count = 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    nb.cells = [nbformat.v4.new_markdown_cell(title), cell]
    return nb


def test_executed_copies_fill_the_cache_and_a_changed_notebook_is_refused(tmp_path):
    book, executed = tmp_path / "book", tmp_path / "executed"
    book.mkdir()
    executed.mkdir()
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: a\n- file: b\n")
    (book / "intro.md").write_text("# Intro\n")
    for name, code in (("a", "print(1 + 1)"), ("b", "print(2 + 2)")):
        nbformat.write(_notebook(code, executed=False), book / f"{name}.ipynb")
        nbformat.write(_notebook(code, executed=True), executed / f"{name}.ipynb")
    assert [p.name for p in site.toc_notebooks(book)] == ["a.ipynb", "b.ipynb"]
    cache = tmp_path / "cache"
    assert site.fill_cache(executed, cache, book) == []
    # prose may change after execution (the cache keeps code and outputs), code may not
    nbformat.write(_notebook("print(1 + 1)", executed=False, title="# Retitled"), book / "a.ipynb")
    nbformat.write(_notebook("print(2 + 3)", executed=False), book / "b.ipynb")
    assert site.fill_cache(executed, cache, book) == ["b.ipynb"]
    (executed / "a.ipynb").unlink()
    assert site.fill_cache(executed, cache, book) == ["a.ipynb", "b.ipynb"]
