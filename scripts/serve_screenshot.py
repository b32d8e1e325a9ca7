"""Screenshot of the ``pcamlab serve`` page with real predictions, for the README.

Serves MODEL on 127.0.0.1 (a thread of this process), opens the page in Debian's headless Chromium
(selenium + chromium-driver), uploads ``--patches`` real PCam patches of the shipped sample's
validation split (half of each class, seeded), waits for every probability and Grad-CAM, sorts by
probability and saves the window as a palette PNG (small enough for the repository).

Usage:
    python scripts/serve_screenshot.py runs/demo/best.safetensors docs/serve-page.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1600, help="at most; the page's own height when smaller")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from pcamlab.data import sample_root
    from pcamlab.serve import BackgroundServer, ServedModel, ServeSettings, create_app

    generator = np.random.default_rng(args.seed)
    files = []
    for label in ("1", "0"):
        candidates = sorted((sample_root() / "valid" / label).glob("*.jpg"))
        files += [candidates[i] for i in sorted(generator.choice(len(candidates), args.patches // 2, replace=False))]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={args.width},{args.height}", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    try:
        with BackgroundServer(create_app(ServedModel.load(args.model), ServeSettings())) as server:
            driver.get(server.url)
            time.sleep(1.0)
            driver.find_element(By.ID, "file-input").send_keys("\n".join(str(path) for path in files))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                loaded = driver.execute_script(
                    "return Array.from(document.querySelectorAll('img.gradcam')).filter(i => i.complete && i.naturalWidth).length")
                if loaded == len(files):
                    break
                time.sleep(0.3)
            else:
                print("serve_screenshot: Grad-CAM pictures did not all arrive", file=sys.stderr)
                return 1
            Select(driver.find_element(By.ID, "sort")).select_by_value("probability-desc")
            time.sleep(0.5)
            height = driver.execute_script(  # the page's content plus the window's own frame
                "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom + window.scrollY)"
                " + (window.outerHeight - window.innerHeight)")
            driver.set_window_size(args.width, min(args.height, int(height)))
            time.sleep(0.3)
            raw = Path(args.out).with_suffix(".raw.png")
            driver.save_screenshot(str(raw))
    finally:
        driver.quit()
    picture = Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    picture.save(args.out, optimize=True)
    raw.unlink()
    print(f"{args.out}: {Path(args.out).stat().st_size // 1024} KB, {len(files)} patches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
