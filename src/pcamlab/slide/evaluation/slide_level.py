"""Slide-level scores and their cross-validated ROC: which slides hold metastases (Camelyon16 task 1).

Three scores per slide:

- ``max``: the highest tile probability;
- ``top_k_mean``: the mean of the ``k`` highest tile probabilities;
- ``aggregator``: a classifier fitted on features of the thresholded map (:func:`map_features`), the
  approach of Camelyon16's winners (Wang et al. 2016, "Deep Learning for Identifying Metastatic Breast
  Cancer", arXiv:1606.05718: 28 geometric and morphological features of the heatmap thresholded at 0.5
  and 0.9, and a random forest). pcamlab computes a documented subset of 18 (:data:`FEATURES`).

:func:`cross_validate` scores every slide out of fold: ``StratifiedKFold`` over slides (``folds``, fewer
when a class has fewer slides), the aggregator fitted on the training folds only and never scored on a
slide it was fitted on. The operating threshold of every score is chosen on the training slides of each
fold (Youden's J, :class:`pcamlab.evaluate.thresholds.ThresholdSelector`): for ``max`` and ``top_k_mean``
on their values, for the aggregator on predictions the model did not fit (in-sample predictions would be
overconfident): the random forest's out-of-bag scores (each training slide scored by the trees whose
bootstrap sample left it out), the logistic regression's out-of-fold scores of an inner cross-validation
of the training slides. Each held-out slide is called with its
own fold's threshold; sensitivity and specificity count those calls.

Leave-one-out is not used even for small cohorts: its pooled predictions are biased against ROC AUC
(Airola et al. 2011, "An experimental comparison of cross-validation techniques for estimating the area
under the ROC curve"); stratified folds keep both classes in every training set.

Example:
    >>> features = map_features(probability_map, cell_um=93.3)
    >>> result = cross_validate(feature_rows, labels, {"max": maxima}, folds=5, seed=0)
    >>> result["aggregator"].roc_auc
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pcamlab.errors import ConfigError, DataError, did_you_mean

__all__ = ["FEATURE_THRESHOLDS", "FEATURES", "AGGREGATORS", "ScoreResult", "map_features", "make_aggregator",
           "cross_validate", "summarise", "wrong_slides", "top_k_mean"]

FEATURE_THRESHOLDS = (0.5, 0.9)  # the two cuts of the heatmap in Wang et al. 2016
_PER_THRESHOLD = (
    "tumour_fraction",  # cells >= t / tissue cells (Wang: "percentage of tumour region over the whole tissue")
    "regions",  # number of connected regions (8-connectivity)
    "largest_area_mm2",  # area of the largest region
    "largest_axis_um",  # its longest axis (major axis of the moments' ellipse, as the FROC's ITC rule)
    "largest_mean_probability",  # mean probability inside it
    "largest_eccentricity",  # 0 = round, towards 1 = elongated
    "largest_solidity",  # area / convex hull area (Wang: "area ratio to the minimum surrounding convex region")
    "mean_probability",  # mean probability of all cells >= t
)
FEATURES = ("max_probability", "mean_probability_tissue",
            *(f"{name}@{threshold:g}" for threshold in FEATURE_THRESHOLDS for name in _PER_THRESHOLD))
AGGREGATORS = ("random_forest", "logistic")


def top_k_mean(tiles: np.ndarray, k: int) -> float:
    """Mean of the ``k`` highest finite values of ``tiles`` (all of them when fewer)."""
    values = np.asarray(tiles, dtype=np.float64)
    values = np.sort(values[np.isfinite(values)])[::-1][:k]
    return float(values.mean()) if values.size else 0.0


def map_features(probability_map: np.ndarray, cell_um: float) -> dict[str, float]:
    """The aggregator's features of one slide's map (:data:`FEATURES`, in that order).

    Args:
        probability_map: float ``(rows, cols)`` per map cell, NaN = no tissue tile.
        cell_um: edge of a map cell in um.

    Returns:
        Feature name -> float (0 where a threshold leaves no region).
    """
    from skimage import measure

    values = np.asarray(probability_map, dtype=np.float64)
    tissue = np.isfinite(values)
    filled = np.where(tissue, values, 0.0)
    cell_area_mm2 = (cell_um / 1000) ** 2
    features = {"max_probability": float(filled.max()) if tissue.any() else 0.0,
                "mean_probability_tissue": float(values[tissue].mean()) if tissue.any() else 0.0}
    for threshold in FEATURE_THRESHOLDS:
        above = tissue & (filled >= threshold)
        row = dict.fromkeys(_PER_THRESHOLD, 0.0)
        row["tumour_fraction"] = float(above.sum() / max(1, tissue.sum()))
        if above.any():
            labels = measure.label(above, connectivity=2)
            regions = measure.regionprops(labels, intensity_image=filled)
            largest = max(regions, key=lambda region: region.area)
            row.update({
                "regions": float(len(regions)),
                "largest_area_mm2": float(largest.area * cell_area_mm2),
                "largest_axis_um": float(largest.axis_major_length * cell_um),
                "largest_mean_probability": float(largest.intensity_mean),
                "largest_eccentricity": float(largest.eccentricity),
                "largest_solidity": float(largest.solidity),
                "mean_probability": float(filled[above].mean()),
            })
        features.update({f"{name}@{threshold:g}": value for name, value in row.items()})
    return features


def make_aggregator(name: str = "random_forest", seed: int = 0):
    """A fresh scikit-learn classifier of slide features.

    ``random_forest``: 100 trees, leaves of at least 2 slides, balanced class weights, out-of-bag scores
    kept (Wang et al. 2016 used a random forest); ``logistic``: standardised features, L2-regularised logistic regression
    (C = 1, balanced class weights), steadier on a few dozen slides.

    Raises:
        ConfigError: an unknown name.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "random_forest":
        return RandomForestClassifier(n_estimators=100, min_samples_leaf=2, class_weight="balanced",
                                      oob_score=True, random_state=seed, n_jobs=1)
    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000))
    raise ConfigError(f"aggregator must be one of {list(AGGREGATORS)}; got {name!r}{did_you_mean(name, AGGREGATORS)}",
                      parameters=("aggregator",))


