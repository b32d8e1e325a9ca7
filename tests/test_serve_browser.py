"""The ``pcamlab serve`` page in a real headless Chromium (Debian's chromium + chromium-driver, via selenium).

uvicorn serves a real checkpoint on 127.0.0.1 and a free port, in a thread the test starts and stops.
The browser uploads a real PCam patch (a JPEG of the shipped sample) and a zip of two more, and must
show each probability (equal to the predictor's), its class and its Grad-CAM picture, sort by
probability, and download the CSV.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="pcamlab serve needs fastapi (pip install 'pcamlab[serve]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install selenium)")

from conftest import find_chromium, require_service  # noqa: E402
from fixtures_data import sample_files  # noqa: E402
from fixtures_serve import png_bytes, serve_patches, write_serve_checkpoint  # noqa: E402
from pcamlab.data.readers import decode_image_file  # noqa: E402
from pcamlab.runtime import load_predictor  # noqa: E402
from pcamlab.serve import BackgroundServer, ServedModel, ServeSettings, create_app  # noqa: E402

CHROMIUM = find_chromium()
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(autouse=True)
def browser_installed():
    if not (CHROMIUM and CHROMEDRIVER):
        require_service("chromium", "headless Chromium and its WebDriver are not installed (apt-get install chromium chromium-driver)")


# name, probability text, class text and loaded Grad-CAM width of every card, in page order
CARDS_SCRIPT = """
return Array.from(document.querySelectorAll('article.patch')).map((card) => {
  const text = (selector) => { const node = card.querySelector(selector); return node ? node.textContent : null; };
  const gradcam = card.querySelector('img.gradcam');
  return {name: card.dataset.name, probability: text('.probability'), class: text('.class'),
          gradcam: gradcam && gradcam.complete ? gradcam.naturalWidth : 0};
});
"""
WAIT_SECONDS = 30  # a busy 2-core machine: Grad-CAM of three patches takes well under this


def wait_for(condition, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"the page did not show {what} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    return write_serve_checkpoint(tmp_path_factory.mktemp("browser") / "best.safetensors", serve_patches(6)[0])


@pytest.fixture()
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no driver download: Debian's
    try:
        yield driver
    finally:
        driver.quit()


def test_page_uploads_real_patches_and_shows_probability_class_and_gradcam(browser, checkpoint_path, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    jpeg = sample_files(2, "valid", seed=5)[0][1]  # a real PCam patch as shipped (tumour folder)
    zipped_images = serve_patches(2)[0]
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as file:
        for index, image in enumerate(zipped_images):
            file.writestr(f"more/p{index}.png", png_bytes(image))
    predictor = load_predictor(checkpoint_path)
    expected = {
        jpeg.name: float(predictor.predict_proba(np.array(decode_image_file(jpeg))[None])[0]),
        **{f"more.zip/more/p{i}.png": float(p) for i, p in enumerate(predictor.predict_proba(zipped_images))},
    }
    model = ServedModel.load(checkpoint_path)
    with BackgroundServer(create_app(model, ServeSettings(workers=1))) as server:
        assert server.url.startswith("http://127.0.0.1:")
        browser.get(server.url)
        wait_for(lambda: "simple-cnn" in browser.find_element(By.ID, "model-line").text, "the model card")
        facts = browser.find_element(By.ID, "card-facts").text
        assert "threshold" in facts and "val_auc 0.8765" in facts

        upload = browser.find_element(By.ID, "file-input")
        upload.send_keys(str(jpeg))
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "article.patch .probability"), "a probability")
        upload.send_keys(str(archive))  # unpacked in the browser (DecompressionStream)

        def cards() -> dict[str, dict]:  # read in one script: the page re-renders cards as results arrive
            return {card["name"]: card for card in browser.execute_script(CARDS_SCRIPT)}

        wait_for(lambda: len(cards()) == 3 and all(card["probability"] for card in cards().values()),
                 "three scored patches")
        for name, card in cards().items():
            shown = float(card["probability"].split()[-1])
            assert shown == pytest.approx(expected[name], abs=1e-4), name  # 4 decimals on the page
            assert card["class"] == ("tumour" if expected[name] >= model.threshold else "normal")
        wait_for(lambda: all(card["gradcam"] == 96 for card in cards().values()), "three Grad-CAM pictures")

        Select(browser.find_element(By.ID, "sort")).select_by_value("probability-desc")
        shown = [float(card["probability"].split()[-1]) for card in browser.execute_script(CARDS_SCRIPT)]
        assert shown == sorted(shown, reverse=True) and len(shown) == 3

        browser.find_element(By.ID, "download").click()
        download = tmp_path / "downloads" / "predictions.csv"
        wait_for(download.is_file, "the downloaded CSV")
        rows = list(csv.DictReader(io.StringIO(download.read_text())))
        assert [row["patch"] for row in rows] == [name for name, _ in sorted(expected.items(), key=lambda kv: -kv[1])]
        assert np.allclose([float(row["probability"]) for row in rows], sorted(expected.values(), reverse=True), atol=1e-6)
        severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []  # no script error, no Content-Security-Policy violation


def test_page_draws_a_slide_heatmap_over_the_thumbnail_and_zooms(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from pcamlab.slide import make_synthetic_slide, sample_pools

    root = tmp_path / "slides"
    root.mkdir()
    make_synthetic_slide(root / "little.tif", *sample_pools("valid"), width=1152, height=960, seed=3)
    model = ServedModel.load(Path(__file__).parent / "assets" / "slide_model.safetensors")
    with BackgroundServer(create_app(model, ServeSettings(slide_root=root))) as server:
        browser.get(server.url)
        wait_for(lambda: browser.find_element(By.ID, "slides").is_displayed(), "the slide section")
        assert browser.find_element(By.ID, "slide-select").get_attribute("value") == "little.tif"
        browser.find_element(By.CSS_SELECTOR, "#slide-form button[type=submit]").click()
        wait_for(lambda: "slide score" in browser.find_element(By.ID, "slide-status").text, "the slide summary", 60)
        sizes = browser.execute_script("""
            const thumbnail = document.getElementById('slide-thumbnail'), heat = document.getElementById('slide-heatmap');
            return [thumbnail.naturalWidth, heat.naturalWidth, heat.naturalHeight, thumbnail.naturalHeight,
                    thumbnail.getBoundingClientRect().width, heat.getBoundingClientRect().width];""")
        assert sizes[0] > 0 and sizes[0:2] == [sizes[1], sizes[0]] and sizes[2] == sizes[3]  # same picture size
        assert sizes[4] == pytest.approx(sizes[5], abs=1)  # the heatmap lies exactly over the thumbnail
        before = sizes[4]
        browser.find_element(By.ID, "zoom-in").click()
        after = browser.execute_script("return document.getElementById('slide-heatmap').getBoundingClientRect().width")
        assert after == pytest.approx(before * 1.5, rel=0.02)
        assert browser.find_element(By.ID, "geojson-link").get_attribute("href").startswith("blob:")
        severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []


def test_docs_page_lists_the_routes_offline(browser, checkpoint_path):
    from selenium.webdriver.common.by import By

    with BackgroundServer(create_app(ServedModel.load(checkpoint_path), ServeSettings(workers=1))) as server:
        browser.get(server.url + "docs")
        text = wait_for(lambda: "POST /v1/predict" in browser.find_element(By.ID, "routes").text
                        and browser.find_element(By.ID, "routes").text, "the routes")
        assert "GET /v1/model" in text and "Answers: 200" in text
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
