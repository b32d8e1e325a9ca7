"""Scores of a binary detector: threshold metrics, ROC AUC with a bootstrap CI, calibration.

Every function takes ``y_true`` (labels in {0, 1}, 1 = tumour) and ``y_prob`` (the predicted
probability of class 1, in [0, 1]) as array-likes of the same length. A patch is predicted positive
when ``y_prob >= threshold``.

The scores match scikit-learn (``roc_auc_score``, ``average_precision_score``, ``log_loss``,
``brier_score_loss``, ``balanced_accuracy_score``, ...) but are computed here in numpy so the
bootstrap over ROC AUC can be vectorised: 1000 resamples of 3,000 patches take a fraction of a
second.

Example:
    >>> from pcamlab.evaluate.metrics import compute_metrics
    >>> result = compute_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], bootstrap=200, seed=0)
    >>> result["roc_auc"], result["accuracy"]
    (0.75, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pcamlab.errors import ConfigError, DataError

__all__ = [
    "ECE_BINS",
    "validate_inputs",
    "check_threshold",
    "confusion_counts",
    "threshold_metrics",
    "roc_curve",
    "roc_auc",
    "bootstrap_roc_auc",
    "precision_recall_curve",
    "average_precision",
    "log_loss",
    "brier_score",
    "reliability_bins",
    "expected_calibration_error",
    "compute_metrics",
    "metrics_at_thresholds",
    "format_threshold_table",
]

ECE_BINS = 15  # equal-width bins of the expected calibration error (Guo et al. 2017 use 15)

# Names of the metrics that depend on the decision threshold, in the order they are reported.
THRESHOLD_METRICS = (
    "threshold",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "tp",
    "fp",
    "tn",
    "fn",
)


def validate_inputs(y_true: Any, y_prob: Any, *, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Check labels and probabilities at the edge and return them as clean numpy arrays.

    Args:
        y_true: Labels, array-like of shape (N,) (or anything that flattens to it) in {0, 1}.
        y_prob: Predicted probability of class 1, same length, finite and in [0, 1].
        where: Optional name of the source (file, split) quoted in error messages.

    Returns:
        ``(labels int64 (N,), probabilities float64 (N,))``.

    Raises:
        DataError: On empty input, different lengths, labels outside {0, 1} (``-1`` means the split
            is unlabeled), or probabilities that are NaN, infinite or outside [0, 1].
    """
    source = f" in {where}" if where else ""
    try:
        labels = np.asarray(y_true).reshape(-1)
        probabilities = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"labels and probabilities{source} must be numeric arrays; got {error}; "
            "pass 1-D arrays of 0/1 labels and float probabilities"
        ) from None
    if labels.shape[0] != probabilities.shape[0]:
        raise DataError(
            f"labels and probabilities{source} differ in length: {labels.shape[0]} labels vs "
            f"{probabilities.shape[0]} probabilities; pass one probability per labelled patch"
        )
    if labels.shape[0] == 0:
        raise DataError(f"no patches to score{source}: labels and probabilities are empty; check the split")
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.number):
        raise DataError(
            f"labels{source} must be the integers 0 and 1; got dtype {labels.dtype} "
            f"(first value {labels[0]!r}); map class names to 0 (normal) and 1 (tumour)"
        )
    if np.any(labels == -1):
        count = int(np.sum(labels == -1))
        raise DataError(
            f"labels{source} contain -1 for {count} of {labels.shape[0]} patches: this split has no "
            "labels, so it cannot be scored; evaluate a labelled split or use `pcamlab predict`"
        )
    bad_labels = ~np.isin(labels, (0, 1))
    if np.any(bad_labels):
        found = sorted({float(value) for value in np.unique(labels[bad_labels])[:5]})
        raise DataError(
            f"labels{source} must be 0 or 1; got values {found}; map classes to 0 (normal) and 1 (tumour)"
        )
    not_finite = ~np.isfinite(probabilities)
    if np.any(not_finite):
        index = int(np.flatnonzero(not_finite)[0])
        raise DataError(
            f"probabilities{source} must be finite; got {probabilities[index]} at index {index} "
            f"({int(not_finite.sum())} non-finite in all); check the model output for NaN"
        )
    outside = (probabilities < 0.0) | (probabilities > 1.0)
    if np.any(outside):
        index = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"probabilities{source} must lie in [0, 1]; got {probabilities[index]} at index {index}; "
            "pass sigmoid(logit), not the raw logit"
        )
    return labels.astype(np.int64), probabilities


