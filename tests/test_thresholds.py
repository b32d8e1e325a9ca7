"""pcamlab.evaluate.thresholds on hand-computed cases and against a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from pcamlab.errors import ConfigError, DataError
from pcamlab.evaluate.thresholds import ThresholdSelector, choose_threshold

# Hand case. Thresholds from high to low (positive when p >= t), with P = N = 3:
#   t     tp fp  sensitivity specificity  J     F1 = 2tp / (tp + fp + P)
#   0.9   1  0   1/3         1            1/3   2/4 = 0.5
#   0.8   2  0   2/3         1            2/3   4/5 = 0.8
#   0.6   2  1   2/3         2/3          1/3   4/6
#   0.4   2  2   2/3         1/3          0     4/7
#   0.35  3  2   1           1/3          1/3   6/8
#   0.1   3  3   1           0            0     6/9
LABELS = [0, 0, 0, 1, 1, 1]
PROBABILITIES = [0.1, 0.4, 0.6, 0.35, 0.8, 0.9]


def test_youden_by_hand():
    selector = ThresholdSelector("youden").fit(LABELS, PROBABILITIES)
    assert selector.threshold_ == 0.8
    assert selector.score_ == pytest.approx(2 / 3)
    assert selector.sensitivity_ == pytest.approx(2 / 3) and selector.specificity_ == 1.0


def test_sensitivity_target_by_hand():
    selector = ThresholdSelector("sensitivity", target=0.95).fit(LABELS, PROBABILITIES)
    assert selector.threshold_ == 0.35  # the highest threshold catching every tumour
    assert selector.sensitivity_ == 1.0
    assert selector.score_ == pytest.approx(1 / 3)  # the specificity paid for it
    # Exactly 2/3 must count as reaching a 2/3 target (no floating point miss).
    assert choose_threshold(LABELS, PROBABILITIES, "sensitivity", target=2 / 3) == 0.8
    assert choose_threshold(LABELS, PROBABILITIES, "sensitivity", target=0.3) == 0.9


def test_sensitivity_target_from_arithmetic_is_reached_exactly():
    # 0.1 * 7 is 0.7000000000000001 in floating point, while 7 of 10 tumours is exactly 0.7.
    labels = [1] * 10 + [0] * 5
    probabilities = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert choose_threshold(labels, probabilities, "sensitivity", target=0.1 * 7) == 0.93


def test_f1_and_youden_disagree_on_imbalanced_data_by_hand():
    # 2 tumours (0.9, 0.3) and 20 normals: 0.5, 0.45, 0.4 and 17 below 0.3.
    #   t = 0.9: tp 1 fp 0 -> J = 1/2,          F1 = 2 / (1 + 0 + 2) = 0.667 (max F1)
    #   t = 0.3: tp 2 fp 3 -> J = 1 - 3/20 = 0.85 (max J), F1 = 4 / (2 + 3 + 2) = 0.571
    labels = [1, 1] + [0] * 20
    probabilities = [0.9, 0.3, 0.5, 0.45, 0.4, *np.linspace(0.01, 0.2, 17)]
    youden = ThresholdSelector("youden").fit(labels, probabilities)
    f1 = ThresholdSelector("f1").fit(labels, probabilities)
    assert youden.threshold_ == 0.3 and youden.score_ == pytest.approx(0.85)
    assert f1.threshold_ == 0.9 and f1.score_ == pytest.approx(2 / 3)


def test_ties_go_to_the_highest_threshold():
    # J = 1/2 at both 0.8 and 0.35.
    selector = ThresholdSelector("youden").fit([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert selector.threshold_ == 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_brute_force_search(seed):
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 2, 80)
    probabilities = np.clip(generator.normal(0.4 + 0.2 * labels, 0.2), 0, 1).round(2)
    candidates = np.unique(probabilities)[::-1]  # high to low
    youden = [
        sk.recall_score(labels, probabilities >= t) + sk.recall_score(labels, probabilities >= t, pos_label=0) - 1
        for t in candidates
    ]
    f1 = [sk.f1_score(labels, probabilities >= t) for t in candidates]
    assert choose_threshold(labels, probabilities, "youden") == candidates[int(np.argmax(youden))]
    assert choose_threshold(labels, probabilities, "f1") == candidates[int(np.argmax(f1))]
    selector = ThresholdSelector("sensitivity", target=0.9).fit(labels, probabilities)
    assert sk.recall_score(labels, probabilities >= selector.threshold_) >= 0.9
    higher = candidates[candidates > selector.threshold_]
    if higher.size:
        assert sk.recall_score(labels, probabilities >= higher.min()) < 0.9


def test_fit_returns_self_and_predict_uses_the_threshold():
    selector = ThresholdSelector("youden")
    assert selector.fit(LABELS, PROBABILITIES) is selector
    np.testing.assert_array_equal(selector.predict([0.79, 0.8, 0.95]), [0, 1, 1])


def test_errors_are_one_line_and_actionable():
    with pytest.raises(ConfigError, match="did you mean 'youden'"):
        ThresholdSelector("yoden")
    for target in (0, 1.5, True):
        with pytest.raises(ConfigError, match="target sensitivity"):
            ThresholdSelector("sensitivity", target=target)
    with pytest.raises(DataError, match="only class normal") as caught:
        ThresholdSelector("f1").fit([0, 0], [0.1, 0.2])
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="not fitted"):
        ThresholdSelector().predict([0.5])
    with pytest.raises(DataError, match="this split has no labels"):
        choose_threshold([-1, -1], [0.1, 0.2])


def test_describe_threshold_says_where_it_was_chosen_and_when_it_is_optimistic(tmp_path):
    from pcamlab.evaluate.thresholds import describe_threshold

    valid = {"data": str(tmp_path), "split": "valid"}
    assert describe_threshold(0.5)["label"] == "0.500 (fixed by evaluate.threshold, not chosen on data)"
    same = describe_threshold(0.42, method="youden", chosen_on=valid, measured_on=dict(valid))
    assert same["optimistic"] is True and same["label"].endswith("measured on that same split: optimistic)")
    test = describe_threshold(0.42, method="youden", chosen_on=valid, measured_on={"data": str(tmp_path), "split": "test"})
    assert test["optimistic"] is False and "optimistic" not in test["label"]
    other_data = describe_threshold(0.42, method="f1", chosen_on=valid, measured_on={"data": "/elsewhere", "split": "valid"})
    assert other_data["optimistic"] is False
    fold = {"data": str(tmp_path), "split": "train[fold 2 of 5]"}  # a k-fold validation part of train
    assert describe_threshold(0.3, method="youden", chosen_on=fold, measured_on={"data": str(tmp_path) + "/", "split": "train"})["optimistic"]
    unknown = describe_threshold(0.3, method="youden")
    assert unknown["optimistic"] is None and "chosen on the validation data of training" in unknown["label"]
