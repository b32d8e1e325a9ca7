"""Evaluation figures written as PNG files.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, so importing this
module neither selects a pyplot backend nor opens windows, and nothing global changes. Every
function creates the parent folders, writes atomically (a temporary file in the same folder, then
``os.replace``) and returns the ``Path`` it wrote.

Example:
    >>> from pcamlab.evaluate.plots import plot_roc
    >>> plot_roc([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], "out/roc.png", threshold=0.5)
    PosixPath('out/roc.png')
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pcamlab.errors import ConfigError, DataError
from pcamlab.evaluate.metrics import (
    ECE_BINS,
    average_precision,
    check_threshold,
    confusion_counts,
    expected_calibration_error,
    precision_recall_curve,
    reliability_bins,
    roc_auc,
    roc_curve,
    validate_inputs,
)
from pcamlab.fileio import save_png

__all__ = [
    "DPI",
    "new_figure",
    "finish_rate_axes",
    "roc_operating_point",
    "confusion_matrix",
    "read_history",
    "plot_roc",
    "plot_pr",
    "plot_confusion_matrix",
    "plot_reliability",
    "plot_score_histogram",
    "plot_training_curves",
]

DPI = 120  # sharp enough for reports, small files
NEGATIVE_COLOUR = "#1f77b4"  # normal
POSITIVE_COLOUR = "#d62728"  # tumour
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "val_accuracy", "learning_rate")


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches at :data:`DPI` on the Agg canvas (no pyplot, nothing global)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically and return the path."""
    return save_png(figure, path, dpi=DPI)


def finish_rate_axes(axes, *, x_label: str, y_label: str, title: str, legend: str, legend_size: int = 8,
                     square: bool = False) -> None:
    """Finish axes whose x and y are rates in [0, 1] (ROC, precision-recall): both limits with a small margin,
    equal aspect when ``square``, the labels, the title, a light grid and the legend at ``legend``."""
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    if square:
        axes.set_aspect("equal")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc=legend, fontsize=legend_size)


def _message_panel(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def roc_operating_point(y_true: Any, y_prob: Any, threshold: float) -> tuple[float, float]:
    """(false positive rate, true positive rate) of ``y_prob >= threshold``.

    This is always a vertex of ``metrics.roc_curve`` (the vertex of the lowest distinct score at
    or above the threshold), which is why the marker lands on the plotted curve. A rate whose class
    is absent is 0.
    """
    counts = confusion_counts(y_true, y_prob, threshold)
    negatives = counts["fp"] + counts["tn"]
    positives = counts["tp"] + counts["fn"]
    false_positive_rate = counts["fp"] / negatives if negatives else 0.0
    true_positive_rate = counts["tp"] / positives if positives else 0.0
    return float(false_positive_rate), float(true_positive_rate)


def confusion_matrix(y_true: Any, y_prob: Any, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts and row-normalised rates, rows = true class (normal, tumour), columns = predicted.

    Returns:
        ``(counts int64 (2, 2), rates float64 (2, 2))``; a row of an absent class has rates 0.
    """
    counts = confusion_counts(y_true, y_prob, threshold)
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=np.int64)
    totals = matrix.sum(axis=1, keepdims=True)  # (2, 1)
    rates = np.divide(matrix, totals, out=np.zeros((2, 2)), where=totals > 0)
    return matrix, rates


def plot_roc(
    y_true: Any,
    y_prob: Any,
    path: str | os.PathLike,
    *,
    auc: float | None = None,
    ci: Sequence[float] | None = None,
    threshold: float | None = None,
    label: str | None = None,
) -> Path:
    """ROC curve with AUC (and its CI) in the legend, the chance diagonal and the operating point.

    Args:
        y_true: Labels in {0, 1}, shape (N,).
        y_prob: Probability of class 1, shape (N,).
        path: PNG file to write.
        auc: AUC to show; computed when None.
        ci: ``[low, high]`` confidence interval of the AUC to show, e.g. ``metrics["roc_auc_ci"]``.
        threshold: Decision threshold whose (FPR, TPR) point is marked.
        label: Name of the model for the legend.

    Returns:
        The path written.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    figure = new_figure(5.2, 5.0)
    axes = figure.add_subplot()
    area = roc_auc(labels, probabilities) if auc is None else float(auc)
    if area is None:
        present = "tumour (1)" if labels.sum() else "normal (0)"
        _message_panel(axes, f"ROC undefined: only class {present}\nis present in {labels.shape[0]} patches")
        axes.set_title("ROC curve")
        return _save(figure, path)
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
    text = f"{label + ': ' if label else ''}AUC = {area:.4f}"
    if ci is not None and len(ci) == 2 and ci[0] is not None:
        text += f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})"
    axes.plot(false_positive_rate, true_positive_rate, color=POSITIVE_COLOUR, linewidth=1.8, label=text)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    if threshold is not None:
        point_x, point_y = roc_operating_point(labels, probabilities, threshold)
        axes.plot(
            [point_x], [point_y], marker="o", markersize=8, color="black", linestyle="none",
            label=f"threshold {threshold:.3g}: TPR {point_y:.3f}, FPR {point_x:.3f}",
        )
    finish_rate_axes(axes, x_label="False positive rate (1 - specificity)", y_label="True positive rate (sensitivity)",
                     title=f"ROC curve ({labels.shape[0]} patches, {int(labels.sum())} tumour)", legend="lower right",
                     square=True)
    return _save(figure, path)