@dataclass(frozen=True)
class ScoreResult:
    """One slide score, cross-validated.

    Attributes:
        name: ``max``, ``top_k_mean`` or ``aggregator``.
        scores: float64 ``(N,)`` out-of-fold score of each slide (in the order given).
        thresholds: float64 ``(N,)`` the threshold each slide was called with (its fold's, chosen on the
            training slides).
        folds: int ``(N,)`` the fold that held each slide out.
        decisions: int64 ``(N,)`` 1 = called tumour (``score >= threshold``).
    """

    name: str
    scores: np.ndarray
    thresholds: np.ndarray
    folds: np.ndarray
    decisions: np.ndarray


def _folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    smallest = int(min(np.sum(labels == 0), np.sum(labels == 1)))
    splits = min(folds, smallest)
    return list(StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def _youden(labels: np.ndarray, scores: np.ndarray) -> float:
    from pcamlab.evaluate.thresholds import ThresholdSelector

    return ThresholdSelector("youden").fit(labels, np.clip(scores, 0.0, 1.0)).threshold_


def cross_validate(
    features: np.ndarray,
    labels: Sequence[int],
    fixed_scores: Mapping[str, Sequence[float]],
    *,
    aggregator: str = "random_forest",
    folds: int = 5,
    seed: int = 0,
    notes: list[str] | None = None,
) -> dict[str, ScoreResult]:
    """Out-of-fold scores, thresholds and calls of every slide score.

    Args:
        features: float ``(N, F)`` slide features (rows of :func:`map_features` values).
        labels: ``(N,)`` 1 = tumour slide, 0 = normal.
        fixed_scores: name -> ``(N,)`` scores that need no fitting (``max``, ``top_k_mean``), in [0, 1].
        aggregator: ``"random_forest"`` or ``"logistic"`` (:func:`make_aggregator`); None = no aggregator.
        folds: most folds of ``StratifiedKFold`` (fewer when a class has fewer slides).
        seed: seed of the fold split and of the random forest.
        notes: receives a sentence when an inner split is impossible and a threshold is chosen in-sample.

    Returns:
        name -> :class:`ScoreResult`, the fixed scores first, then ``"aggregator"``.

    Raises:
        DataError: a class has fewer than 2 slides (no fold could train and test on both).
        ConfigError: ``folds`` < 2.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.asarray(labels, dtype=np.int64)
    features = np.asarray(features, dtype=np.float64)
    notes = [] if notes is None else notes
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2; got {folds!r}", parameters=("folds",))
    counts = {label: int(np.sum(labels == label)) for label in (0, 1)}
    if min(counts.values()) < 2:
        raise DataError(f"cross-validation over slides needs at least 2 slides of each class; got "
                        f"{counts[1]} tumour and {counts[0]} normal; add slides of the missing class to the reference")
    splits = _folds(labels, folds, seed)
    estimator = make_aggregator(aggregator, seed) if aggregator is not None else None
    results: dict[str, ScoreResult] = {}
    columns = {name: np.asarray(values, dtype=np.float64) for name, values in fixed_scores.items()}
    if estimator is not None:
        columns["aggregator"] = np.full(len(labels), np.nan)
    thresholds = {name: np.full(len(labels), np.nan) for name in columns}
    fold_of = np.zeros(len(labels), dtype=np.int64)
    for fold, (train, test) in enumerate(splits):
        fold_of[test] = fold
        for name in fixed_scores:
            thresholds[name][test] = _youden(labels[train], columns[name][train])
        if estimator is None:
            continue
        with warnings.catch_warnings():  # "Some inputs do not have OOB scores": handled below (inner split)
            warnings.filterwarnings("ignore", message=".*OOB.*", category=UserWarning)
            model = clone(estimator).fit(features[train], labels[train])
        columns["aggregator"][test] = model.predict_proba(features[test])[:, 1]
        inner = min(folds, int(np.sum(labels[train] == 0)), int(np.sum(labels[train] == 1)))
        out_of_bag = getattr(model, "oob_decision_function_", None)
        if out_of_bag is not None and np.all(np.isfinite(out_of_bag)):
            training_scores = out_of_bag[:, 1]  # each training slide scored by the trees that did not see it
        elif inner >= 2:
            inner_split = StratifiedKFold(n_splits=inner, shuffle=True, random_state=seed)
            training_scores = cross_val_predict(clone(estimator), features[train], labels[train], cv=inner_split,
                                                method="predict_proba")[:, 1]
        else:
            training_scores = model.predict_proba(features[train])[:, 1]
            notes.append(f"fold {fold + 1}: the aggregator's threshold was chosen on in-sample predictions "
                         "(a class has one training slide, too few for an inner split)")
        thresholds["aggregator"][test] = _youden(labels[train], training_scores)
    for name, scores in columns.items():
        decisions = (scores >= thresholds[name]).astype(np.int64)
        results[name] = ScoreResult(name, scores, thresholds[name], fold_of.copy(), decisions)
    return results


def summarise(result: ScoreResult, labels: Sequence[int], *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """ROC AUC with its bootstrap 95% CI, and sensitivity and specificity of the out-of-fold calls.

    Returns:
        JSON-safe dict: roc_auc, roc_auc_ci ([low, high] or None), sensitivity, specificity, tp, fp, tn,
        fn, thresholds (one per fold, chosen on its training slides), folds.
    """
    from pcamlab.evaluate.metrics import bootstrap_roc_auc, roc_auc

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.clip(result.scores, 0.0, 1.0)
    interval = None
    if bootstrap > 0:
        ci = bootstrap_roc_auc(labels, scores, resamples=bootstrap, seed=seed)
        interval = [ci["low"], ci["high"]] if ci["low"] is not None else None
    decisions = result.decisions
    tp = int(np.sum((decisions == 1) & (labels == 1)))
    fp = int(np.sum((decisions == 1) & (labels == 0)))
    tn = int(np.sum((decisions == 0) & (labels == 0)))
    fn = int(np.sum((decisions == 0) & (labels == 1)))
    fold_thresholds = [float(result.thresholds[result.folds == fold][0]) for fold in np.unique(result.folds)]
    return {
        "roc_auc": roc_auc(labels, scores), "roc_auc_ci": interval,
        "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "thresholds": fold_thresholds, "folds": len(fold_thresholds),
    }


def wrong_slides(result: ScoreResult, labels: Sequence[int], slides: Sequence[str]) -> list[dict[str, Any]]:
    """The slides a score calls wrongly, worst first (furthest from their fold's threshold).

    Returns:
        ``[{"slide", "label" ("tumour"/"normal"), "score", "threshold", "error" ("missed tumour" or
        "false alarm"), "margin"}]``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rows = []
    for index in np.flatnonzero(result.decisions != labels):
        margin = abs(float(result.scores[index]) - float(result.thresholds[index]))
        rows.append({
            "slide": slides[index], "label": "tumour" if labels[index] else "normal",
            "score": float(result.scores[index]), "threshold": float(result.thresholds[index]),
            "error": "missed tumour" if labels[index] else "false alarm", "margin": margin,
        })
    return sorted(rows, key=lambda row: -row["margin"])
