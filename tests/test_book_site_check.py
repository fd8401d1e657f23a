"""book/check_site.py finds each fault a reader would see, on a small site broken on purpose.

Needs Chromium (`make test` installs Debian's package); skips without it.
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_site", ROOT / "book" / "check_site.py")
check_site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_site)

try:
    CHROMIUM = check_site.find_chromium()
except FileNotFoundError:
    CHROMIUM = None
pytest.importorskip("playwright")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")

# A 1 x 1 PNG.
PIXEL = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                      "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f4"
                      "5f6c0000000049454e44ae426082")
PAGES = ["index.html", "good.html", "image.html", "math.html", "error.html", "console.html",
         "asset.html", "orphan.html", "gone.html", "colab.html", "wide.html", "phone.html"]
IN_NAV = [p for p in PAGES if p != "orphan.html"]
COLAB = "https://colab.research.google.com/github/owner/repo/blob/main/"


def _page(body: str, head: str = "") -> str:
    nav = "".join(f'<a href="{p}">{p}</a>' for p in IN_NAV)
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"{head}</head><body><div class='bd-sidebar-primary'>{nav}</div>"
            f"<article class='bd-article' style='max-width: 700px'>{body}</article></body></html>")


def _code(chars: int) -> str:
    return ("<div class='cell_input'><div class='highlight'><pre style='overflow-x: auto; margin: 0'>"
            + "x" * chars + "</pre></div></div>")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "pixel.png").write_bytes(PIXEL)
    (root / "boom.js").write_text("console.error('boom from the site');\n")
    pages = {
        "index.html": _page("<p>Chapters</p>"),
        "good.html": _page(f"<img src='pixel.png' alt='one pixel'><a href='{COLAB}notebooks/a.ipynb'>Colab</a>"
                           "<pre>\\(code is not math\\)</pre>"),
        "image.html": _page("<img src='missing.png' alt='gone'>"),
        "math.html": _page("<p>A chain <span class='math notranslate nohighlight'>\\(A\\)</span>.</p>"
                           "<p>Typed as text: \\(x\\).</p>"),
        "error.html": _page("<div class='cell_output'><div class='output traceback'>"
                            "<pre>Traceback (most recent call last): ValueError</pre></div></div>"),
        "console.html": _page("<p>script</p>", head="<script src='boom.js'></script>"),
        "asset.html": _page("<p>style</p>", head="<link rel='stylesheet' href='_static/missing.css'>"),
        "orphan.html": _page("<p>not in the navigation</p>"),
        "colab.html": _page("<a href='https://colab.research.google.com/github/someone/else/blob/main/x.ipynb'>"
                            "Colab</a>"),
        # a code line of 200 characters, and an equation drawn wider than its box, at any width
        "wide.html": _page(_code(200) + "<mjx-container display='true' style='display: block; overflow: hidden'>"
                           "<mjx-math style='display: inline-block; width: 1000px'>x</mjx-math></mjx-container>"
                           "<div style='height: 2000px'></div>"),
        # 60 characters fit 700 px, not a 390 px phone
        "phone.html": _page(_code(60)),
        "search.html": _page("<div id='search-results'><p class='search-summary'>"
                             "Your search did not match any documents.</p></div>"),
    }
    for name, html in pages.items():  # gone.html is listed but never written
        (root / name).write_text(html)
    shots = root.parent / "shots"
    report = []
    problems = check_site.check_pages(root, PAGES, search=("TokenRank", "good.html"),
                                      screenshots=shots, colab=COLAB, chromium=CHROMIUM, report=report)
    return problems, shots, report


def _found(problems, page, pattern):
    return [p for p in problems if p.startswith(page) and re.search(pattern, p)]


@pytest.mark.parametrize("page, pattern", [
    ("gone.html", r"does not load \(HTTP 404\)"),
    ("image.html", r"image with no pixels: missing\.png"),
    ("math.html", r"math fragment\(s\) not rendered"),
    ("math.html", r"raw math delimiters in the text: 'Typed as text"),
    ("error.html", r"error output"),
    ("console.html", r"console error: boom from the site"),
    ("asset.html", r"asset missing \(HTTP 404\).*missing\.css"),
    ("colab.html", r"Colab link .*someone/else"),
    ("search for 'TokenRank'", r"does not list good\.html"),
    ("wide.html", r"at 1280 px: 1 of 1 code block\(s\) do not fit \(by up to \d+ px\)"),
    ("wide.html", r"at 1280 px: 1 of 1 equation block\(s\) do not fit"),
])
def test_each_fault_is_reported(site, page, pattern):
    problems, *_ = site
    assert _found(problems, page, pattern), problems


def test_a_page_missing_from_the_navigation_is_reported(site):
    problems, *_ = site
    # every page that loads says so, and only orphan.html is missing
    missing = {p.split(": ")[0] for p in problems if p.endswith("navigation does not list orphan.html")}
    assert missing == set(PAGES) - {"gone.html"}
    assert not [p for p in problems if "navigation does not list" in p and "orphan" not in p]


def test_good_pages_pass_and_every_page_has_a_screenshot(site):
    problems, shots, _ = site
    assert not [p for p in problems if p.startswith(("good.html", "index.html")) and "orphan" not in p]
    loaded = [p.removesuffix(".html") for p in PAGES if p != "gone.html"]
    assert {p.name for p in shots.glob("*.png")} == {f"{p}{w}.png" for p in loaded for w in ("", "@390")}
    # full-page screenshots: a page taller than the window is taken whole
    from PIL import Image
    assert Image.open(shots / "wide.png").size[1] > 2000 > Image.open(shots / "good.png").size[1]


def test_the_static_player_switches_frames_in_the_browser(tmp_path):
    # the explorers' HTML (chains_lite.viz.html_player) shows the frame of the chosen values
    from playwright.sync_api import sync_playwright

    from chains_lite.viz.html_player import frame_player
    html = frame_player({"k": [0, 1, 2], "c": ["x", "y"]}, lambda k, c: [f"{c}{k}"], value={"k": 1})
    (tmp_path / "p.html").write_text(f"<html><body>{html}</body></html>")
    with check_site.serve(tmp_path) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.goto(base + "p.html")
        frame = page.locator(".chains-player-frame")
        assert frame.inner_text() == "x1"
        page.locator("input[type=range]").fill("2")
        page.locator("select").select_option(label="y")
        assert frame.inner_text() == "y2"
        assert page.locator("output").inner_text() == "2"
        browser.close()


def test_what_fits_a_desktop_but_not_a_phone_is_reported_not_failed(site):
    problems, _, report = site
    assert not [p for p in problems if p.startswith("phone.html") and "do not fit" in p]
    assert _found(report, "phone.html", r"at 390 px: 1 of 1 code block\(s\) do not fit")
    assert _found(report, "wide.html", r"at 390 px")