def plot_pr(y_true: Any, y_prob: Any, path: str | os.PathLike) -> Path:
    """Precision-recall curve with average precision (AP) and the prevalence (chance) line."""
    labels, probabilities = validate_inputs(y_true, y_prob)
    figure = new_figure(5.2, 5.0)
    axes = figure.add_subplot()
    area = average_precision(labels, probabilities)
    if area is None:
        _message_panel(axes, f"precision-recall undefined:\nno tumour patches among {labels.shape[0]}")
        axes.set_title("Precision-recall curve")
        return _save(figure, path)
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    prevalence = float(labels.mean())
    axes.step(recall, precision, where="post", color=POSITIVE_COLOUR, linewidth=1.8, label=f"AP = {area:.4f}")
    axes.axhline(prevalence, linestyle="--", color="grey", linewidth=1, label=f"prevalence = {prevalence:.3f}")
    finish_rate_axes(axes, x_label="Recall (sensitivity)", y_label="Precision (positive predictive value)",
                     title=f"Precision-recall curve ({labels.shape[0]} patches)", legend="lower left")
    return _save(figure, path)


def plot_confusion_matrix(
    y_true: Any,
    y_prob: Any,
    threshold: float,
    path: str | os.PathLike,
    class_names: Sequence[str] = ("normal", "tumour"),
) -> Path:
    """Two annotated panels: counts and row-normalised rates (rows = true class)."""
    threshold = check_threshold(threshold)
    if len(class_names) != 2:
        raise ConfigError(f"class_names must name 2 classes (0 then 1); got {list(class_names)!r}")
    counts, rates = confusion_matrix(y_true, y_prob, threshold)
    figure = new_figure(9.0, 4.2)
    panels = figure.subplots(1, 2)
    titles = ("Counts", "Rates (each row sums to 1)")
    for axes, values, title in zip(panels, (counts, rates), titles):
        scale = values.max() if values.max() > 0 else 1
        image = axes.imshow(values, cmap="Blues", vmin=0, vmax=scale)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        for row in range(2):
            for column in range(2):
                value = values[row, column]
                text = f"{value:d}" if values.dtype.kind == "i" else f"{value:.3f}"
                colour = "white" if value > 0.6 * scale else "black"
                axes.text(column, row, text, ha="center", va="center", color=colour, fontsize=13)
        axes.set_xticks([0, 1], [str(name) for name in class_names])
        axes.set_yticks([0, 1], [str(name) for name in class_names])
        axes.set_xlabel("Predicted class")
        axes.set_ylabel("True class")
        axes.set_title(title)
    figure.suptitle(f"Confusion matrix at threshold {threshold:.3g} ({int(counts.sum())} patches)")
    return _save(figure, path)


