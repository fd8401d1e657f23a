"""Open every page of the built book in Chromium, as a reader would, and report what is broken.

The site is served from its folder on 127.0.0.1 (as GitHub Pages serves it) and each page of the
table of contents is opened in headless Chromium (Debian's `chromium`, driven by Playwright).
Requests that leave the site are refused: the book must work offline. A page fails on

* not loading (no answer, or an HTTP error),
* a console error or uncaught exception from the site's own pages and assets (a missing
  script or stylesheet of the site counts; refused outside requests are listed, not failed),
* an image with no pixels (broken, or refused because it lives outside the site),
* math that MathJax did not render, or raw \\( \\[ $$ delimiters in the text,
* an error output (a traceback, a Sphinx/docutils error message),
* a page of the table of contents missing from its navigation sidebar,
* a Colab link that does not point at the repository set in book/_config.yml;

* a code cell, printed output, display equation or table that needs a horizontal scroll or reaches
  past the article's right edge at a 1280 px window (at 390 px, a phone, such blocks and a
  page-wide sideways scroll are reported, not failed);

and the search page fails when a search for a term does not list the expected page. A full-page
screenshot per page and width is saved in the screenshots folder.

Usage (from the repository root, after the book is built):
    python book/check_site.py book/_build/html
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urljoin

import yaml

BOOK = Path(__file__).resolve().parent
sys.path.insert(0, str(BOOK))  # book/ holds scripts, not a package
from build_site import toc_entries  # noqa: E402
NAV = ".bd-sidebar-primary a[href], nav.bd-docs-nav a[href]"
ERRORS = ".output.traceback, .output.error, div.traceback, .system-message, .problematic"
RAW_MATH = r"\\\(|\\\)|\\\[|\\\]|\$\$"


def find_chromium() -> str:
    """Debian's chromium binary (its /usr/bin wrapper as a fallback); $CHROMIUM wins."""
    for path in (os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if path and Path(path).exists():
            return path
    raise FileNotFoundError("no chromium: `apt-get install chromium` (make test installs it), "
                            "or set CHROMIUM to a Chromium binary")


def toc_pages(book: Path = BOOK) -> list[str]:
    """The pages of book/_toc.yml as paths of the HTML site (root first)."""
    return [f"{f}.html" for f in toc_entries(book)]


def colab_prefix(book: Path = BOOK) -> str:
    """Where every Colab link of the site must point: the repository of book/_config.yml."""
    repo = yaml.safe_load((book / "_config.yml").read_text())["repository"]
    owner_repo = repo["url"].rstrip("/").removesuffix(".git").split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{repo.get('branch', 'main')}/"


@contextlib.contextmanager
def serve(folder: Path):
    """An HTTP server for `folder` on a free port of 127.0.0.1; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# Waits for every image and for MathJax, then reports what the reader sees broken.
INSPECT = """async ([rawMath, errorSel, navSel]) => {
  for (const img of document.images) img.loading = "eager";
  await Promise.race([
    Promise.all(Array.from(document.images, (img) => img.complete ? null :
      new Promise((done) => { img.addEventListener("load", done); img.addEventListener("error", done); }))),
    new Promise((done) => setTimeout(done, 10000))]);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const text = (el) => (el.textContent || "").trim().slice(0, 60);
  const broken = Array.from(document.images).filter((img) => !img.naturalWidth || !img.naturalHeight)
    .map((img) => img.getAttribute("src").slice(0, 100));
  const unrendered = Array.from(document.querySelectorAll(".math"))
    .filter((el) => !el.querySelector("mjx-container")).map(text);
  const raw = [];
  const walker = document.createTreeWalker(document.querySelector("main") || document.body, NodeFilter.SHOW_TEXT);
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight, .math";
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.parentElement.closest(skip) && new RegExp(rawMath).test(node.textContent)) raw.push(text(node));
  }
  const errors = Array.from(document.querySelectorAll(errorSel)).map(text);
  for (const out of document.querySelectorAll(".cell_output")) {
    if (out.textContent.includes("Traceback (most recent call last)")) errors.push(text(out));
  }
  const nav = Array.from(document.querySelectorAll(navSel), (a) => a.href.split("#")[0]);
  const colab = Array.from(document.querySelectorAll("a[href*='colab.research.google.com/github/']"),
                           (a) => a.href);
  return {broken, unrendered, raw, errors, nav, colab};
}"""


# Which blocks of the article need a horizontal scroll, or reach past the article's right edge, at the
# current window width: code cells, printed outputs, display equations and tables (figures may scroll).
BLOCKS = {
    "code": "div.cell_input div.highlight pre",
    "output": "div.cell_output div.output pre, div.cell_output div.output table",
    "equation": "mjx-container[display='true']",
    "table": "article.bd-article > section table, article.bd-article table.table",
}
MEASURE = """(blocks) => {
  const article = document.querySelector("article.bd-article") || document.querySelector("main");
  const edge = article.getBoundingClientRect().right;
  const out = {};
  for (const [kind, sel] of Object.entries(blocks)) {
    const seen = new Set(), over = [];
    for (const el of document.querySelectorAll(sel)) {
      if (seen.has(el) || !el.getClientRects().length) continue;
      seen.add(el);
      // an equation's box is its container's: MathJax draws it in mjx-math, which may be wider
      const inner = kind === "equation" ? (el.querySelector("mjx-math") || el) : el;
      const scroll = el.scrollWidth - el.clientWidth;
      const past = inner.getBoundingClientRect().right - Math.min(edge, el.getBoundingClientRect().right);
      const cut = kind === "equation" ? past : 0;
      const excess = Math.max(scroll, el.getBoundingClientRect().right - edge, cut);
      if (excess > 1) over.push(Math.round(excess));
    }
    out[kind] = {n: seen.size, over};
  }
  out.page = document.documentElement.scrollWidth - window.innerWidth;
  return out;
}"""

#: Window widths measured: the first must fit (a failure), the others are reported.
WIDTHS = (1280, 390)


def overflow_lines(rel: str, width: int, found: dict) -> list[str]:
    """The blocks of one page that do not fit at ``width``, one line per kind, and a page-wide
    horizontal scroll if any."""
    lines = [f"{rel} at {width} px: {len(found[k]['over'])} of {found[k]['n']} {k} block(s) do not fit "
             f"(by up to {max(found[k]['over'])} px)" for k in BLOCKS if found[k]["over"]]
    if found["page"] > 1:
        lines.append(f"{rel} at {width} px: the whole page scrolls sideways by {found['page']} px")
    return lines


def check_pages(html_dir: Path, pages: list[str], search: tuple[str, str] | None = None,
                screenshots: Path | None = None, colab: str | None = None,
                chromium: str | None = None, widths: tuple[int, ...] = WIDTHS,
                report: list[str] | None = None) -> list[str]:
    """Every problem found on `pages` (paths relative to `html_dir`); empty when all is well.

    search: (term, page) -- searching the site's search.html for term must list page.
    colab: the prefix every Colab link must start with (None: not checked).
    widths: window widths at which the blocks must fit: at the first, a block that does not fit is a
    problem; at the others it goes to `report` (a list the caller reads), as do page-wide scrolls.
    """
    report = [] if report is None else report
    from playwright.sync_api import sync_playwright
    problems: list[str] = []
    if screenshots:
        screenshots.mkdir(parents=True, exist_ok=True)
    with serve(html_dir) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium or find_chromium())
        context = browser.new_context(viewport={"width": widths[0], "height": 900})
        outside: list[str] = []

        def route(r):
            url = r.request.url
            if url.startswith(base) or url.startswith("data:"):
                return r.continue_()
            outside.append(url)
            return r.abort()
        context.route("**/*", route)
        page = context.new_page()
        events: list[str] = []
        page.on("console", lambda m: events.append(f"console error: {m.text[:200]}")
                if m.type == "error" and (m.location.get("url") or base).startswith(base) else None)
        page.on("pageerror", lambda e: events.append(f"uncaught exception: {str(e)[:200]}"))
        page.on("requestfailed", lambda r: events.append(f"asset failed to load: {r.url}")
                if r.url.startswith(base) else None)
        page.on("response", lambda r: events.append(f"asset missing (HTTP {r.status}): {r.url}")
                if r.status >= 400 and r.url.startswith(base) else None)
        expected_nav = {urljoin(base, p) for p in pages}
        for rel in pages:
            events.clear()
            outside.clear()
            url = urljoin(base, rel)
            try:
                response = page.goto(url, wait_until="load", timeout=60000)
            except Exception as err:  # noqa: BLE001 - a page that cannot be opened is the finding
                problems.append(f"{rel}: does not load ({str(err).splitlines()[0]})")
                continue
            if response is None or not response.ok:
                problems.append(f"{rel}: does not load (HTTP {response.status if response else 'no answer'})")
                continue
            found = page.evaluate(INSPECT, [RAW_MATH, ERRORS, NAV])
            name = rel.replace("/", "__").removesuffix(".html")
            if screenshots:
                page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
            for i, width in enumerate(widths):
                page.set_viewport_size({"width": width, "height": 900})
                page.wait_for_timeout(300)   # the theme's layout settles after a resize
                lines = overflow_lines(rel, width, page.evaluate(MEASURE, BLOCKS))
                (problems if i == 0 else report).extend(lines)
                if screenshots and i > 0:
                    page.screenshot(path=str(screenshots / f"{name}@{width}.png"), full_page=True)
            page.set_viewport_size({"width": widths[0], "height": 900})
            problems += [f"{rel}: {e}" for e in dict.fromkeys(events)]
            problems += [f"{rel}: image with no pixels: {src}" for src in found["broken"]]
            if found["unrendered"]:
                problems.append(f"{rel}: {len(found['unrendered'])} math fragment(s) not rendered, "
                                f"e.g. {found['unrendered'][0]!r}")
            problems += [f"{rel}: raw math delimiters in the text: {t!r}" for t in found["raw"][:3]]
            problems += [f"{rel}: error output: {t!r}" for t in dict.fromkeys(found["errors"])]
            missing = sorted(p for p in expected_nav if p not in set(found["nav"]))
            problems += [f"{rel}: navigation does not list {m.removeprefix(base)}" for m in missing]
            if colab:
                problems += [f"{rel}: Colab link {c} does not point at {colab}"
                             for c in found["colab"] if not c.startswith(colab)]
            if outside:
                print(f"  {rel}: refused requests outside the site: {sorted(set(outside))[:5]}")
        if search:
            problems += check_search(page, base, *search)
        browser.close()
    return problems


def check_search(page, base: str, term: str, expected: str) -> list[str]:
    """The site's search page, searched for `term`, must list the page `expected`."""
    try:
        page.goto(urljoin(base, f"search.html?q={term}"), wait_until="load", timeout=60000)
        page.wait_for_function(
            "() => /finished|did not match/i.test(document.querySelector('#search-results')?.textContent || '')",
            timeout=30000)
    except Exception as err:  # noqa: BLE001
        return [f"search for {term!r} did not finish ({str(err).splitlines()[0]})"]
    hits = page.eval_on_selector_all("#search-results a[href]", "links => links.map(a => a.href.split('?')[0].split('#')[0])")
    if urljoin(base, expected) not in hits:
        return [f"search for {term!r} does not list {expected} (it lists {len(hits)} link(s))"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, nargs="?", default=BOOK / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="folder for one PNG per page (default: <html>/../site-check)")
    parser.add_argument("--search", default="TokenRank=notebooks/02_tokenrank_vit.html",
                        help="TERM=PAGE: searching for TERM must list PAGE")
    args = parser.parse_args(argv)
    pages = toc_pages()
    shots = args.screenshots or args.html.parent / "site-check"
    term, expected = args.search.split("=", 1)
    report: list[str] = []
    problems = check_pages(args.html, pages, search=(term, expected), screenshots=shots,
                           colab=colab_prefix(), report=report)
    for line in report:
        print(f"  (report) {line}")
    for p in problems:
        print(p)
    print(f"checked {len(pages)} pages and the search page in Chromium: "
          f"{len(problems)} problem(s); screenshots in {shots}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
