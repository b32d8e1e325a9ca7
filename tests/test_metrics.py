"""pcamlab.evaluate.metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import calibration, metrics as sk

from pcamlab.errors import ConfigError, DataError
from pcamlab.evaluate import metrics

# Six patches written out by hand, threshold 0.5:
#   label:       0    0    0    1     1    1
#   probability: 0.1  0.4  0.6  0.35  0.8  0.9
#   predicted:   0    0    1    0     1    1   -> tp 2, fp 1, tn 2, fn 1
HAND_LABELS = [0, 0, 0, 1, 1, 1]
HAND_PROBABILITIES = [0.1, 0.4, 0.6, 0.35, 0.8, 0.9]


def random_scores(seed: int, count: int = 400):
    """Labels and probabilities with ties (rounded to 2 decimals) and scores exactly 0 and 1."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 2, count)
    probabilities = np.clip(generator.normal(0.35 + 0.3 * labels, 0.25), 0.0, 1.0).round(2)
    return labels, probabilities


def test_hand_computed_six_patches():
    result = metrics.compute_metrics(HAND_LABELS, HAND_PROBABILITIES, 0.5, bootstrap=0)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (2, 1, 2, 1)
    assert result["n"] == 6 and result["n_positive"] == 3
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    # AUC: of 9 (positive, negative) pairs, 0.35 beats only 0.1, 0.8 and 0.9 beat all three -> 7/9.
    assert result["roc_auc"] == pytest.approx(7 / 9)
    # AP: ranked 0.9+ 0.8+ 0.6- 0.4- 0.35+ 0.1-; precision at each positive 1, 1, 3/5.
    assert result["pr_auc"] == pytest.approx((1 + 1 + 3 / 5) / 3)
    assert result["brier"] == pytest.approx((0.01 + 0.16 + 0.36 + 0.65**2 + 0.04 + 0.01) / 6)
    expected_log_loss = -(
        math.log(0.9) + math.log(0.6) + math.log(0.4) + math.log(0.35) + math.log(0.8) + math.log(0.9)
    ) / 6
    assert result["log_loss"] == pytest.approx(expected_log_loss)
    # ECE with 15 bins: every patch falls in its own bin, so ECE = mean |label - probability|.
    assert result["ece"] == pytest.approx((0.1 + 0.4 + 0.6 + 0.65 + 0.2 + 0.1) / 6)
    assert result["roc_auc_ci"] is None and result["warnings"] == []


