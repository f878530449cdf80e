"""Screenshots of a `repbench report` site in Debian's headless chromium (selenium), for results/report/.

    python scripts/report_screenshots.py SITE OUT_DIR [--run RUN_PAGE] [--ablation REPORT_PAGE]

Writes OUT_DIR/index.png, run.png and ablation.png (the page's top, window 1280 wide, up to --height tall);
RUN_PAGE and REPORT_PAGE are paths inside SITE (default: the first run page and the first ablation page).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def driver(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", f"--window-size={width},{height}", "--disable-gpu", "--hide-scrollbars"):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # chromium refuses to run as root inside its sandbox
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def shoot(drv: webdriver.Chrome, page: Path, out: Path, height: int) -> None:
    drv.get(page.resolve().as_uri())
    full = int(drv.execute_script("return document.documentElement.scrollHeight"))
    drv.set_window_size(1280, min(full, height))
    drv.save_screenshot(str(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("site", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--run", help="run page inside SITE (default the first)")
    p.add_argument("--ablation", help="report page inside SITE (default the first)")
    p.add_argument("--height", type=int, default=1400)
    a = p.parse_args()
    run = a.site / a.run if a.run else sorted((a.site / "runs").glob("*.html"))[0]
    ablation = a.site / a.ablation if a.ablation else sorted((a.site / "reports").glob("*.html"))[0]
    a.out.mkdir(parents=True, exist_ok=True)
    drv = driver()
    try:
        for name, page in (("index", a.site / "index.html"), ("run", run), ("ablation", ablation)):
            shoot(drv, page, a.out / f"{name}.png", a.height)
            print(f"wrote {a.out / f'{name}.png'} from {page}")
    finally:
        drv.quit()


if __name__ == "__main__":
    main()
