"""pcamlab.evaluate.plots: every figure is a real PNG, and the numbers drawn are the right ones."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from pcamlab.errors import ConfigError, DataError
from pcamlab.evaluate import plots
from pcamlab.evaluate.metrics import roc_curve

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scores():
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 2, 200)
    probabilities = np.clip(generator.normal(0.3 + 0.4 * labels, 0.2), 0, 1).round(3)
    return labels, probabilities


def assert_png(path, minimum=(300, 300)):
    """The file is a decodable, non-blank PNG of at least ``minimum`` pixels."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.width >= minimum[0] and image.height >= minimum[1]
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # something was drawn on the white background
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # the atomic write cleaned up


def test_every_plot_writes_a_png(tmp_path, scores):
    labels, probabilities = scores
    (tmp_path / "scores.png").write_bytes(b"old")  # an existing file is replaced
    written = [
        plots.plot_roc(labels, probabilities, tmp_path / "a" / "roc.png", ci=[0.8, 0.9], threshold=0.5, label="m"),
        plots.plot_pr(labels, probabilities, tmp_path / "pr.png"),
        plots.plot_confusion_matrix(labels, probabilities, 0.5, tmp_path / "confusion_matrix.png"),
        plots.plot_reliability(labels, probabilities, tmp_path / "reliability.png"),
        plots.plot_score_histogram(labels, probabilities, tmp_path / "scores.png", threshold=0.4, log=True),
    ]
    assert written[0] == tmp_path / "a" / "roc.png"  # parent folder created, Path returned
    for path in written:
        assert_png(path)


def test_training_curves_from_csv_with_missing_columns_and_cells(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text(
        "epoch,train_loss,val_loss,val_auc,learning_rate,seconds\n"
        "1,0.69,0.65,0.71,0.001,3.0\n"
        "2,0.50,,0.80,0.002,3.1\n"
        "3,0.41,0.44,0.86,0.0015,2.9\n"
    )
    columns = plots.read_history(history)
    assert np.isnan(columns["val_loss"][1]) and columns["val_auc"][2] == 0.86
    assert "val_accuracy" not in columns
    assert_png(plots.plot_training_curves(history, tmp_path / "curves.png"), minimum=(800, 300))


def test_training_curves_from_a_list_without_epochs(tmp_path):
    rows = [{"train_loss": 1.0}, {"train_loss": 0.5}, {"train_loss": 0.4}]
    np.testing.assert_array_equal(plots.read_history(rows)["epoch"], [1, 2, 3])
    assert_png(plots.plot_training_curves(rows, tmp_path / "curves.png"), minimum=(800, 300))
    with pytest.raises(DataError, match="does not exist"):
        plots.plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png")
    with pytest.raises(DataError, match="has no epochs"):
        plots.plot_training_curves([], tmp_path / "x.png")


def test_operating_point_lies_on_the_roc_curve(scores):
    labels, probabilities = scores
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
    vertices = set(zip(false_positive_rate.tolist(), true_positive_rate.tolist()))
    for threshold in (0.0, 0.1234, 0.5, probabilities[7], 0.9999, 1.0):
        point = plots.roc_operating_point(labels, probabilities, threshold)
        assert point in vertices
        predicted = probabilities >= threshold
        expected_tpr = sk.recall_score(labels, predicted)
        expected_fpr = 1 - sk.recall_score(labels, predicted, pos_label=0)
        assert point == pytest.approx((expected_fpr, expected_tpr))
    assert plots.roc_operating_point(labels, probabilities, 0.0) == (1.0, 1.0)


def test_confusion_matrix_counts_and_rates(scores):
    labels, probabilities = scores
    counts, rates = plots.confusion_matrix(labels, probabilities, 0.5)
    np.testing.assert_array_equal(counts, sk.confusion_matrix(labels, probabilities >= 0.5))
    np.testing.assert_allclose(rates.sum(axis=1), [1.0, 1.0])
    counts, rates = plots.confusion_matrix([0, 0, 0], [0.1, 0.6, 0.7], 0.5)
    np.testing.assert_array_equal(counts, [[1, 2], [0, 0]])
    np.testing.assert_allclose(rates, [[1 / 3, 2 / 3], [0.0, 0.0]])  # absent class: a row of zeros


def test_single_class_still_draws_with_an_explanation(tmp_path):
    labels, probabilities = [0, 0, 0, 0], [0.1, 0.2, 0.7, 0.4]
    assert_png(plots.plot_roc(labels, probabilities, tmp_path / "roc.png", threshold=0.5))
    assert_png(plots.plot_pr(labels, probabilities, tmp_path / "pr.png"))


def test_bad_arguments_raise_one_line_errors(tmp_path, scores):
    labels, probabilities = scores
    with pytest.raises(ConfigError, match="must end in .png") as caught:
        plots.plot_pr(labels, probabilities, tmp_path / "pr.jpg")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "pr.jpg").exists()
    with pytest.raises(ConfigError, match="2 classes"):
        plots.plot_confusion_matrix(labels, probabilities, 0.5, tmp_path / "cm.png", class_names=("a",))
    with pytest.raises(DataError, match="this split has no labels"):
        plots.plot_roc(np.full(4, -1), [0.1, 0.2, 0.3, 0.4], tmp_path / "roc.png")


def test_importing_plots_leaves_pyplot_alone():
    code = "import sys, pcamlab.evaluate.plots; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