def test_ece_with_a_shared_bin_by_hand():
    # Bin [0.667, 0.733) holds 0.7, 0.7, 0.72 with 2 of 3 positive: gap |2/3 - 0.70667| = 0.04.
    # Bin [0.067, 0.133) holds 0.1 with label 0: gap 0.1.  ECE = (3 * 0.04 + 1 * 0.1) / 4.
    value = metrics.expected_calibration_error([0, 1, 1, 0], [0.7, 0.7, 0.72, 0.1])
    assert value == pytest.approx((3 * 0.04 + 0.1) / 4)
    assert metrics.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert metrics.expected_calibration_error([1, 0], [0.0, 1.0]) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_scikit_learn(seed):
    labels, probabilities = random_scores(seed)
    result = metrics.compute_metrics(labels, probabilities, 0.45, bootstrap=0)
    predicted = (probabilities >= 0.45).astype(int)
    assert result["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities), abs=1e-12)
    assert result["pr_auc"] == pytest.approx(sk.average_precision_score(labels, probabilities), abs=1e-12)
    assert result["log_loss"] == pytest.approx(sk.log_loss(labels, probabilities), abs=1e-12)
    assert result["brier"] == pytest.approx(sk.brier_score_loss(labels, probabilities), abs=1e-12)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert result["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert result["precision"] == pytest.approx(sk.precision_score(labels, predicted))
    assert result["recall"] == pytest.approx(sk.recall_score(labels, predicted))
    assert result["specificity"] == pytest.approx(sk.recall_score(labels, predicted, pos_label=0))
    assert result["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    (tn, fp), (fn, tp) = sk.confusion_matrix(labels, predicted)
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (tn, fp, fn, tp)


def test_curves_match_scikit_learn():
    labels, probabilities = random_scores(3, 300)
    false_positive_rate, true_positive_rate, thresholds = metrics.roc_curve(labels, probabilities)
    sk_fpr, sk_tpr, sk_thresholds = sk.roc_curve(labels, probabilities, drop_intermediate=False)
    np.testing.assert_allclose(false_positive_rate, sk_fpr)
    np.testing.assert_allclose(true_positive_rate, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    precision, recall, pr_thresholds = metrics.precision_recall_curve(labels, probabilities)
    sk_precision, sk_recall, sk_pr_thresholds = sk.precision_recall_curve(labels, probabilities)
    np.testing.assert_allclose(precision, sk_precision)
    np.testing.assert_allclose(recall, sk_recall)
    np.testing.assert_allclose(pr_thresholds, sk_pr_thresholds)


def test_reliability_bins_match_calibration_curve():
    generator = np.random.default_rng(4)
    probabilities = generator.random(500)  # continuous, so no value sits exactly on a bin edge
    labels = (generator.random(500) < probabilities).astype(int)
    table = metrics.reliability_bins(labels, probabilities, 15)
    filled = table["counts"] > 0
    fraction, mean = calibration.calibration_curve(labels, probabilities, n_bins=15, strategy="uniform")
    np.testing.assert_allclose(table["fraction_positive"][filled], fraction)
    np.testing.assert_allclose(table["mean_predicted"][filled], mean)
    assert table["counts"].sum() == 500
    expected = np.sum(table["counts"][filled] * np.abs(fraction - mean)) / 500
    assert metrics.expected_calibration_error(labels, probabilities) == pytest.approx(expected)


def test_bootstrap_equals_a_plain_loop_over_the_same_resamples():
    labels, probabilities = random_scores(5, 150)
    resamples = 60
    result = metrics.bootstrap_roc_auc(labels, probabilities, resamples=resamples, seed=7)
    drawn = np.random.default_rng(7).integers(0, 150, size=(resamples, 150))
    values = [sk.roc_auc_score(labels[row], probabilities[row]) for row in drawn]
    low, high = np.percentile(values, [2.5, 97.5])
    assert result["low"] == pytest.approx(low, abs=1e-12)
    assert result["high"] == pytest.approx(high, abs=1e-12)
    assert result["dropped"] == 0
    chunked = metrics.bootstrap_roc_auc(labels, probabilities, resamples=resamples, seed=7, chunk_size=1000)
    assert chunked == result


def test_bootstrap_ci_is_seeded_and_brackets_the_auc():
    labels, probabilities = random_scores(6, 500)
    first = metrics.compute_metrics(labels, probabilities, bootstrap=300, seed=1)
    again = metrics.compute_metrics(labels, probabilities, bootstrap=300, seed=1)
    other = metrics.compute_metrics(labels, probabilities, bootstrap=300, seed=2)
    low, high = first["roc_auc_ci"]
    assert low < first["roc_auc"] < high
    assert first["roc_auc_ci"] == again["roc_auc_ci"]
    assert first["roc_auc_ci"] != other["roc_auc_ci"]
    assert first["bootstrap"] == 300


def test_bootstrap_drops_single_class_resamples_and_says_so():
    labels = [0] * 9 + [1]
    probabilities = np.linspace(0.0, 1.0, 10)
    result = metrics.compute_metrics(labels, probabilities, bootstrap=200, seed=0)
    assert result["roc_auc"] == 1.0
    assert any("bootstrap resamples" in note for note in result["warnings"])


def test_result_is_plain_json():
    labels, probabilities = random_scores(7, 100)
    result = metrics.compute_metrics(labels, probabilities, bootstrap=50)
    assert json.loads(json.dumps(result)) == result
    for key, value in result.items():
        assert value is None or type(value) in (int, float, list, str), (key, type(value))


def test_single_class_gives_none_auc_with_a_warning():
    result = metrics.compute_metrics([0, 0, 0], [0.2, 0.7, 0.1], bootstrap=100)
    assert result["roc_auc"] is None and result["roc_auc_ci"] is None
    assert any("roc_auc is undefined" in note and "normal (0)" in note for note in result["warnings"])
    assert result["pr_auc"] is None
    assert result["recall"] == 0.0
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)  # specificity, the only class present
    positives_only = metrics.compute_metrics([1, 1], [0.2, 0.7], bootstrap=10)
    assert positives_only["roc_auc"] is None and positives_only["pr_auc"] == 1.0
    assert any("tumour (1)" in note for note in positives_only["warnings"])


def test_zero_division_gives_zero_with_a_note():
    result = metrics.compute_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9, bootstrap=0)
    assert result["precision"] == 0.0 and result["f1"] == 0.0
    assert any(note.startswith("precision set to 0.0") for note in result["warnings"])
    assert result["roc_auc"] == 1.0


@pytest.mark.parametrize(
    ("labels", "probabilities", "fragment"),
    [
        ([0, 1], [0.5], "differ in length"),
        ([-1, -1, 0], [0.1, 0.2, 0.3], "this split has no labels"),
        ([0, 2], [0.1, 0.2], "must be 0 or 1"),
        (["normal", "tumour"], [0.1, 0.2], "must be the integers 0 and 1"),
        ([0, 1], [0.1, float("nan")], "must be finite"),
        ([0, 1], [0.1, 1.5], "must lie in [0, 1]"),
        ([0, 1], [-2.0, 0.5], "not the raw logit"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise_one_line_data_errors(labels, probabilities, fragment):
    with pytest.raises(DataError) as caught:
        metrics.compute_metrics(labels, probabilities, bootstrap=0)
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="threshold must be a number in"):
        metrics.compute_metrics([0, 1], [0.1, 0.9], threshold=1.5)
    with pytest.raises(ConfigError, match="bootstrap must be a non-negative integer"):
        metrics.compute_metrics([0, 1], [0.1, 0.9], bootstrap=-1)
    with pytest.raises(ConfigError, match="bins must be a positive integer"):
        metrics.reliability_bins([0, 1], [0.1, 0.9], bins=0)


def test_metrics_at_thresholds_side_by_side():
    table = metrics.metrics_at_thresholds(HAND_LABELS, HAND_PROBABILITIES, {"default": 0.5, "low": 0.3})
    assert list(table) == ["default", "low"]
    assert (table["default"]["tp"], table["default"]["fp"]) == (2, 1)
    # At 0.3 everything but 0.1 is positive: tp 3, fp 2, tn 1, fn 0.
    low = table["low"]
    assert (low["tp"], low["fp"], low["tn"], low["fn"]) == (3, 2, 1, 0)
    assert low["recall"] == 1.0 and low["specificity"] == pytest.approx(1 / 3)
    assert low["threshold"] == 0.3 and low["warnings"] == []
    text = metrics.format_threshold_table(table)
    assert "default" in text.splitlines()[0] and "low" in text.splitlines()[0]
    assert any(line.startswith("specificity") and "0.3333" in line for line in text.splitlines())
    with pytest.raises(ConfigError, match="thresholds\\['bad'\\]"):
        metrics.metrics_at_thresholds(HAND_LABELS, HAND_PROBABILITIES, {"bad": 2})
