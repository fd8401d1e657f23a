"""Build the HTML book from notebooks already executed, without executing them again.

`make test` executes every notebook once, with nbmake, into copies under book/_executed/.
This script puts those copies into the book's execution cache (book/_build/.jupyter_cache, which
book/_config.yml's `execute_notebooks: cache` reads), checks that every notebook of the table of
contents has its executed copy there, and runs `jupyter-book build --all book`: the build takes each
notebook's outputs from the cache and runs none. A notebook edited after its copy was executed
has no match, and the script stops before building instead of executing it.

Usage (from the repository root):
    python book/build_site.py book/_executed
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

BOOK = Path(__file__).resolve().parent
CACHE = BOOK / "_build" / ".jupyter_cache"


def toc_entries(book: Path = BOOK) -> list[str]:
    """Every `root:` and `file:` of book/_toc.yml, in order (paths under book/, no suffix)."""
    def files(node):
        if isinstance(node, dict):
            own = [node[k] for k in ("root", "file") if k in node]
            return own + [f for v in node.values() if isinstance(v, (dict, list)) for f in files(v)]
        if isinstance(node, list):
            return [f for item in node for f in files(item)]
        return []
    return files(yaml.safe_load((book / "_toc.yml").read_text()))


def toc_notebooks(book: Path = BOOK) -> list[Path]:
    """The notebooks book/_toc.yml lists, as paths under book/."""
    return [book / f"{f}.ipynb" for f in toc_entries(book) if (book / f"{f}.ipynb").exists()]


def with_outputs(source: Path, copy: Path):
    """The notebook `source` with the outputs of its executed `copy`; None if their code differs.

    The cache matches a notebook by its code cells with their metadata; the executed copy's
    cells carry metadata the run added (nbmake's timings), so its outputs move to the source.
    """
    nb = nbformat.read(str(source), as_version=4)
    run = nbformat.read(str(copy), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    done = [c for c in run.cells if c.cell_type == "code"]
    if [c.source for c in code] != [c.source for c in done]:
        return None
    for cell, ran in zip(code, done):
        cell.outputs, cell.execution_count = ran.outputs, ran.execution_count
    nb.metadata.update({k: v for k, v in run.metadata.items() if k in ("language_info", "widgets")})
    return nb


def fill_cache(executed: Path, cache_dir: Path = CACHE, book: Path = BOOK) -> list[str]:
    """Cache the executed copies; return the toc notebooks that have no matching copy."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache = get_cache(str(cache_dir))
    for source in toc_notebooks(book):
        copy = executed / source.name
        nb = with_outputs(source, copy) if copy.exists() else None
        if nb is not None:
            # check_validity: the copy's cells ran in order, each once (a full execution)
            cache.cache_notebook_bundle(CacheBundleIn(nb, str(source.resolve())),
                                        check_validity=True, overwrite=True)
    missing = []
    for source in toc_notebooks(book):
        try:
            cache.match_cache_notebook(nbformat.read(str(source), as_version=4))
        except KeyError:
            missing.append(source.name)
    return missing


def build(executed: Path, book: Path = BOOK) -> int:
    """Fill `book`'s cache from the copies in `executed` and build it; 1 if a copy is missing."""
    missing = fill_cache(executed, book / "_build" / ".jupyter_cache", book)
    if missing:
        print(f"no executed copy in {executed} matches {missing}: their code changed after "
              "execution, or they were not executed (run `make test`, or `make book` to execute them)")
        return 1
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    # --all: every page takes its outputs from the cache, also one that Sphinx's saved environment
    # (from an earlier build) marks up to date
    return subprocess.call([str(jupyter_book), "build", "--all", str(book)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("executed", type=Path, help="folder of the executed notebook copies")
    return build(parser.parse_args(argv).executed)


if __name__ == "__main__":
    sys.exit(main())
