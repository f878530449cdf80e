"""`repbench report` in a real browser: Debian's headless chromium driven through selenium and chromedriver.

Each page loads with no console error, every picture has loaded, every local link resolves to a file, a click on a
column header reorders the rows and the filter box hides the others; screenshots of the index and a run page.
Skipped only where chromium or its driver is missing and CI is unset (in CI a missing browser fails).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MISSING = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
if MISSING and not os.environ.get("CI"):
    pytest.skip(f"{', '.join(MISSING)} not installed (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - the skip above comes first: without a browser selenium may be absent too
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from test_report_site import ABLATION, build, make_runs  # noqa: E402

# SVG links (the scatter's points) have no string .href: resolve every attribute against the page's URL.
LINKS = """return Array.from(document.querySelectorAll('a[href], img[src]'))
  .map(e => new URL(e.getAttribute('href') || e.getAttribute('src'), document.baseURI).href)"""
IMAGES = """return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser_site") / "site"
    assert build(make_runs(tmp_path_factory.mktemp("browser_runs")), out) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--window-size=1280,900", "--disable-gpu"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # chromium refuses to run as root inside its sandbox
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield drv
    drv.quit()


def open_page(browser, path: Path) -> list[dict]:
    """Load ``path``; returns the console's SEVERE entries of this load."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.resolve().as_uri())
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def page_of(site: Path, kind: str) -> Path:
    return {"index": site / "index.html", "ablation": site / "reports" / f"grids__{ABLATION.name}.html"}.get(kind) \
        or next((site / "runs").glob(f"*{kind}-*.html"))


def test_a_console_error_is_caught(browser, tmp_path):
    """The check below can fail: a page whose script throws shows up as a SEVERE entry."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    assert any("undefinedFunction" in e["message"] for e in open_page(browser, bad))


@pytest.mark.parametrize("kind,pictures", [("index", 0), ("simclr", 0), ("autoencoder", 1), ("ablation", 1)])
def test_page_loads_clean_with_pictures_and_links(browser, site, kind, pictures):
    path = page_of(site, kind)
    assert open_page(browser, path) == []
    images = browser.execute_script(IMAGES)
    assert len(images) >= pictures
    assert all(complete and width > 0 for _, complete, width in images), images
    local = [urlparse(u) for u in browser.execute_script(LINKS) if u.startswith("file:")]
    assert local and all(Path(unquote(u.path)).is_file() for u in local), [u.path for u in local]


def _column(browser, table: str, col: int, attr: str = "data-sort") -> list[str]:
    rows = browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[col].get_attribute(attr) or "" for r in rows]


def test_clicking_a_header_sorts_the_rows(browser, site):
    open_page(browser, site / "index.html")
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#overview thead th")]
    knn, method = headers.index("kNN %"), headers.index("method")
    header = browser.find_elements(By.CSS_SELECTOR, "#overview thead th")[knn]
    header.click()
    up = [float(v) for v in _column(browser, "overview", knn)]
    names_up = _column(browser, "overview", method, "textContent")
    header.click()
    down = [float(v) for v in _column(browser, "overview", knn)]
    assert up == sorted(up) and down == sorted(up, reverse=True) and len(set(up)) > 1
    # Rows move with their values (methods tied on kNN may keep either order).
    names_down = _column(browser, "overview", method, "textContent")
    assert sorted(zip(down, names_down, strict=True)) == sorted(zip(up, names_up, strict=True)) and names_down != names_up
    assert header.get_attribute("aria-sort") == "descending"


def test_filter_box_hides_other_rows(browser, site):
    open_page(browser, site / "index.html")
    browser.find_element(By.CSS_SELECTOR, 'input[data-filter="runs"]').send_keys("simclr")
    shown = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr") if r.is_displayed()]
    assert len(shown) == 1 and "simclr" in shown[0]


@pytest.mark.parametrize("kind", ["index", "autoencoder"])
def test_screenshot(browser, site, tmp_path, kind):
    assert open_page(browser, page_of(site, kind)) == []
    shot = tmp_path / f"{kind}.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


COMMITTED = Path(__file__).resolve().parent.parent / "results" / "report" / "site"


@pytest.mark.skipif(not (COMMITTED / "index.html").is_file(), reason="no committed report under results/report/site")
def test_committed_report_loads_clean(browser):
    """Every page of the committed report (results/report/site): no console error, pictures loaded, links resolve."""
    problems = []
    for path in sorted(COMMITTED.rglob("*.html")):
        errors = open_page(browser, path)
        images = [src for src, complete, width in browser.execute_script(IMAGES) if not (complete and width > 0)]
        links = [u.path for u in map(urlparse, browser.execute_script(LINKS))
                 if u.scheme == "file" and not Path(unquote(u.path)).is_file()]
        if errors or images or links:
            problems.append((path.name, errors, images, links))
    assert problems == []
