"""Keep each notebook's Colab badge and Colab install cell in sync with book/_config.yml.

The repository URL and branch are configured in one place, `repository:` in book/_config.yml.
Every notebook in notebooks/ carries two strings derived from them:

* in its first markdown cell, the "Open in Colab" badge link
  https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/notebooks/<file>.ipynb
* in a code cell guarded by `if "google.colab" in sys.modules:`, the install line
  pip install "chains_lite @ git+<url>"

Usage (from the repository root):
    python book/colab_badges.py --check   # exit 1 and list notebooks that are out of sync
    python book/colab_badges.py           # rewrite those two strings in place, nothing else
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "book" / "_config.yml"
NOTEBOOKS = ROOT / "notebooks"

BADGE_RE = re.compile(r"https://colab\.research\.google\.com/github/[^\s)\"'>\]]+")
# Only the quoted requirement is matched, so pip flags (`%pip install -q ...`) may stand before it.
INSTALL_RE = re.compile(r'"chains_lite @ git\+[^"]*"')
COLAB_GUARD_RE = re.compile(r"""if\s+["']google\.colab["']\s+in\s+sys\.modules\s*:""")


def repository(config: Path = CONFIG) -> tuple[str, str]:
    """(url, branch) of the repository, as configured in book/_config.yml."""
    repo = yaml.safe_load(config.read_text())["repository"]
    return repo["url"].rstrip("/").removesuffix(".git"), repo.get("branch", "main")


def expected(notebook: Path, url: str, branch: str) -> tuple[str, str]:
    """The badge URL and the quoted pip requirement that `notebook` should contain."""
    owner_repo = url.split("github.com/", 1)[1]
    badge = f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{notebook.name}"
    install = f'"chains_lite @ git+{url}"'
    return badge, install


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _cells(nb: dict) -> tuple[dict | None, dict | None]:
    """The first markdown cell and the first code cell guarded by the Colab check."""
    markdown = next((c for c in nb["cells"] if c["cell_type"] == "markdown"), None)
    install = next(
        (c for c in nb["cells"] if c["cell_type"] == "code" and COLAB_GUARD_RE.search(_source(c))),
        None,
    )
    return markdown, install


def problems(notebook: Path, url: str, branch: str) -> list[str]:
    """What is out of sync in one notebook (empty when it is in sync)."""
    badge, install = expected(notebook, url, branch)
    markdown, code = _cells(json.loads(notebook.read_text(encoding="utf-8")))
    found = []
    badges = BADGE_RE.findall(_source(markdown)) if markdown else []
    if badges != [badge]:
        found.append(f"Colab badge in the first markdown cell is {badges or 'missing'}, expected {badge}")
    installs = INSTALL_RE.findall(_source(code)) if code else []
    if installs != [install] or "pip install" not in _source(code):
        where = "in the Colab install cell" if code else "(no cell with `if \"google.colab\" in sys.modules:`)"
        found.append(f"install line {where} is {installs or 'missing'}, expected pip install {install}")
    return found


def check(notebooks_dir: Path = NOTEBOOKS, config: Path = CONFIG) -> dict[str, list[str]]:
    """{notebook name: problems} for every notebook in notebooks_dir that is out of sync."""
    url, branch = repository(config)
    report = {nb.name: problems(nb, url, branch) for nb in sorted(notebooks_dir.glob("*.ipynb"))}
    return {name: p for name, p in report.items() if p}


def _rewrite(cell: dict, pattern: re.Pattern, replacement: str) -> None:
    # Sources are lists of lines in nbformat files; a URL never spans two lines.
    src = cell["source"]
    if isinstance(src, list):
        cell["source"] = [pattern.sub(lambda _: replacement, line) for line in src]
    else:
        cell["source"] = pattern.sub(lambda _: replacement, src)


def fix(notebooks_dir: Path = NOTEBOOKS, config: Path = CONFIG) -> list[str]:
    """Rewrite the badge and install strings in place; return the names of the files changed."""
    url, branch = repository(config)
    changed = []
    for path in sorted(notebooks_dir.glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        before = json.dumps(nb)
        badge, install = expected(path, url, branch)
        markdown, code = _cells(nb)
        if markdown is not None:
            _rewrite(markdown, BADGE_RE, badge)
        if code is not None:
            _rewrite(code, INSTALL_RE, install)
        if json.dumps(nb) != before:  # touch only files whose strings changed
            # nbformat's own layout: indent=1, non-ASCII kept, trailing newline.
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if out of sync")
    args = parser.parse_args(argv)
    if not args.check:
        for name in fix():
            print(f"rewrote {name}")
    report = check()
    for name, found in report.items():
        for p in found:
            print(f"{name}: {p}")
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
