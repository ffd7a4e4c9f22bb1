"""The built book in headless Chromium, as a reader opens it.

Every page loads without console errors, every image loads, the math is typeset by MathJax, no
internal link or ``#anchor`` is broken, no code, printed output or displayed formula is wider than
its box, and the sidebar lists every page of ``_toc.yml``. A full-page screenshot of the intro and
of each chapter is kept in ``_build/browser-artifacts`` (or in ``$XNN_LAB_BROWSER_ARTIFACTS``).

Which book: ``$XNN_LAB_BOOK_HTML`` names a built ``_build/html`` (``make book-check`` checks the
one ``make book`` built); without it the book is built here with the repository's
``_config.yml``, executing every chapter (in quick mode under ``make test``);
``XNN_LAB_BOOK_EXECUTE=off`` builds it without running the chapters, for a fast look at the
structure.
"""

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser_check import CHROMIUM, VIEWPORT, Chromium, broken_links, crawl, serve

ROOT = Path(__file__).resolve().parents[1]
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
DOCS = [TOC["root"]] + [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]
# The pages nested under a chapter (the exercise notebooks under the Exercises page).
SECTIONS = [section["file"] for part in TOC["parts"] for entry in part["chapters"]
            for section in entry.get("sections", [])]
PAGES = [f"{doc}.html" for doc in DOCS + SECTIONS]
CHAPTERS = [f"{doc}.html" for doc in DOCS if doc.startswith("book/") and Path(doc).name[:1].isdigit()]
SCREENSHOT_PAGES = [f"{TOC['root']}.html", *CHAPTERS]
GENERATED = ["genindex.html", "search.html", "py-modindex.html"]
ARTIFACTS = Path(os.environ.get("XNN_LAB_BROWSER_ARTIFACTS", ROOT / "_build" / "browser-artifacts"))
EXECUTE = os.environ.get("XNN_LAB_BOOK_EXECUTE", "force")