def check_threshold(threshold: Any, *, name: str = "threshold") -> float:
    """Return ``threshold`` as a float, or raise ConfigError if it is not a number in [0, 1]."""
    if isinstance(threshold, bool):
        raise ConfigError(f"{name} must be a number in [0, 1]; got {threshold!r}; e.g. 0.5")
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1]; got {threshold!r}; e.g. 0.5") from None
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be a number in [0, 1]; got {threshold!r}; e.g. 0.5")
    return value


def confusion_counts(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, int]:
    """Confusion counts with ``y_prob >= threshold`` predicted positive.

    Returns:
        ``{"tp": int, "fp": int, "tn": int, "fn": int}``.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    threshold = check_threshold(threshold)
    return _counts(labels, probabilities, threshold)


def _counts(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, int]:
    predicted = probabilities >= threshold
    positive = labels == 1
    return {
        "tp": int(np.sum(predicted & positive)),
        "fp": int(np.sum(predicted & ~positive)),
        "tn": int(np.sum(~predicted & ~positive)),
        "fn": int(np.sum(~predicted & positive)),
    }


def _ratio(numerator: int, denominator: int, name: str, reason: str, notes: list[str]) -> float:
    """``numerator / denominator``, or 0.0 with a note when the denominator is zero."""
    if denominator == 0:
        notes.append(f"{name} set to 0.0: {reason}")
        return 0.0
    return numerator / denominator


def threshold_metrics(
    y_true: Any, y_prob: Any, threshold: float = 0.5, *, notes: list[str] | None = None
) -> dict[str, Any]:
    """Metrics that depend on the decision threshold (``y_prob >= threshold`` is positive).

    A ratio whose denominator is zero (e.g. precision when nothing is predicted positive) is 0.0
    and a sentence saying so is appended to ``notes``. Balanced accuracy is the mean of the recall
    of the classes present (as in scikit-learn), so it stays meaningful when one class is absent.

    Args:
        y_true: Labels in {0, 1}, shape (N,).
        y_prob: Probability of class 1, shape (N,).
        threshold: Decision threshold in [0, 1].
        notes: List that receives zero-division notes (a fresh one is used when None).

    Returns:
        Plain dict with threshold, accuracy, balanced_accuracy, precision, recall, specificity,
        f1, tp, fp, tn, fn.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    threshold = check_threshold(threshold)
    notes = [] if notes is None else notes
    counts = _counts(labels, probabilities, threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    at = f" at threshold {threshold:g}"
    precision = _ratio(tp, tp + fp, "precision", f"no patch is predicted positive{at}", notes)
    recall = _ratio(tp, tp + fn, "recall", "there are no positive (tumour) patches", notes)
    specificity = _ratio(tn, tn + fp, "specificity", "there are no negative (normal) patches", notes)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, "f1", f"no positive patches and none predicted{at}", notes)
    class_recalls = [rate for rate, size in ((recall, tp + fn), (specificity, tn + fp)) if size > 0]
    return {
        "threshold": threshold,
        "accuracy": (tp + tn) / labels.shape[0],
        "balanced_accuracy": float(np.mean(class_recalls)),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        **counts,
    }


def _distinct_descending(labels: np.ndarray, probabilities: np.ndarray):
    """Cumulative true/false positives at each distinct score, scores in decreasing order."""
    order = np.argsort(-probabilities, kind="mergesort")
    scores = probabilities[order]
    sorted_labels = labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.shape[0] - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_group]
    false_positives = (last_of_group + 1) - true_positives
    return true_positives, false_positives, scores[last_of_group]