def plot_reliability(y_true: Any, y_prob: Any, path: str | os.PathLike, bins: int = ECE_BINS) -> Path:
    """Reliability diagram (observed tumour fraction per probability bin) with ECE, over a histogram."""
    labels, probabilities = validate_inputs(y_true, y_prob)
    table = reliability_bins(labels, probabilities, bins)
    error = expected_calibration_error(labels, probabilities, bins)
    figure = new_figure(5.2, 6.2)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    edges = table["edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = table["counts"] > 0
    top.bar(
        centres[filled], table["fraction_positive"][filled], width=width * 0.9, color=NEGATIVE_COLOUR,
        alpha=0.8, edgecolor="black", linewidth=0.5, label="observed tumour fraction",
    )
    top.plot(
        table["mean_predicted"][filled], table["fraction_positive"][filled], marker="o", markersize=4,
        color="black", linewidth=1, label="mean predicted vs observed",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.01)
    top.set_ylabel("Fraction of tumour patches")
    top.set_title(f"Reliability diagram (ECE = {error:.4f}, {bins} bins)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, table["counts"], width=width * 0.9, color="grey", edgecolor="black", linewidth=0.5)
    bottom.set_xlabel("Predicted probability of tumour")
    bottom.set_ylabel("Patches (log)")
    if table["counts"].max() > 0:
        bottom.set_yscale("log")
        bottom.set_ylim(0.8, table["counts"].max() * 2)
    bottom.grid(alpha=0.3)
    return _save(figure, path)


def plot_score_histogram(
    y_true: Any,
    y_prob: Any,
    path: str | os.PathLike,
    threshold: float | None = None,
    class_names: Sequence[str] = ("normal", "tumour"),
    *,
    log: bool = False,
) -> Path:
    """Histogram of the predicted probability of tumour for each true class (and the threshold).

    Args:
        y_true: Labels in {0, 1}, shape (N,).
        y_prob: Probability of class 1, shape (N,).
        path: PNG file to write.
        threshold: Decision threshold drawn as a vertical line (None = no line).
        class_names: Names of class 0 and class 1 for the legend.
        log: Logarithmic count axis, for confident models whose scores pile up at 0 and 1.

    Returns:
        The path written.
    """
    labels, probabilities = validate_inputs(y_true, y_prob)
    if len(class_names) != 2:
        raise ConfigError(f"class_names must name 2 classes (0 then 1); got {list(class_names)!r}")
    figure = new_figure(6.0, 4.2)
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 1.0, 41)
    for value, colour in ((0, NEGATIVE_COLOUR), (1, POSITIVE_COLOUR)):
        chosen = probabilities[labels == value]
        axes.hist(
            chosen, bins=edges, color=colour, alpha=0.55, edgecolor=colour,
            label=f"true {class_names[value]} ({chosen.shape[0]})",
        )
    if threshold is not None:
        threshold = check_threshold(threshold)
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")
    axes.set_xlim(0, 1)
    axes.set_xlabel("Predicted probability of tumour")
    axes.set_ylabel("Patches (log)" if log else "Patches")
    if log:
        axes.set_yscale("log")
    axes.set_title("Predicted probability per true class")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper center", fontsize=8)
    return _save(figure, path)


def _number(text: Any) -> float:
    if text is None or (isinstance(text, str) and not text.strip()):
        return math.nan
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_history(history: str | os.PathLike | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """History rows as columns of floats (NaN where a value is missing or not a number).

    Args:
        history: Path to a ``history.csv`` or a list of dicts (one per epoch).

    Returns:
        Column name -> float64 array (E,). ``epoch`` is always present (1..E when absent).

    Raises:
        DataError: The file is missing or has no rows.
    """
    if isinstance(history, (str, os.PathLike)):
        source = Path(history)
        if not source.is_file():
            raise DataError(
                f"training history {str(source)!r} does not exist; pass the history.csv of a run folder"
            )
        with source.open(newline="") as stream:
            rows = list(csv.DictReader(stream))
        where = repr(str(source))
    else:
        rows = list(history)
        where = "the history list"
    if not rows:
        raise DataError(f"training history {where} has no epochs; train at least one epoch first")
    names: list[str] = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise DataError(f"training history {where} must hold one mapping per epoch; got {row!r}")
        names.extend(name for name in row if name is not None and name not in names)
    columns = {name: np.array([_number(row.get(name)) for row in rows]) for name in names}
    if "epoch" not in columns or np.all(np.isnan(columns["epoch"])):
        columns["epoch"] = np.arange(1, len(rows) + 1, dtype=np.float64)
    return columns


def _plot_columns(axes, columns: dict[str, np.ndarray], names_and_labels, ylabel: str) -> None:
    epochs = columns["epoch"]
    drawn = 0
    for name, label in names_and_labels:
        values = columns.get(name)
        if values is None or np.all(np.isnan(values)):
            continue
        present = ~np.isnan(values)
        axes.plot(epochs[present], values[present], marker="o", markersize=3, linewidth=1.5, label=label)
        drawn += 1
    if drawn == 0:
        wanted = ", ".join(name for name, _ in names_and_labels)
        _message_panel(axes, f"no {wanted} in the history")
        return
    axes.set_xlabel("Epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)


def plot_training_curves(
    history: str | os.PathLike | Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> Path:
    """Three panels per epoch: train/val loss, val AUC and accuracy, learning rate.

    Args:
        history: Path to a run's ``history.csv`` or a list of dicts with (some of) the columns
            epoch, train_loss, val_loss, val_auc, val_accuracy, learning_rate. Missing columns
            or empty cells are skipped; a panel with nothing to draw says so.
        path: PNG file to write.

    Returns:
        The path written.
    """
    columns = read_history(history)
    figure = new_figure(13.0, 4.0)
    loss_axes, score_axes, rate_axes = figure.subplots(1, 3)
    _plot_columns(loss_axes, columns, (("train_loss", "train"), ("val_loss", "validation")), "Loss")
    loss_axes.set_title("Loss")
    _plot_columns(score_axes, columns, (("val_auc", "val AUC"), ("val_accuracy", "val accuracy at 0.5")), "Score")
    score_axes.set_title("Validation AUC and accuracy")
    _plot_columns(rate_axes, columns, (("learning_rate", "learning rate"),), "Learning rate")
    rate_axes.set_title("Learning rate")
    if "learning_rate" in columns and not np.all(np.isnan(columns["learning_rate"])):
        rate_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    figure.suptitle(f"Training curves ({len(columns['epoch'])} epochs)")
    return _save(figure, path)