def _build_book(out):
    """Build the book into ``out`` with the repository's config, execution set by EXECUTE."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = EXECUTE
    # jupyter-book finds local extensions relative to the config file, which moves to ``out``.
    extensions = config.get("sphinx", {}).get("local_extensions") or {}
    for name, folder in extensions.items():
        extensions[name] = str((ROOT / folder).resolve())
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jupyter_book = shutil.which("jupyter-book", path=str(Path(sys.executable).parent))
    # MPLBACKEND=Agg (set by `make test` for nbval) would reach the kernels and replace their
    # inline backend: the chapters would run, and show no figure.
    env = {name: value for name, value in os.environ.items() if name != "MPLBACKEND"}
    result = subprocess.run([jupyter_book, "build", str(ROOT), "--config", str(config_path),
                             "--path-output", str(out), "--warningiserror", "--keep-going"],
                            check=False, capture_output=True, text=True, timeout=3600, env=env)
    html = out / "_build" / "html"
    # A chapter that fails to execute leaves its traceback in reports/, not in the output.
    failures = "".join(f"\n--- {log.name}\n{log.read_text()[-3000:]}"
                       for log in sorted((html / "reports").glob("**/*.log")))
    return html, result.returncode, result.stdout[-4000:] + result.stderr[-4000:] + failures


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """(html folder, build exit code or None when built elsewhere, build log): the book under test."""
    given = os.environ.get("XNN_LAB_BOOK_HTML")
    if given:
        return Path(given).resolve(), None, f"built elsewhere: {given}"
    return _build_book(tmp_path_factory.mktemp("book"))


@pytest.fixture(scope="module")
def site(book):
    """(base URL, reports by page, landing page of index.html, html folder) from one crawl."""
    html, _, _ = book
    assert (html / "index.html").is_file(), f"no built book in {html}"
    assert Path(CHROMIUM).exists(), (f"{CHROMIUM} is missing: install Debian's chromium "
                                     "(apt-get install chromium) or set XNN_LAB_CHROMIUM")
    # Sphinx's own pages: no <a> leads to them (the search box is a form, the index a <link>).
    generated = [page for page in GENERATED if (html / page).is_file()]
    with serve(html) as base_url, Chromium() as browser:
        landing = browser.landing(base_url + "index.html")
        reports = crawl(browser, base_url, html, PAGES + generated, ARTIFACTS, SCREENSHOT_PAGES)
    return base_url, reports, landing, html


def test_book_builds_without_warnings(book):
    html, returncode, log = book
    if returncode is None:
        pytest.skip("the book was built elsewhere (make book runs its own -W build)")
    assert returncode == 0, log
    assert (html / "index.html").is_file()


def test_index_opens_the_intro(site):
    base_url, _, landing, _ = site
    assert landing == f"{base_url}{TOC['root']}.html"


@pytest.mark.parametrize("page", PAGES)
def test_page_has_no_console_errors(site, page):
    report = site[1][page]
    assert report.console_errors == [], f"{page}: {report.console_errors}"


@pytest.mark.parametrize("page", PAGES)
def test_every_image_loads(site, page):
    report = site[1][page]
    assert report.broken_images == [], f"{page}: images that did not load: {report.broken_images}"


@pytest.mark.skipif(EXECUTE == "off",
                    reason="the chapters' figures exist only when the build executes them")
@pytest.mark.parametrize("page", CHAPTERS)
def test_executed_chapter_shows_its_figures(site, page):
    assert len(site[1][page].images) > 0, f"{page} shows no image: were its cells executed?"


@pytest.mark.parametrize("page", PAGES)
def test_math_is_rendered(site, page):
    report = site[1][page]
    assert report.unrendered_math == [], f"{page}: formulas MathJax did not typeset: {report.unrendered_math[:5]}"
    assert report.raw_math == [], f"{page}: TeX left as plain text: {report.raw_math[:5]}"
    assert report.mjx_containers >= report.math_elements


@pytest.mark.parametrize("page", PAGES)
def test_nothing_is_cut_at_the_right_edge(site, page):
    clipped = site[1][page].clipped
    assert clipped == [], f"{page} at {VIEWPORT['width']} px: " + "; ".join(clipped[:5])


def test_pages_with_math_have_it(site):
    """A guard for the test above: the book has formulas, so some page must show typeset ones."""
    assert sum(report.mjx_containers for report in site[1].values()) > 0


@pytest.mark.parametrize("page", PAGES)
def test_sidebar_lists_every_page_of_the_toc(site, page):
    base_url, reports, _, _ = site
    listed = {link.removeprefix(base_url).split("#")[0] for link in reports[page].sidebar}
    missing = [doc for doc in DOCS[1:] if f"{doc}.html" not in listed]
    assert missing == [], f"{page}: the sidebar lacks {missing}"


def test_generated_pages_load_cleanly(site):
    """The index, the search page, the module index and any other page beyond the toc."""
    others = {page: report for page, report in site[1].items() if page not in PAGES}
    assert {"genindex.html", "search.html"} <= set(others)
    problems = {page: report.console_errors + report.broken_images for page, report in others.items()
                if report.console_errors or report.broken_images}
    assert problems == {}


def test_no_internal_link_is_broken(site):
    base_url, reports, _, html = site
    broken = broken_links(reports, base_url, html)
    assert broken == [], "\n".join(f"{page}: {link} ({reason})" for page, link, reason in broken)


@pytest.mark.parametrize("page", SCREENSHOT_PAGES)
def test_screenshot_is_kept(site, page):
    shot = site[1][page].screenshot
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1280 and height > 900, f"{shot} is {width}x{height}, not a full page"


def test_checks_catch_what_they_look_for(tmp_path):
    """The checker on a two-page site with one of each fault: none may pass unnoticed."""
    (tmp_path / "a.html").write_text(
        "<html><body><nav class='bd-docs-nav'><a href='a.html'>a</a></nav>"
        "<img src='missing.png'><span class='math'>\\(x^2\\)</span><p>$y_1$ typed, not typeset</p>"
        "<a href='b.html#there'>fine</a><a href='b.html#nowhere'>bad anchor</a><a href='gone.html'>gone</a>"
        "<div class='highlight' style='width: 200px'><pre style='overflow: auto'>" + "x = 1 + " * 40 + "1</pre></div>"
        "<div class='highlight' style='width: 200px'><pre>x = 1</pre></div>"
        "<script>console.error('boom')</script><script>null.crash()</script></body></html>")
    (tmp_path / "b.html").write_text("<html><body><h1 id='there'>b</h1></body></html>")
    with serve(tmp_path) as base_url, Chromium() as browser:
        reports = crawl(browser, base_url, tmp_path, ["a.html"], tmp_path / "shots", ["a.html"])
        broken = broken_links(reports, base_url, tmp_path)
    a = reports["a.html"]
    assert set(reports) == {"a.html", "b.html"}
    assert any("boom" in error for error in a.console_errors)
    assert any("crash" in error for error in a.console_errors)
    assert any("missing.png" in error for error in a.console_errors)  # the failed load is logged too
    assert a.broken_images == [base_url + "missing.png"]
    assert a.unrendered_math == ["\\(x^2\\)"] and a.mjx_containers == 0
    assert a.raw_math == ["\\(x^2\\)", "$y_1$ typed, not typeset"]
    assert a.sidebar == [base_url + "a.html"]
    assert len(a.clipped) == 1 and "px too wide: x = 1 + x = 1" in a.clipped[0]
    assert sorted((link.removeprefix(base_url), reason) for _, link, reason in broken) == [
        ("b.html#nowhere", "no id 'nowhere' on b.html"), ("gone.html", "no such file")]
    assert a.screenshot.read_bytes()[:4] == b"\x89PNG"
