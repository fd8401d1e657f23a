"""`make book` executes every notebook again, whatever the book's _build folder holds.

A tiny book of one notebook that prints an environment variable is built twice: the second build,
with only the variable changed, must show the new value.
"""

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

CODE = "import os\nprint('word:', os.environ['TINY_BOOK_WORD'])"


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
    assert "word: first" in _make_book(book, "first")
    html = _make_book(book, "second")
    assert "word: second" in html and "word: first" not in html