def roc_curve(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one vertex per distinct score (no points dropped).

    Returns:
        ``(false_positive_rate, true_positive_rate, thresholds)``, each of shape (K + 1,) for K
        distinct scores; vertex k is the rate pair of ``y_prob >= thresholds[k]``. The first vertex
        is (0, 0) with threshold ``inf`` (nothing predicted positive). A rate whose class is absent
        is all zeros.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    true_positives, false_positives, thresholds = _distinct_descending(labels, probabilities)
    positives, negatives = true_positives[-1], false_positives[-1]
    true_positive_rate = true_positives / positives if positives else np.zeros(true_positives.shape)
    false_positive_rate = false_positives / negatives if negatives else np.zeros(false_positives.shape)
    return (
        np.r_[0.0, false_positive_rate],
        np.r_[0.0, true_positive_rate],
        np.r_[np.inf, thresholds],
    )


def _weighted_auc(sorted_labels: np.ndarray, group_starts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of R weighted samples at once (Mann-Whitney U with ties counted one half).

    Args:
        sorted_labels: Labels sorted by increasing score, shape (N,).
        group_starts: Index where each run of equal scores starts, shape (G,).
        weights: Multiplicity of each sample in each resample, shape (R, N).

    Returns:
        AUC per resample, shape (R,); NaN where a resample lacks one of the classes.
    """
    positive_weights = weights * sorted_labels  # (R, N)
    negative_weights = weights - positive_weights  # (R, N)
    positive_groups = np.add.reduceat(positive_weights, group_starts, axis=1)  # (R, G)
    negative_groups = np.add.reduceat(negative_weights, group_starts, axis=1)  # (R, G)
    negatives_below = np.cumsum(negative_groups, axis=1) - negative_groups  # (R, G), strictly lower
    wins = np.sum(positive_groups * (negatives_below + 0.5 * negative_groups), axis=1)  # (R,)
    pairs = positive_groups.sum(axis=1) * negative_groups.sum(axis=1)  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def _sorted_for_auc(labels: np.ndarray, probabilities: np.ndarray):
    order = np.argsort(probabilities, kind="mergesort")
    scores = probabilities[order]
    group_starts = np.r_[0, np.flatnonzero(np.diff(scores)) + 1]
    return order, labels[order].astype(np.float64), group_starts


def roc_auc(y_true: Any, y_prob: Any) -> float | None:
    """Area under the ROC curve, or None when only one class is present (it is undefined)."""
    labels, probabilities = validate_inputs(y_true, y_prob)
    if np.unique(labels).shape[0] < 2:
        return None
    _, sorted_labels, group_starts = _sorted_for_auc(labels, probabilities)
    return float(_weighted_auc(sorted_labels, group_starts, np.ones((1, labels.shape[0])))[0])


def bootstrap_roc_auc(
    y_true: Any,
    y_prob: Any,
    *,
    resamples: int = 1000,
    seed: int | np.random.Generator = 0,
    confidence: float = 0.95,
    chunk_size: int = 2_000_000,
) -> dict[str, Any]:
    """Percentile bootstrap confidence interval of ROC AUC, vectorised over resamples.

    Patches are drawn with replacement ``resamples`` times; each resample's AUC comes from the
    multiplicity of every patch (an (R, N) weight matrix) against one global sort, so no resample
    is re-sorted. Resamples that happen to hold a single class are dropped and counted.

    Args:
        y_true: Labels in {0, 1}, shape (N,).
        y_prob: Probability of class 1, shape (N,).
        resamples: Number of bootstrap resamples (>= 1).
        seed: Seed or numpy Generator of the resampling.
        confidence: Coverage of the interval, in (0, 1).
        chunk_size: Most matrix cells handled at once (bounds memory to ~5 x 8 x chunk_size bytes).

    Returns:
        ``{"low": float | None, "high": float | None, "resamples": int, "dropped": int}``
        (low/high are None when the AUC itself is undefined or every resample was dropped).
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ConfigError(f"bootstrap resamples must be a positive integer; got {resamples!r}; e.g. 1000")
    if not (0.0 < float(confidence) < 1.0):
        raise ConfigError(f"bootstrap confidence must be in (0, 1); got {confidence!r}; e.g. 0.95")
    resamples = int(resamples)
    if np.unique(labels).shape[0] < 2:
        return {"low": None, "high": None, "resamples": resamples, "dropped": resamples}
    generator = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    count = labels.shape[0]
    order, sorted_labels, group_starts = _sorted_for_auc(labels, probabilities)
    rank_of = np.empty(count, dtype=np.int64)
    rank_of[order] = np.arange(count)  # position of each patch in the sorted order
    rows_per_chunk = max(1, chunk_size // count)
    scores = []
    for start in range(0, resamples, rows_per_chunk):
        rows = min(rows_per_chunk, resamples - start)
        drawn = generator.integers(0, count, size=(rows, count))  # (rows, N) patch indices
        flat = (rank_of[drawn] + count * np.arange(rows)[:, None]).ravel()  # sorted position per row
        weights = np.bincount(flat, minlength=rows * count).reshape(rows, count).astype(np.float64)
        scores.append(_weighted_auc(sorted_labels, group_starts, weights))  # (rows,)
    values = np.concatenate(scores)
    kept = values[np.isfinite(values)]
    dropped = int(values.shape[0] - kept.shape[0])
    if kept.shape[0] == 0:
        return {"low": None, "high": None, "resamples": resamples, "dropped": dropped}
    tail = 100.0 * (1.0 - float(confidence)) / 2.0
    low, high = np.percentile(kept, [tail, 100.0 - tail])
    return {"low": float(low), "high": float(high), "resamples": resamples, "dropped": dropped}


def precision_recall_curve(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve as in scikit-learn (recall decreasing, ending at (recall 0, precision 1)).

    Returns:
        ``(precision, recall, thresholds)``; precision and recall have one more entry than
        thresholds (increasing distinct scores). Recall is all zeros when there are no positives.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    true_positives, false_positives, thresholds = _distinct_descending(labels, probabilities)
    predicted = true_positives + false_positives
    precision = true_positives / predicted  # predicted >= 1 at every distinct score
    positives = true_positives[-1]
    recall = true_positives / positives if positives else np.zeros(true_positives.shape)
    return (
        np.r_[precision[::-1], 1.0],
        np.r_[recall[::-1], 0.0],
        thresholds[::-1],
    )


def average_precision(y_true: Any, y_prob: Any) -> float | None:
    """Average precision (area under the step PR curve, as scikit-learn), None without positives."""
    labels, probabilities = validate_inputs(y_true, y_prob)
    if not np.any(labels == 1):
        return None
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def log_loss(y_true: Any, y_prob: Any) -> float:
    """Mean binary cross-entropy in nats, probabilities clipped to [eps, 1 - eps] (float64 eps)."""
    labels, probabilities = validate_inputs(y_true, y_prob)
    epsilon = np.finfo(np.float64).eps
    clipped = np.clip(probabilities, epsilon, 1.0 - epsilon)
    return float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log1p(-clipped)))


def brier_score(y_true: Any, y_prob: Any) -> float:
    """Mean squared difference between the probability of class 1 and the label."""
    labels, probabilities = validate_inputs(y_true, y_prob)
    return float(np.mean((probabilities - labels) ** 2))


def reliability_bins(y_true: Any, y_prob: Any, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width bins of the predicted probability of class 1 over [0, 1].

    Bin b holds ``edges[b] <= p < edges[b + 1]``; the last bin also holds p == 1.

    Returns:
        ``{"edges": (bins + 1,), "counts": (bins,) int, "mean_predicted": (bins,),
        "fraction_positive": (bins,)}``; the two means are NaN in empty bins.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ConfigError(f"bins must be a positive integer; got {bins!r}; e.g. {ECE_BINS}")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)  # (N,) bin of each patch
    counts = np.bincount(index, minlength=bins)
    sum_predicted = np.bincount(index, weights=probabilities, minlength=bins)
    sum_positive = np.bincount(index, weights=labels.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sum_predicted / np.maximum(counts, 1), np.nan)
        fraction_positive = np.where(counts > 0, sum_positive / np.maximum(counts, 1), np.nan)
    return {
        "edges": edges,
        "counts": counts,
        "mean_predicted": mean_predicted,
        "fraction_positive": fraction_positive,
    }


def expected_calibration_error(y_true: Any, y_prob: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the probability of class 1.

    ``ECE = sum_b (n_b / N) * |mean(y in b) - mean(p in b)|`` over ``bins`` equal-width bins of
    p = P(tumour) on [0, 1] (the binary, class-1 form used by reliability diagrams and
    ``sklearn.calibration.calibration_curve``; not the top-label "confidence" form). 0 is perfect
    calibration, 1 the worst.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    table = reliability_bins(labels, probabilities, bins)
    filled = table["counts"] > 0
    gaps = np.abs(table["fraction_positive"][filled] - table["mean_predicted"][filled])
    return float(np.sum(table["counts"][filled] * gaps) / labels.shape[0])


def compute_metrics(
    y_true: Any,
    y_prob: Any,
    threshold: float = 0.5,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All scores of a binary detector in one JSON-safe dict.

    Args:
        y_true: Labels in {0, 1}, shape (N,).
        y_prob: Predicted probability of class 1 (tumour), shape (N,), in [0, 1].
        threshold: Decision threshold; ``y_prob >= threshold`` is predicted tumour.
        bootstrap: Resamples of the percentile bootstrap 95% CI of ROC AUC (0 = no CI).
        seed: Seed of the bootstrap's numpy Generator.

    Returns:
        Plain floats/ints/None: n, n_positive, threshold, accuracy, balanced_accuracy, precision,
        recall (= sensitivity), specificity, f1, roc_auc, roc_auc_ci ([low, high] or None),
        pr_auc (average precision), log_loss, brier, ece (15 equal-width bins), tp, fp, tn, fn,
        bootstrap (resamples), and ``warnings`` (list of sentences: undefined scores, zero
        divisions, dropped bootstrap resamples).

    Raises:
        DataError: Bad labels or probabilities (see ``validate_inputs``).
        ConfigError: A threshold outside [0, 1] or a negative ``bootstrap``.

    Example:
        >>> result = compute_metrics([0, 1, 1, 0], [0.2, 0.7, 0.9, 0.4], bootstrap=0)
        >>> result["roc_auc"], result["tp"]
        (1.0, 2)
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    threshold = check_threshold(threshold)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ConfigError(
            f"bootstrap must be a non-negative integer number of resamples; got {bootstrap!r}; "
            "use 1000 (or 0 to skip the confidence interval)"
        )
    notes: list[str] = []
    count = int(labels.shape[0])
    positives = int(labels.sum())
    at_threshold = threshold_metrics(labels, probabilities, threshold, notes=notes)

    area = roc_auc(labels, probabilities)
    interval = None
    if area is None:
        present = "tumour (1)" if positives else "normal (0)"
        notes.append(
            f"roc_auc is undefined: only class {present} is present in {count} patches; "
            "evaluate a split with both classes"
        )
    elif bootstrap > 0:
        result = bootstrap_roc_auc(labels, probabilities, resamples=int(bootstrap), seed=seed)
        if result["dropped"]:
            notes.append(
                f"roc_auc_ci: {result['dropped']} of {result['resamples']} bootstrap resamples held "
                "one class only and were dropped"
            )
        if result["low"] is not None:
            interval = [result["low"], result["high"]]
    precision_area = average_precision(labels, probabilities)
    if precision_area is None:
        notes.append("pr_auc is undefined: there are no positive (tumour) patches")

    metrics: dict[str, Any] = {"n": count, "n_positive": positives}
    for name in THRESHOLD_METRICS:
        if name not in ("tp", "fp", "tn", "fn"):
            metrics[name] = at_threshold[name]
    metrics.update(
        {
            "roc_auc": area,
            "roc_auc_ci": interval,
            "pr_auc": precision_area,
            "log_loss": log_loss(labels, probabilities),
            "brier": brier_score(labels, probabilities),
            "ece": expected_calibration_error(labels, probabilities, ECE_BINS),
            "tp": at_threshold["tp"],
            "fp": at_threshold["fp"],
            "tn": at_threshold["tn"],
            "fn": at_threshold["fn"],
            "bootstrap": int(bootstrap),
            "warnings": notes,
        }
    )
    return metrics


def metrics_at_thresholds(
    y_true: Any, y_prob: Any, thresholds: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    """Threshold-dependent metrics at several named thresholds, side by side.

    Args:
        y_true: Labels in {0, 1}, shape (N,).
        y_prob: Probability of class 1, shape (N,).
        thresholds: Name -> threshold, e.g. ``{"default": 0.5, "youden": 0.31}``.

    Returns:
        Name -> dict of ``threshold_metrics`` plus ``warnings`` (zero-division notes), in the
        order of ``thresholds``.

    Example:
        >>> table = metrics_at_thresholds([0, 1, 1], [0.2, 0.4, 0.9], {"default": 0.5, "low": 0.3})
        >>> table["default"]["recall"], table["low"]["recall"]
        (0.5, 1.0)
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise ConfigError(
            f"thresholds must be a non-empty mapping of name to threshold; got {thresholds!r}; "
            "e.g. {'default': 0.5, 'youden': 0.3}"
        )
    table: dict[str, dict[str, Any]] = {}
    for name, threshold in thresholds.items():
        notes: list[str] = []
        value = check_threshold(threshold, name=f"thresholds[{name!r}]")
        row = threshold_metrics(labels, probabilities, value, notes=notes)
        row["warnings"] = notes
        table[str(name)] = row
    return table


def format_threshold_table(table: Mapping[str, Mapping[str, Any]]) -> str:
    """Render ``metrics_at_thresholds`` output as a fixed-width text table (one column per name)."""
    names = list(table)
    width = max([12, *(len(name) + 2 for name in names)])
    lines = ["metric".ljust(18) + "".join(name.rjust(width) for name in names)]
    for metric in THRESHOLD_METRICS:
        cells = []
        for name in names:
            value = table[name].get(metric)
            if isinstance(value, float) and not math.isnan(value):
                cells.append(f"{value:.4f}".rjust(width))
            else:
                cells.append(str(value).rjust(width))
        lines.append(metric.ljust(18) + "".join(cells))
    return "\n".join(lines)
