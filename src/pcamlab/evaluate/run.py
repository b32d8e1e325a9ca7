"""Evaluate a checkpoint on a labelled split: metrics, per-patch predictions and plots.

Example:
    >>> metrics = evaluate_checkpoint("runs/demo/best.safetensors", "sample", "valid", "runs/demo/eval-valid")
    >>> metrics["roc_auc"]
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.config_ranges import check_field
from pcamlab.errors import CheckpointError, RunFolderError
from pcamlab.fileio import atomic_path, printable, write_json_atomic
from pcamlab.runfolder import RunFolder

__all__ = ["default_out_dir", "evaluate_checkpoint", "evaluate_predictions", "fold_of", "write_json"]

OUTPUT_FILES = ("metrics.json", "predictions.csv", "roc.png", "pr.png", "confusion_matrix.png",
                "reliability.png", "score_histogram.png")


def _in_run_folder(model: Path) -> bool:
    """Whether ``model`` is a checkpoint inside a run folder (``pcamlab train --out``)."""
    return model.suffix == ".safetensors" and RunFolder(model.parent).is_run()


def default_out_dir(model_path: str | Path, split: str, *, tta: bool = False) -> Path:
    """The folder an evaluation of ``model_path`` on ``split`` is written to when none is given.

    A run folder's ``best.safetensors``: ``<run>/eval-<split>[-tta]``. Any other model file (the run's
    ``last.safetensors`` or ``swa.safetensors``, an exported ``.onnx`` / ``.pt``, a copied checkpoint):
    ``<folder>/<stem>-eval-<split>[-tta]``, so two models in one folder never share (and refuse) one
    output folder.

    Example:
        >>> default_out_dir("/tmp/m.onnx", "valid")
        PosixPath('/tmp/m-eval-valid')
    """
    model = Path(model_path)
    name = f"eval-{split}{'-tta' if tta else ''}"
    best = _in_run_folder(model) and model.name == RunFolder.BEST
    return model.parent / (name if best else f"{model.stem}-{name}")


def fold_of(model_path: str | Path) -> str | None:
    """``"repeat-R/fold-K"`` when ``model_path`` is a checkpoint of a k-fold cross-validation, else None.

    A fold's run folder is ``<cv>/repeat-R/fold-K/`` under a folder holding ``folds.csv``
    (:func:`pcamlab.train.protocols.run_kfold`).
    """
    return RunFolder(Path(model_path).parent).fold_name()


def write_json(path: Path, values: Any) -> None:
    """Write valid JSON atomically (NaN as null, printable paths; temp file in the same folder, then rename)."""
    write_json_atomic(path, values)


def evaluate_predictions(
    labels: np.ndarray,
    probabilities: np.ndarray,
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    seed: int = 0,
    threshold_origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score predictions and write ``metrics.json``, ``predictions.csv`` and the plots into ``out_dir``.

    ``metrics.json`` holds ``threshold_origin`` (from
    :func:`pcamlab.evaluate.thresholds.describe_threshold`; a fixed threshold when not given): the
    threshold behind every threshold-dependent number (listed in its ``applies_to``), where it was
    chosen and whether those numbers are optimistic (chosen on the same split).
    """
    from pcamlab.evaluate import plots
    from pcamlab.evaluate.metrics import THRESHOLD_METRICS, compute_metrics, metrics_at_thresholds
    from pcamlab.evaluate.thresholds import describe_threshold

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(labels, probabilities, threshold, seed=seed)
    origin = dict(threshold_origin or describe_threshold(threshold))
    origin["applies_to"] = [name for name in THRESHOLD_METRICS if name != "threshold"]
    metrics["threshold_origin"] = origin
    metrics["at_thresholds"] = metrics_at_thresholds(labels, probabilities, {"0.5": 0.5, "chosen": threshold})
    metrics.update(extra or {})
    write_json(out_dir / "metrics.json", metrics)

    with atomic_path(out_dir / "predictions.csv") as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["patch", "label", "probability", "predicted"])
        for index, (label, probability) in enumerate(zip(labels, probabilities)):
            name = printable(names[index]) if names else str(index)
            writer.writerow([name, int(label), f"{probability:.6f}", int(probability >= threshold)])

    ci = metrics.get("roc_auc_ci")
    plots.plot_roc(labels, probabilities, out_dir / "roc.png", auc=metrics["roc_auc"], ci=ci, threshold=threshold)
    plots.plot_pr(labels, probabilities, out_dir / "pr.png")
    plots.plot_confusion_matrix(labels, probabilities, threshold, out_dir / "confusion_matrix.png")
    plots.plot_reliability(labels, probabilities, out_dir / "reliability.png")
    plots.plot_score_histogram(labels, probabilities, out_dir / "score_histogram.png", threshold=threshold)
    return metrics


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    data: str | Path | None,
    split: str,
    out_dir: str | Path | None = None,
    *,
    format: str | None = None,
    tta: bool | None = None,
    threshold: float | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    force: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> dict[str, Any]:
    """Predict a labelled split with a trained model and write the evaluation into ``out_dir``.

    Args:
        checkpoint_path: a ``.safetensors`` checkpoint written by ``pcamlab train``, or an ``.onnx`` /
            TorchScript ``.pt`` file written by ``pcamlab export`` (any :func:`pcamlab.runtime.load_predictor`
            input); all give the same metrics (the exported file to ~1e-6 in probability).
        data: dataset root (or ``"sample"``); None = the data the model was trained on.
        split: the split to score (``valid`` or ``test``).
        out_dir: folder for metrics.json, predictions.csv and the plots; None = :func:`default_out_dir`.
        format: data layout (a reader name or ``auto``); None = the model's own at its own data, else ``auto``.
        tta: average over the 8 dihedral transforms; the metrics then also report the AUC without TTA.
            None = what the model's recipe says (``evaluate.tta`` in its run config; off for a model without one).
        threshold: decision threshold; default the one stored with the model.
        batch_size: patches per inference batch.
        device: ``cpu`` or ``cuda[:N]`` (torch runtimes).
        force: replace an earlier evaluation in ``out_dir``.
        progress: optional ``progress(done, total)`` callable.

    Returns:
        The metrics (also in ``out_dir/metrics.json``).

    Raises:
        RunFolderError: ``out_dir`` holds an evaluation and ``force`` is off (checked after the model loads).
        CheckpointError: the model file cannot be loaded, or it carries no run config and ``data`` is None.
        DataError: the split cannot be read or has no labels, or ``data`` is None and the data path
            stored in the checkpoint does not exist (e.g. a relative path from another working folder).
    """
    from pcamlab.config import DataConfig
    from pcamlab.data import load_split_arrays
    from pcamlab.data.source import open_run_split
    from pcamlab.evaluate.metrics import roc_auc, validate_inputs
    from pcamlab.runtime.predictor import load_predictor

    check_field("evaluate.threshold", threshold, name="threshold")
    check_field("evaluate.batch_size", batch_size, name="batch_size")
    predictor = load_predictor(checkpoint_path, device=device)  # a bad model file is said first, not the output
    if tta is None:  # the recipe's own evaluation
        tta = bool(predictor.config.evaluate.tta) if predictor.config is not None else False
    out_dir = default_out_dir(checkpoint_path, split, tta=tta) if out_dir is None else Path(out_dir)
    if (out_dir / "metrics.json").exists() and not force:
        raise RunFolderError(
            f"{str(out_dir / 'metrics.json')!r} already exists; choose another out_dir or pass force=True to replace it",
            parameters=("out_dir", "force"),
        )
    config = predictor.config
    if config is None and data is None:
        raise CheckpointError(
            f"{str(checkpoint_path)!r} does not say which data it was trained on (exported before pcamlab "
            "stored it); pass the data folder to evaluate it on"
        )
    reader = open_run_split(config.data if config is not None else DataConfig(), split, path=data, format=format,
                            stored_in=f"checkpoint {str(checkpoint_path)!r}")
    images, labels, skipped = load_split_arrays(reader, progress=progress)
    validate_inputs(labels, np.full(len(labels), 0.5), where=f"split {split!r} of {reader.root}")
    from pcamlab.evaluate.thresholds import describe_threshold

    given = threshold is not None
    contract = predictor.contract
    threshold = float(contract.threshold if threshold is None else threshold)
    chosen_on = (predictor.metadata or {}).get("threshold_chosen_on")
    method = (chosen_on or {}).get("method") or contract.threshold_source
    if method == "fixed" and config is not None:  # contracts written before threshold_source existed say "fixed"
        method = config.evaluate.threshold_method
    origin = describe_threshold(threshold, method=method, chosen_on=chosen_on,
                                measured_on={"data": str(reader.root), "split": split}, given=given)
    probabilities = predictor.predict_proba(images, batch_size=batch_size, tta=tta)
    extra: dict[str, Any] = {
        "checkpoint": str(checkpoint_path),
        "data": str(reader.root),
        "split": split,
        "fold": fold_of(checkpoint_path),  # a k-fold fold's checkpoint: the split above is not its held-out part
        "skipped_files": skipped,
        "data_notes": list(reader.notes),
        "tta": tta,
        "recipe_tta": bool(config.evaluate.tta) if config is not None else None,  # what the recipe asks for
        "model": config.model.name if config is not None else None,
        "epoch": predictor.metadata.get("epoch"),
    }
    if tta:
        plain = predictor.predict_proba(images, batch_size=batch_size)
        extra["tta_effect"] = {"roc_auc_without_tta": roc_auc(labels, plain), "roc_auc_with_tta": roc_auc(labels, probabilities)}
    names = [reader.name(index) for index in range(len(reader))] if skipped == 0 else None
    return evaluate_predictions(labels, probabilities, out_dir, threshold=threshold, names=names, extra=extra,
                                threshold_origin=origin)
