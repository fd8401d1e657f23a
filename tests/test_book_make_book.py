"""Each build of the book shows the outputs of its own run, whatever the book's _build folder holds.

A tiny book of one notebook that prints an environment variable is built twice: the second build,
with only the variable changed, must show the new value. `make book` executes the notebook again;
book/build_site.py (the site of `make test`) takes the outputs of its executed copy.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (VENV / "bin" / "jupyter-book").exists(),
                                reason="needs make and jupyter-book")

spec = importlib.util.spec_from_file_location("build_site", ROOT / "book" / "build_site.py")
site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site)

CODE = ("import os\nprint('word:', os.environ['TINY_BOOK_WORD'])\n"
        "print('progress:', os.environ.get('CHAINS_PROGRESS'))")


def _tiny_book(book: Path):
    book.mkdir()
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    # the real book's execution settings, none of its extensions
    (book / "_config.yml").write_text(yaml.safe_dump({"title": "Tiny", "only_build_toc_files": True,
                                                      "execute": config["execute"]}))
    (book / "_toc.yml").write_text("format: jb-book\nroot: page\n")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Page"), nbformat.v4.new_code_cell(CODE)]
    nbformat.write(nb, book / "page.ipynb")


def _page(book: Path) -> str:
    return (book / "_build" / "html" / "page.html").read_text()


def _make_book(book: Path, word: str) -> str:
    """Run `make book` on `book` with TINY_BOOK_WORD=word; return the page's HTML."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    env.update(TINY_BOOK_WORD=word, CHAINS_MODE="lite")
    env.pop("CHAINS_PROGRESS", None)
    # -o: the venv this test runs in is used as it is, never reinstalled
    run = subprocess.run(["make", "-C", str(ROOT), "book", f"BOOK={book}", f"VENV={VENV}",
                          "-o", f"{VENV}/.installed"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return _page(book)


@pytest.fixture
def book(tmp_path):
    _tiny_book(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_make_book_executes_a_notebook_whose_source_did_not_change(book):
    html = _make_book(book, "first")
    # make book switches progress bars off for the pages (chains_lite.core.progress)
    assert "word: first" in html and "progress: off" in html
    html = _make_book(book, "second")
    assert "word: second" in html and "word: first" not in html


def test_the_site_of_make_test_shows_its_executed_copies_after_make_book(book, tmp_path, monkeypatch):
    _make_book(book, "book")
    executed = tmp_path / "executed"
    executed.mkdir()
    nb = nbformat.read(book / "page.ipynb", as_version=4)
    nb.cells[1].execution_count = 1
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="word: nbmake\n")]
    nbformat.write(nb, executed / "page.ipynb")
    # TINY_BOOK_WORD unset: the page shows the copy's output only if nothing executes the notebook
    monkeypatch.delenv("TINY_BOOK_WORD", raising=False)
    assert site.build(executed, book) == 0
    html = _page(book)
    assert "word: nbmake" in html and "word: book" not in html
