"""The HTML run report: self-contained, complete, tolerant of missing pieces, renders in a browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import find_chromium, require_service
from PIL import Image

from pcamlab.config import RunConfig, config_to_dict
from pcamlab.errors import DataError
from pcamlab.evaluate.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

METRICS = {
    "n": 300, "n_positive": 163, "threshold": 0.5, "accuracy": 0.9167, "balanced_accuracy": 0.9088,
    "precision": 0.867, "recall": 0.8123, "specificity": 0.8175, "f1": 0.9288, "roc_auc": 0.9832,
    "roc_auc_ci": [0.9712, 0.9912], "pr_auc": 0.9866, "log_loss": 0.3287, "brier": 0.0981, "ece": 0.1793,
    "tp": 163, "fp": 25, "tn": 112, "fn": 0, "bootstrap": 100,
    "warnings": ["roc_auc_ci: 2 of 100 bootstrap resamples held one class only and were dropped"],
    "at_thresholds": {"youden": {"threshold": 0.41, "recall": 0.95}, "high_sensitivity": {"threshold": 0.2, "recall": 0.99}},
    "roc_curve": {"fpr": [i / 20 for i in range(21)]},
}


def png_bytes(width: int = 40, height: int = 30, colour=(200, 30, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def make_run(root: Path) -> Path:
    """A run folder like ``pcamlab train`` + ``evaluate`` + ``explain`` leave behind, with a few traps."""
    run = root / "demo-run"
    (run / "eval-valid").mkdir(parents=True)
    (run / "explain-valid").mkdir()
    (run / "tensorboard").mkdir()
    config = RunConfig()
    config.model.name = "baseline"
    config.data.path = "<b>not bold</b>"  # must be escaped, not rendered
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    (run / "history.csv").write_text(
        "epoch,train_loss,val_loss,val_auc,val_accuracy,learning_rate,seconds,images_per_second\n"
        "1,0.62,0.58,0.81,0.74,0.002,10.5,900\n2,0.45,0.47,0.88,0.80,0.0015,10.1,950\n3,0.38,0.49,0.86,0.79,0.001,10.2,940\n"
    )
    (run / "summary.json").write_text(json.dumps({"data": {"train": {"normal": 10000, "tumour": 9171}}, "seconds": 70.2}))
    (run / "eval-valid" / "metrics.json").write_text(json.dumps(METRICS))
    (run / "eval-valid" / "roc.png").write_bytes(png_bytes(colour=(255, 0, 0)))
    (run / "eval-valid" / "confusion_matrix.png").write_bytes(png_bytes(colour=(0, 255, 0)))
    (run / "explain-valid" / "gradcam_gallery.png").write_bytes(png_bytes(colour=(0, 0, 255)))
    (run / "explain-valid" / "custom_plot.png").write_bytes(png_bytes())
    (run / "explain-valid" / "broken.png").write_bytes(b"not a png at all")
    (run / "tensorboard" / "ignored.png").write_bytes(png_bytes())
    return run


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_report_embeds_everything_and_explains_it(tmp_path):
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    # self-contained: no external resource, no script, every image a decodable PNG data URI
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    sources = image_sources(page)
    assert len(sources) == 5  # training curves + roc + confusion + gradcam + custom; not broken, not tensorboard
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == PNG_SIGNATURE
    # every figure has a caption and a plain-language line
    assert page.count('<p class="meaning">What this means:') >= 5
    for title in ("Training curves", "ROC curve", "Confusion matrix", "Grad-CAM heat maps", "Custom plot"):
        assert title in page
    # the pieces of the run are all there
    assert "0.9832" in page and "[0.9712, 0.9912]" in page and "Sensitivity (recall)" in page
    assert "bootstrap resamples held one class only" in page  # evaluation warnings are listed
    assert "Metrics at other thresholds" in page and "high sensitivity" in page  # nested threshold table
    assert "Best validation AUC 0.8800 at epoch 2" in page
    assert "data.train.tumour" in page and "9171" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold</b>" not in page
    assert "broken.png is not a valid PNG file" in page
    assert "A randomly chosen tumour patch scores above a randomly chosen normal patch 98.3% of the time" in page
    assert "finds 81.2% of tumour patches" in page
    assert not list(run.glob(".*"))  # no temporary files left behind


def test_report_on_an_empty_run_folder_notes_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="is not a run folder"):  # finding nothing is not success
        write_report(tmp_path, tmp_path / "out" / "page.html")
    assert not (tmp_path / "out").exists()
    (tmp_path / "history.csv").write_text("epoch,train_loss\n")  # a run that has just started
    path = write_report(tmp_path, tmp_path / "out" / "page.html")
    page = path.read_text()
    for missing in ("No config.yaml", "No summary.json", "No metrics.json", "No PNG figures"):
        assert missing in page
    assert image_sources(page) == []


def test_report_survives_malformed_files(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    (tmp_path / "summary.json").write_text("[1, 2]")
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    (tmp_path / "history.csv").write_text("epoch,train_loss\n")
    page = write_report(tmp_path).read_text()
    assert "metrics.json could not be read" in page and "is not readable JSON" in page
    assert "summary.json holds a list, not a mapping" in page
    assert "history.csv has no epochs yet" in page
    assert "model: [unclosed" in page  # raw config still shown


def test_report_rejects_a_missing_run_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_report_renders_in_chromium(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        require_service("chromium", "headless Chromium not installed (apt-get install chromium)")
    run = make_run(tmp_path)
    page = write_report(run).read_text()
    expected = len(image_sources(page))
    probe = (
        '<script>window.addEventListener("load", function () {'
        "var images = Array.from(document.images);"
        "var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;"
        'var marker = document.createElement("div"); marker.id = "image-check";'
        'marker.textContent = "loaded=" + loaded + " total=" + images.length;'
        "document.body.appendChild(marker); });</script>"
    )
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", probe + "</body>"))
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000", "--dump-dom", checked.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    match = re.search(r'id="image-check">loaded=(\d+) total=(\d+)<', result.stdout)
    assert match, f"Chromium printed no image check (exit {result.returncode}): {result.stderr[-500:]}"
    assert (int(match.group(1)), int(match.group(2))) == (expected, expected)


def test_report_of_a_cross_validation_folder_shows_every_fold_and_mean_sd(tmp_path):
    """Issue 9 2.10: report on a k-fold folder printed nothing useful."""
    from test_compare import make_cv_folder

    from pcamlab.evaluate.report import write_report

    folder = make_cv_folder(tmp_path)
    page = write_report(folder).read_text()
    assert 'id="cross-validation"' in page and "3-fold cross-validation" in page
    assert "0.9200 &plusmn; 0.0200" in page  # val AUC mean +- sd, also on the glance card
    assert "0.9000" in page and "0.9400" in page  # every fold's AUC
    assert "Validation accuracy at 0.5" in page
