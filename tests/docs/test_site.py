"""The documentation site in a real browser: the built site is served on localhost and headless Chromium opens the
start page and the tutorial (the quickstart notebook, executed at build time), which must show their headings and
figures that have loaded, and a tutorial student that has visibly learned.

``make test`` builds the site (``make docs``) before pytest; a site missing or older than its sources is built here
(notebooks executed, a few minutes). The browser is Debian's ``chromium`` (``make test`` installs it with apt when
absent) or ``HD_CHROMIUM``; without one the test skips, except in CI, where it fails.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "site"
SOURCES = [ROOT / "mkdocs.yml", ROOT / "docs", ROOT / "notebooks", ROOT / "CHANGELOG.md", ROOT / "CITATION.cff"]
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"]
UNTRAINED_FORCE_MAE = 828.0  # meV/Å: the quickstart's student at its initial weights (the flat parity line)


def _missing_browser(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have it (make test installs Debian's chromium with apt)")
    pytest.skip(reason)


def chromium() -> str:
    """The Chromium executable: HD_CHROMIUM, else chromium (Debian) or chromium-browser on the PATH."""
    path = os.environ.get("HD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _missing_browser("no Chromium found (apt-get install chromium, or set HD_CHROMIUM)")
    return path


def newest_source() -> float:
    files = (p for s in SOURCES for p in ([s] if s.is_file() else s.rglob("*")) if p.is_file())
    return max(p.stat().st_mtime for p in files)


@pytest.fixture(scope="module")
def site() -> Path:
    """The built site, (re)built strictly with the notebooks executed when it is missing or stale."""
    index = SITE / "index.html"
    if not index.exists() or index.stat().st_mtime < newest_source():
        env = {**os.environ, "HD_DOCS_EXECUTE": "true", "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
        done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-3000:]}"
    return SITE


@pytest.fixture(scope="module")
def served(site):
    """The site on http://127.0.0.1:<free port>/."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install 'hessdistill[test]')")
    executable = chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str):
    page = browser.new_page()
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url}: HTTP {response and response.status}"
    return page, failed


def loaded_images(page) -> list[int]:
    """naturalWidth of every <img> of the page (0: not loaded), after scrolling each into view."""
    page.evaluate("Array.from(document.images).forEach(img => img.scrollIntoView())")
    page.wait_for_function("Array.from(document.images).every(img => img.complete)")
    return page.eval_on_selector_all("img", "imgs => imgs.map(img => img.naturalWidth)")


def test_start_page_shows_its_headings(browser, served):
    page, failed = open_page(browser, served)
    assert page.locator("article h1").first.inner_text().strip(" ¶\n") == "hessdistill"
    for heading in ("Where to start", "Headline results"):
        assert page.get_by_role("heading", name=heading).first.is_visible(), heading
    assert page.get_by_role("link", name="10-minute tutorial").first.is_visible()
    assert not [url for url in failed if url.startswith(served)], f"requests to the site failed: {failed}"
    page.close()


def test_tutorial_page_shows_its_figures_and_a_student_that_learned(browser, served):
    page, failed = open_page(browser, served + "tutorials/quickstart/")
    title = page.locator("h1").first
    assert title.is_visible() and title.inner_text().strip().startswith("10-minute tutorial")
    sections = ("1. Your data", "2. Teacher Hessians", "3. Train a student", "4. Evaluate", "5. MD with the student")
    for heading in sections:
        assert page.get_by_role("heading", name=heading).first.is_visible(), heading
    widths = loaded_images(page)
    # the Hessian and its spectrum, the learning curve, the parity plot, the MD temperature
    assert len(widths) >= 4 and all(w > 0 for w in widths), f"figures on the page (naturalWidth): {widths}"
    test_force_mae = re.search(r"'test/force_mae': ([0-9.]+)", page.locator("body").inner_text())
    assert test_force_mae, "the training cell's test metrics are not on the page"
    assert float(test_force_mae[1]) < UNTRAINED_FORCE_MAE / 2, "the tutorial's student did not visibly learn"
    assert not [url for url in failed if url.startswith(served)], f"requests to the site failed: {failed}"
    page.close()
