"""Choosing a decision threshold on a validation split.

Three rules, each searched over the ROC thresholds (the distinct predicted probabilities, a patch
being positive when ``y_prob >= threshold``):

- ``"youden"``: maximise Youden's J = sensitivity + specificity - 1;
- ``"sensitivity"``: the highest threshold whose sensitivity reaches ``target`` (so the one with the
  best specificity among those that miss at most ``1 - target`` of the tumours);
- ``"f1"``: maximise F1 of the tumour class.

Ties go to the highest threshold (fewest positive calls). Choose the threshold on the validation
split and report it on the test split; never choose it on the test split.

Example:
    >>> from pcamlab.evaluate.thresholds import ThresholdSelector
    >>> selector = ThresholdSelector("youden").fit([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> selector.threshold_, selector.score_
    (0.8, 0.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pcamlab.errors import ConfigError, DataError, did_you_mean
from pcamlab.evaluate.metrics import roc_curve, validate_inputs

__all__ = ["METHODS", "ThresholdSelector", "choose_threshold", "describe_threshold"]

METHODS = ("youden", "sensitivity", "f1")

_TOLERANCE = 1e-12  # rates like 19/20 must count as reaching a target of 0.95


class ThresholdSelector:
    """Fit a decision threshold to labels and probabilities (scikit-learn style).

    Args:
        method: ``"youden"``, ``"sensitivity"`` or ``"f1"`` (see the module docstring).
        target: Sensitivity to reach, in (0, 1]; used by ``"sensitivity"`` only.

    Attributes (set by ``fit``):
        threshold_: The chosen threshold (a predicted probability, in [0, 1]).
        score_: The criterion at that threshold: J for youden, F1 for f1, and for sensitivity the
            specificity reached while meeting the target.
        sensitivity_: Sensitivity (recall of tumour) at ``threshold_``.
        specificity_: Specificity at ``threshold_``.

    Example:
        >>> selector = ThresholdSelector("sensitivity", target=0.9).fit(y_valid, p_valid)
        >>> predicted = selector.predict(p_test)
    """

    def __init__(self, method: str = "youden", target: float = 0.95):
        if method not in METHODS:
            raise ConfigError(
                f"threshold method must be one of {list(METHODS)}; got {method!r}{did_you_mean(method, METHODS)}"
            )
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not (0.0 < target <= 1.0):
            raise ConfigError(
                f"threshold target sensitivity must be a number in (0, 1]; got {target!r}; e.g. 0.95"
            )
        self.method = method
        self.target = float(target)

    def __repr__(self) -> str:
        return f"ThresholdSelector(method={self.method!r}, target={self.target!r})"

    def fit(self, y_true: Any, y_prob: Any) -> ThresholdSelector:
        """Choose ``threshold_`` from labels in {0, 1} and probabilities of class 1, shape (N,).

        Raises:
            DataError: Bad inputs, or a split holding a single class (no threshold is defined).
        """
        labels, probabilities = validate_inputs(y_true, y_prob)
        positives = int(labels.sum())
        if positives == 0 or positives == labels.shape[0]:
            present = "tumour (1)" if positives else "normal (0)"
            raise DataError(
                f"cannot choose a threshold by {self.method!r}: only class {present} is present in "
                f"{labels.shape[0]} patches; use a validation split with both classes"
            )
        false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, probabilities)
        # Drop vertex 0 (threshold inf, nothing positive): a threshold must be a probability.
        false_positive_rate = false_positive_rate[1:]  # (K,) in decreasing threshold order
        true_positive_rate = true_positive_rate[1:]
        thresholds = thresholds[1:]
        if self.method == "youden":
            criterion = true_positive_rate - false_positive_rate
            index = int(np.argmax(criterion))  # first maximum = highest threshold
            score = float(criterion[index])
        elif self.method == "f1":
            negatives = labels.shape[0] - positives
            true_positives = true_positive_rate * positives
            false_positives = false_positive_rate * negatives
            criterion = 2 * true_positives / (true_positives + false_positives + positives)
            index = int(np.argmax(criterion))
            score = float(criterion[index])
        else:
            reached = np.flatnonzero(true_positive_rate >= self.target - _TOLERANCE)
            index = int(reached[0])  # the lowest threshold reaches sensitivity 1, so never empty
            score = float(1.0 - false_positive_rate[index])
        self.threshold_ = float(thresholds[index])
        self.score_ = score
        self.sensitivity_ = float(true_positive_rate[index])
        self.specificity_ = float(1.0 - false_positive_rate[index])
        return self

    def predict(self, y_prob: Any) -> np.ndarray:
        """Class decisions (int64 0/1, shape (N,)) for probabilities of class 1 at ``threshold_``."""
        if not hasattr(self, "threshold_"):
            raise DataError(f"{self!r} is not fitted yet; call fit(y_valid, p_valid) first")
        probabilities = np.asarray(y_prob, dtype=np.float64).reshape(-1)
        _, probabilities = validate_inputs(np.zeros(probabilities.shape[0], dtype=np.int64), probabilities)
        return (probabilities >= self.threshold_).astype(np.int64)


def choose_threshold(y_true: Any, y_prob: Any, method: str = "youden", target: float = 0.95) -> float:
    """The threshold ``ThresholdSelector(method, target).fit(y_true, y_prob)`` chooses.

    Example:
        >>> choose_threshold([0, 1, 0, 1], [0.2, 0.3, 0.6, 0.9], method="sensitivity", target=1.0)
        0.3
    """
    return ThresholdSelector(method, target).fit(y_true, y_prob).threshold_


def _base_split(split: str) -> str:
    """``train`` for a k-fold validation part ``train[fold 2 of 5, ...]``."""
    return str(split).split("[", 1)[0]


def _same_root(first: str | None, second: str | None) -> bool:
    from pathlib import Path

    if not first or not second:
        return False
    if "sample" in (first, second):
        from pcamlab.data import sample_root

        first, second = (str(sample_root()) if name == "sample" else name for name in (first, second))
    return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()


def describe_threshold(
    threshold: float,
    *,
    method: str = "fixed",
    chosen_on: dict[str, Any] | None = None,
    measured_on: dict[str, Any] | None = None,
    given: bool = False,
) -> dict[str, Any]:
    """Where a decision threshold came from, and whether numbers measured at it are optimistic.

    Every threshold-dependent number (accuracy, sensitivity, specificity, precision, F1, confusion
    counts) is only as honest as its threshold: chosen on the split it is measured on, it is optimistic.

    Args:
        threshold: the threshold in use, a probability in [0, 1].
        method: ``fixed`` (``evaluate.threshold``) or the ``evaluate.threshold_method`` that chose it
            (``youden``, ``sensitivity``, ``f1``), or another source's name (e.g. a cross-validation median).
        chosen_on: ``{"data": root, "split": name}`` of the validation patches it was chosen on (a k-fold
            validation part is named ``train[fold ...]``), or None when unknown.
        measured_on: ``{"data": root, "split": name}`` of the patches the numbers are measured on.
        given: the caller passed this threshold explicitly (``--threshold``).

    Returns:
        ``{"threshold", "source", "chosen_on", "measured_on", "optimistic", "label"}``; ``optimistic``
        is True when measured on (part of) the split it was chosen on, None when that is unknown;
        ``label`` is one line for a person, e.g. ``"0.424 (youden, chosen on validation split 'valid'
        during training; measured on that same split: optimistic)"``.

    Example:
        >>> describe_threshold(0.5)["label"]
        '0.500 (fixed by evaluate.threshold, not chosen on data)'
    """
    where = chosen_on or {}
    measured = measured_on or {}
    optimistic: bool | None = False
    if given:
        source, text = "given", "given by the caller"
    elif method == "fixed":
        source, text = "fixed", "fixed by evaluate.threshold, not chosen on data"
    else:
        source = method
        if where.get("split"):
            text = f"{method}, chosen on validation split {where['split']!r} during training"
            if measured.get("split"):
                same = _same_root(where.get("data"), measured.get("data")) and (
                    _base_split(where["split"]) == _base_split(measured["split"])
                )
                optimistic = same
                if same:
                    text += "; measured on that same split: optimistic"
        else:
            text = f"{method}, chosen on the validation data of training"
            optimistic = None
    return {
        "threshold": float(threshold),
        "source": source,
        "chosen_on": dict(where) or None,
        "measured_on": dict(measured) or None,
        "optimistic": optimistic,
        "label": f"{float(threshold):.3f} ({text})",
    }
