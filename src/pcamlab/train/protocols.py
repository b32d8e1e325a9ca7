"""Evaluation protocols: hold-out, (iterated) stratified k-fold cross-validation and the final fit.

- **Hold-out** is plain :func:`pcamlab.train.loop.train`: learn on ``train``, choose the epoch (and the
  threshold) on ``valid``.
- **k-fold** (:func:`run_kfold`) splits the ``train`` split into ``k`` stratified folds; each fold
  trains a full run folder on ``k - 1`` folds and validates on the held-out one. ``repeats > 1`` is
  iterated k-fold: the folds are drawn again with seed ``data.seed + repeat``. The mean and sample
  standard deviation of the per-fold scores estimate how well the recipe (not one model) does and how
  much that varies with the data it sees; the median best epoch is the epoch count for the final fit.
  The per-fold scores are those of each fold's best epoch, so they are slightly optimistic (the epoch
  was chosen on the same fold); compare recipes with them, report the test split.
- **Final fit** (:func:`run_final`) trains on ``train + valid`` for an epoch count chosen earlier on
  validation, without validation, then evaluates ``last.safetensors`` on the ``test`` split when the
  data has a labelled one.

PCam's patches come from whole-slide images, and patches of one slide look alike, so folds should not
share slides. Where the official meta CSV (``camelyonpatch_level_2_split_train_meta.csv``, column
``wsi``, row i = patch i) sits beside the h5 files, :func:`slide_groups` finds it and the folds are
grouped by slide (stratified group k-fold). Other layouts carry no slide ids: folds are then stratified
by label only, and since neighbouring patches of a slide can land in different folds, CV scores can
be optimistic.

Example:
    >>> from pcamlab.config import load_config
    >>> config = load_config("configs/baseline.yaml", ["train.epochs=10"])
    >>> cv = run_kfold(config, "runs/cv", folds=5)
    >>> cv["metrics"]["val_auc"]["mean"], cv["best_epoch_median"]
    >>> final = run_final(config, "runs/final", epochs_from="runs/cv")
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pcamlab.config import RunConfig, config_to_dict
from pcamlab.data.combined import ConcatReader, SubsetReader
from pcamlab.data.readers import PatchReader, read_meta_csv
from pcamlab.data.readers import meta_csv_path as h5_meta_csv_path
from pcamlab.errors import ConfigError, DataError, RunFolderError
from pcamlab.fileio import json_safe, write_text_atomic
from pcamlab.runfolder import RunFolder

__all__ = [
    "CV_COLUMNS",
    "CV_METRICS",
    "choice_from_run",
    "format_cv_table",
    "meta_csv_path",
    "read_slide_ids",
    "run_final",
    "run_folder_protocol",
    "run_kfold",
    "slide_groups",
    "stratified_folds",
]

CV_METRICS = ("val_auc", "val_loss", "val_accuracy")
CV_COLUMNS = ["repeat", "fold", "train_patches", "valid_patches", *CV_METRICS, "best_epoch", "epochs_run",
              "threshold", "wall_seconds", "run"]


# ----------------------------------------------------------------------------------------------
# Folds.


def _check_fold_count(k: int, field: str = "folds") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"{field} must be an integer >= 2 (k of k-fold); got {k!r}: use e.g. 5")
    return int(k)


def stratified_folds(
    labels: Sequence[int] | np.ndarray,
    k: int,
    seed: int,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold split of ``labels``, grouped by ``groups`` (slide ids) when given.

    Without groups, each class is shuffled with ``numpy.random.default_rng(seed)`` and dealt to the folds
    in turn, continuing where the previous class stopped: every fold holds the same number of patches
    of each class to within one, and fold sizes differ by at most one. With groups, whole groups go to
    folds (scikit-learn's ``StratifiedGroupKFold``, shuffled with ``seed``), so no group is in both the
    training and the validation part of a fold; class ratios are then only as even as the groups allow.

    Args:
        labels: class of each item, shape ``(N,)``.
        k: number of folds, at least 2.
        seed: seed of the shuffle; the same seed gives the same folds.
        groups: optional group (slide) of each item, shape ``(N,)``.

    Returns:
        ``k`` pairs ``(train_indices, valid_indices)`` of sorted int64 positions; the valid parts are
        disjoint and together cover ``range(N)``.

    Raises:
        ConfigError: ``k`` is below 2 or above the smallest class (or the number of groups).
        DataError: labels are unlabeled (-1), or ``groups`` has another length.

    Example:
        >>> folds = stratified_folds([0, 0, 0, 1, 1, 1], k=3, seed=0)
        >>> [valid.tolist() for _, valid in folds]
        [[2, 5], [0, 4], [1, 3]]
    """
    k = _check_fold_count(k)
    labels = np.asarray(labels).reshape(-1)
    count = len(labels)
    if np.any(labels < 0):
        raise DataError(
            f"cannot make stratified folds of unlabeled patches ({int(np.sum(labels < 0))} of {count} have label -1); "
            "cross-validate a labelled split such as train"
        )
    classes, class_counts = np.unique(labels, return_counts=True)
    if groups is None:
        if count and k > class_counts.min():
            smallest = int(classes[np.argmin(class_counts)])
            raise ConfigError(
                f"folds={k} is more than the {int(class_counts.min())} patches of class {smallest}; every fold "
                f"needs each class: use folds <= {int(class_counts.min())}"
            )
        generator = np.random.default_rng(seed)
        fold_of = np.empty(count, dtype=np.int64)
        start = 0
        for value in classes:
            members = generator.permutation(np.flatnonzero(labels == value))
            fold_of[members] = (start + np.arange(len(members))) % k
            start = (start + len(members)) % k
    else:
        groups = np.asarray(groups).reshape(-1)
        if len(groups) != count:
            raise DataError(
                f"groups has {len(groups)} entries but there are {count} labels; give one slide id per patch "
                "(row i of the meta CSV = patch i)"
            )
        distinct = len(np.unique(groups))
        if k > distinct:
            raise ConfigError(
                f"folds={k} is more than the {distinct} slides (groups) in the data; grouped folds need at "
                f"least one slide each: use folds <= {distinct}"
            )
        import warnings

        from sklearn.model_selection import StratifiedGroupKFold

        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed) % 2**32)
        fold_of = np.empty(count, dtype=np.int64)
        with warnings.catch_warnings():  # "least populated class has only n members": allowed when grouped
            warnings.simplefilter("ignore", UserWarning)
            for fold, (_, valid) in enumerate(splitter.split(np.zeros(count), labels, groups)):
                fold_of[valid] = fold
    everything = np.arange(count, dtype=np.int64)
    return [(everything[fold_of != fold], everything[fold_of == fold]) for fold in range(k)]


# ----------------------------------------------------------------------------------------------
# Slide ids.


def read_slide_ids(meta_csv: str | os.PathLike, *, count: int | None = None, column: str = "wsi") -> np.ndarray:
    """The slide of every patch, from PCam's meta CSV (row i = patch i of the split).

    The official files (``camelyonpatch_level_2_split_{split}_meta.csv``) have the header
    ``,coord_y,coord_x,tumor_patch,center_tumor_patch,wsi``; the file is read by
    :func:`pcamlab.data.readers.read_meta_csv` (the CSV rules of every command) and only ``column`` is kept.

    Args:
        meta_csv: path of the CSV.
        count: number of patches in the split; checked against the number of rows when given.
        column: the column holding the slide id.

    Returns:
        ``numpy`` array of ``str``, shape ``(rows,)``.

    Raises:
        DataError: missing file or column, an empty slide id, or a row count different from ``count``.

    Example:
        >>> slides = read_slide_ids("data/camelyonpatch_level_2_split_train_meta.csv", count=262144)
        >>> slides[0]
    """
    return np.asarray(read_meta_csv(meta_csv, count=count, column=column).column(column), dtype=str)


def meta_csv_path(reader: PatchReader) -> Path | None:
    """The PCam meta CSV beside an h5 split (``camelyonpatch_level_2_split_<split>_meta.csv``), if present."""
    if reader.format != "h5":
        return None
    path = h5_meta_csv_path(reader.root, reader.split)
    return path if path.is_file() else None


def slide_groups(reader: PatchReader, groups: str | os.PathLike | None = "auto") -> tuple[np.ndarray | None, str]:
    """Slide ids for grouping the folds of ``reader``, and where they came from.

    Args:
        reader: the split to cross-validate.
        groups: ``"auto"`` (the meta CSV beside h5 files, else no grouping), ``"none"``/None (no
            grouping), or the path of a meta CSV.

    Returns:
        ``(slide ids or None, source)`` where source is the CSV path or ``"none"``.
    """
    if groups is None or str(groups) == "none":
        return None, "none"
    path = meta_csv_path(reader) if str(groups) == "auto" else Path(groups)
    if path is None:
        return None, "none"
    try:
        return read_slide_ids(path, count=len(reader)), str(path)
    except DataError as error:  # the shared reader's message, with this use's way out
        raise DataError(f"{error} (or fold without slide grouping: groups='none')", parameters=("groups",)) from None


# ----------------------------------------------------------------------------------------------
# Files.


def _json_safe(value: Any) -> Any:
    """NaN/inf become None so the JSON stays standard (see :func:`pcamlab.fileio.json_safe`)."""
    return json_safe(value)


def _spread(values: list[float]) -> dict[str, Any]:
    """mean, sample sd (n - 1; None for one value), min, max and n of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "sd": statistics.stdev(finite) if len(finite) > 1 else None,
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
    }


def _fold_log(log: Callable[[str], None] | None, prefix: str) -> Callable[[str], None] | None:
    return None if log is None else (lambda line: log(f"[{prefix}] {line}"))



def _open_train_split(config: RunConfig, split: str) -> PatchReader:
    from pcamlab.data import open_split

    data = config.data
    return open_split(data.path, split, data.format, valid_fraction=data.valid_fraction, seed=data.seed)


# ----------------------------------------------------------------------------------------------
# k-fold cross-validation.


def _fold_plan(labels: np.ndarray, folds: int, repeats: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """Fold number (0-based) of every patch for every repeat: int64 ``(repeats, N)``."""
    plan = np.empty((repeats, len(labels)), dtype=np.int64)
    for repeat in range(repeats):
        for fold, (_, valid) in enumerate(stratified_folds(labels, folds, seed + repeat, groups)):
            plan[repeat, valid] = fold
    return plan


def _write_plan(path: Path, plan: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "label", "slide", *[f"repeat_{r + 1}_fold" for r in range(len(plan))]])
    for index in range(plan.shape[1]):
        slide = "" if groups is None else groups[index]
        writer.writerow([index, int(labels[index]), slide, *(int(fold) + 1 for fold in plan[:, index])])
    write_text_atomic(path, buffer.getvalue())


def _load_plan(path: Path) -> np.ndarray:
    """The fold plan written by :func:`_write_plan`: int64 ``(repeats, N)``, folds 0-based."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    plan = np.asarray([[int(cell) - 1 for cell in row[3:]] for row in rows[1:]], dtype=np.int64).T
    if plan.ndim != 2 or plan.size == 0:
        raise RunFolderError(f"{str(path)!r} holds no fold plan (no rows); the cross-validation folder is damaged")
    return plan


def _read_plan(path: Path, count: int, folds: int, repeats: int) -> np.ndarray:
    plan = _load_plan(path)
    if plan.shape != (repeats, count) or plan.max(initial=0) + 1 != folds:
        raise RunFolderError(
            f"{str(path)!r} holds a fold plan of {plan.max(initial=0) + 1} folds x {plan.shape[0]} repeats for "
            f"{plan.shape[1]} patches; this run asks for {folds} folds x {repeats} repeats of {count} patches: "
            "resume with the same data, folds and repeats (or leave folds and repeats unset to take the plan's)",
            parameters=("folds", "repeats"),
        )
    return plan


def run_folder_protocol(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The protocol a run folder was started with, read from the files it holds.

    Returns:
        ``{"protocol": "kfold", "folds": k, "repeats": r}`` for a cross-validation folder (its
        ``folds.csv``), ``{"protocol": "final"}`` for a final fit (its ``final.json``, or for an
        interrupted one its ``resume.pt``, which records that it had no validation split),
        ``{"protocol": "holdout"}`` for any other folder with a ``config.yaml``, and None when the folder
        holds no run (missing, empty, or no ``config.yaml``).

    Example:
        >>> run_folder_protocol("runs/cv")
        {'protocol': 'kfold', 'folds': 5, 'repeats': 1}
    """
    folder = RunFolder(out_dir)
    if folder.folds.is_file():
        plan = _load_plan(folder.folds)
        return {"protocol": "kfold", "folds": int(plan.max()) + 1, "repeats": int(plan.shape[0])}
    if folder.final.is_file():
        return {"protocol": "final"}
    if folder.resume_state.is_file():  # an interrupted final fit has no final.json yet: its state says so
        import torch

        state = torch.load(folder.resume_state, map_location="cpu", weights_only=True)
        if not state.get("validated", True):
            return {"protocol": "final"}
    if folder.config.is_file():
        return {"protocol": "holdout"}
    return None


def run_kfold(
    config: RunConfig,
    out_dir: str | Path,
    *,
    folds: int | None = None,
    repeats: int | None = None,
    groups: str | os.PathLike | None = "auto",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    on_step: Callable[[Any, float], bool] | None = None,
) -> dict[str, Any]:
    """Cross-validate ``config`` on its ``train`` split: ``repeats`` x ``folds`` full training runs.

    Writes into ``out_dir``: ``config.yaml`` (the resolved config), ``folds.csv`` (the fold of every patch in every repeat), one run folder per
    fold ``repeat-R/fold-K/`` (1-based; everything :func:`~pcamlab.train.loop.train` writes, validated
    on the held-out fold), ``cv_results.csv`` (one row per fold, columns :data:`CV_COLUMNS`, rewritten
    after every fold) and ``cv_summary.json`` (mean, sample sd, min, max of each metric over all folds;
    the mean of each repeat and their sd; the median best epoch).

    Args:
        config: the resolved run configuration; ``data.seed`` seeds the folds (``+ repeat``).
        out_dir: folder to create; must not hold a run unless ``resume``.
        folds: k, at least 2 (None: 5, or on resume the plan's k).
        repeats: how many times to redraw the folds (iterated k-fold; None: 1, or on resume the plan's).
        groups: slide ids to group the folds by: ``"auto"`` (the PCam meta CSV beside h5 files when
            present), ``"none"``, or the path of a meta CSV.
        resume: continue an interrupted cross-validation in ``out_dir`` with the folds of its
            ``folds.csv``: finished folds are kept, an interrupted fold resumes from its last epoch, the
            rest are trained. A finished cross-validation (``cv_summary.json`` written) is never resumed.
        progress: show tqdm progress bars.
        log: called with one line per event, each prefixed with its fold.
        on_epoch: passed to every fold's :func:`~pcamlab.train.loop.train` (called after each epoch).
        on_step: passed to every fold's :func:`~pcamlab.train.loop.train` (called after each optimiser step
            with the scored model and the fold's epochs done; True stops that fold like its time budget
            does, and the cross-validation goes on with the next fold). ``pcamlab tune`` makes it a safe
            point, so a stop request ends a k-fold trial between steps, not only between epochs.

    Returns:
        The CV summary (also in ``cv_summary.json``), with the per-fold rows under ``"folds"``.

    Raises:
        RunError: ``out_dir`` holds a run (or nothing to resume). RunFolderError: ``resume`` of a finished
            cross-validation.
        ConfigError / DataError: bad fold count, too few patches or slides, bad meta CSV.

    Example:
        >>> summary = run_kfold(config, "runs/cv", folds=5, repeats=2)
        >>> summary["metrics"]["val_auc"]["mean"], summary["best_epoch_median"]
    """
    from pcamlab.train.loop import prepare_run_dir, train

    def check_repeats(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"repeats must be an integer >= 1; got {value!r}: use 1 for plain k-fold")

    if folds is not None:  # checked before anything is written
        _check_fold_count(folds)
    if repeats is not None:
        check_repeats(repeats)
    out_dir = Path(out_dir)
    folder = RunFolder(out_dir)
    plan_path = folder.folds
    prepare_run_dir(out_dir, resume)
    if resume and folder.cv_summary.is_file():  # written once, after the last fold
        raise RunFolderError(
            f"cross-validation {str(out_dir)!r} already finished (it has {RunFolder.CV_SUMMARY}); it is never "
            "overwritten: start a new cross-validation in another out_dir", parameters=("out_dir",),
        )
    if resume and not plan_path.is_file() and any(out_dir.glob("*.safetensors")):
        raise RunFolderError(
            f"{str(out_dir)!r} holds a single (hold-out) run, not a cross-validation (no {RunFolder.FOLDS}); resume "
            "it as one"
        )
    planned = run_folder_protocol(out_dir) if resume and plan_path.is_file() else None
    if planned is not None:  # the folder knows its folds and repeats
        folds = planned["folds"] if folds is None else folds
        repeats = planned["repeats"] if repeats is None else repeats
    folds = _check_fold_count(5 if folds is None else folds)
    repeats = 1 if repeats is None else int(repeats)
    say = log or (lambda line: None)
    reader = _open_train_split(config, config.data.train_split)
    slides, group_source = slide_groups(reader, groups)
    labels = np.asarray(reader.labels, dtype=np.int64)
    if planned is not None:
        plan = _read_plan(plan_path, len(labels), folds, repeats)
        say(f"resuming the cross-validation in {out_dir}: {repeats} x {folds} folds from its folds.csv")
    else:  # a new cross-validation, or one interrupted before it wrote its plan
        plan = _fold_plan(labels, folds, repeats, config.data.seed, slides)
        write_text_atomic(folder.config, yaml.safe_dump(config_to_dict(config), sort_keys=False))
        _write_plan(plan_path, plan, labels, slides)
    grouping = f"grouped by slide ({len(np.unique(slides))} slides from {group_source})" if slides is not None else (
        "not grouped by slide (no meta CSV): patches of one slide may sit in both parts of a fold"
    )
    say(f"cross-validation: {repeats} x {folds} folds of split {reader.split!r} ({len(labels)} patches), {grouping}")

    rows: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for fold in range(folds):
            tag = f"repeat {repeat + 1}/{repeats} fold {fold + 1}/{folds}" if repeats > 1 else f"fold {fold + 1}/{folds}"
            fold_run = folder.fold(repeat + 1, fold + 1)
            fold_dir = fold_run.path
            train_part = SubsetReader(reader, np.flatnonzero(plan[repeat] != fold), description=f"{tag} train")
            valid_part = SubsetReader(reader, np.flatnonzero(plan[repeat] == fold), description=f"{tag} valid")
            if fold_run.finished():
                summary = fold_run.read_summary()
                say(f"[{tag}] already finished, kept")
            else:
                again = resume and fold_dir.is_dir() and any(fold_dir.iterdir())  # started: train resumes or restarts it
                summary = train(config, fold_dir, resume=again, progress=progress, log=_fold_log(log, tag),
                                readers=(train_part, valid_part), on_epoch=on_epoch, on_step=on_step)
            rows.append({
                "repeat": repeat + 1, "fold": fold + 1,
                "train_patches": len(train_part), "valid_patches": len(valid_part),
                **{metric: summary["best"][metric] for metric in CV_METRICS},
                "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
                "threshold": summary["threshold"], "wall_seconds": summary["wall_seconds"],
                "run": str(fold_dir.relative_to(out_dir)),
            })
            _write_results(folder.cv_results, rows)

    result = _cv_summary(rows, config, folds, repeats, group_source, reader)
    write_text_atomic(folder.cv_summary, json.dumps(_json_safe(result), indent=2))
    auc = result["metrics"]["val_auc"]
    say(f"cross-validation done: val_auc {_plus_minus(auc)}; median best epoch {result['best_epoch_median']}")
    result["folds"] = rows
    return result


def _write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _cv_summary(rows, config: RunConfig, folds: int, repeats: int, group_source: str, reader) -> dict[str, Any]:
    metrics = {metric: _spread([float(row[metric]) for row in rows]) for metric in CV_METRICS}
    repeat_means = {}
    for metric in CV_METRICS:
        means = [_spread([float(row[metric]) for row in rows if row["repeat"] == r])["mean"] for r in range(1, repeats + 1)]
        repeat_means[metric] = {"means": means, **{key: value for key, value in _spread(means).items() if key in ("mean", "sd")}}
    best_epochs = [int(row["best_epoch"]) for row in rows]
    thresholds = [float(row["threshold"]) for row in rows]
    median_epoch = float(statistics.median(best_epochs))
    return {
        "protocol": "kfold",
        "folds": folds,
        "repeats": repeats,
        "seed": config.data.seed,
        "split": config.data.train_split,
        "data": str(reader.root),
        "patches": len(reader),
        "groups": group_source,
        "monitor": config.train.monitor,
        "metrics": metrics,
        "repeat_means": repeat_means,
        "best_epoch_median": median_epoch,
        "epochs_for_final": max(1, math.floor(median_epoch + 0.5)),
        "threshold_median": float(statistics.median(thresholds)),
        "threshold_method": config.evaluate.threshold_method,
        "model": config.model.name,
        "runs": [row["run"] for row in rows],
    }


def _plus_minus(spread: dict[str, Any], digits: int = 4) -> str:
    if spread["mean"] is None:
        return "n/a"
    sd = "n/a" if spread["sd"] is None else f"{spread['sd']:.{digits}f}"
    return f"{spread['mean']:.{digits}f} +- {sd}"


def _epochs_text(epochs: int) -> str:
    return f"{epochs} epoch" + ("" if epochs == 1 else "s")


def format_cv_table(result: dict[str, Any]) -> str:
    """A plain-text table of the folds of a :func:`run_kfold` result, with mean +- sd and the median epoch."""
    header = f"{'repeat':>6} {'fold':>4} {'train':>7} {'valid':>7} {'val_auc':>8} {'val_loss':>8} {'val_acc@0.5':>11} {'best_epoch':>10}"
    lines = [header, "-" * len(header)]
    for row in result["folds"]:
        lines.append(
            f"{row['repeat']:>6} {row['fold']:>4} {row['train_patches']:>7} {row['valid_patches']:>7} "
            f"{float(row['val_auc']):>8.4f} {float(row['val_loss']):>8.4f} {float(row['val_accuracy']):>11.4f} "
            f"{int(row['best_epoch']):>10}"
        )
    lines.append("-" * len(header))
    for metric in CV_METRICS:
        name = f"{metric}@0.5" if metric == "val_accuracy" else metric  # accuracy at threshold 0.5
        lines.append(f"{name:>16}: {_plus_minus(result['metrics'][metric])}  (mean +- sd over {result['metrics'][metric]['n']} folds)")
    if result["repeats"] > 1:
        spread = result["repeat_means"]["val_auc"]
        lines.append(f"{'':>16}  val_auc of the {result['repeats']} repeat means: {_plus_minus(spread)}")
    lines.append(f"median best epoch: {result['best_epoch_median']:g} (final fit: {_epochs_text(result['epochs_for_final'])})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Final fit.


def _threshold_like_the_final_model(
    final_config: RunConfig, out_dir: Path, epochs: int, chosen: dict[str, Any] | None, splits: list[str],
    progress: bool, log: Callable[[str], None] | None, on_step: Callable[[Any, float], bool] | None = None,
) -> tuple[float, str, dict[str, Any]]:
    """The final model's threshold, where it came from, and the data it was chosen on (see :func:`run_final`)."""
    from pcamlab.data import load_split_arrays
    from pcamlab.evaluate.thresholds import ThresholdSelector
    from pcamlab.runtime.predictor import TorchPredictor
    from pcamlab.train.loop import train

    method = final_config.evaluate.threshold_method
    if chosen is not None and chosen["threshold"] is not None and chosen["threshold_method"] == method and all(
        _trained_like(final_config, run, epochs) for run in chosen["runs"]
    ):
        models = f"the median over its {len(chosen['runs'])} fold models" if len(chosen["runs"]) > 1 else "its model"
        source_summary = RunFolder(chosen["runs"][0]).read_summary() or {}
        chosen_on = source_summary.get("threshold_chosen_on") or {"data": final_config.data.path, "method": method}
        return float(chosen["threshold"]), (
            f"{method} on validation by {chosen['source']} ({models}, trained like this one: {_epochs_text(epochs)}, "
            "the same settings)"
        ), {**chosen_on, "method": method}
    data = final_config.data
    train_reader = _open_train_split(final_config, data.train_split)
    if data.valid_split in splits:
        valid_reader = _open_train_split(final_config, data.valid_split)
        where = f"split {data.valid_split!r}"
    else:
        train_part, valid_part = stratified_folds(train_reader.labels, 5, data.seed)[0]
        valid_reader = SubsetReader(train_reader, valid_part, description="threshold-fit valid")
        train_reader = SubsetReader(train_reader, train_part, description="threshold-fit train")
        where = f"a stratified fifth of split {data.train_split!r}"
    fit_run = RunFolder(out_dir).threshold_fit
    folder = fit_run.path
    say = log or (lambda line: None)
    say(f"final fit: choosing its {method} threshold with a model trained the same way ({_epochs_text(epochs)} on "
        f"{train_reader.split!r}), validated on {where}, in {folder}")
    calibration = copy.deepcopy(final_config)
    calibration.train.patience = 0  # all the epochs, as the final model
    train(calibration, folder, progress=progress, log=_fold_log(log, RunFolder.THRESHOLD_FIT),
          readers=(train_reader, valid_reader), on_step=on_step)
    images, labels, _ = load_split_arrays(valid_reader)
    probabilities = TorchPredictor.from_checkpoint(fit_run.last).predict_proba(images)  # fp32
    selector = ThresholdSelector(method, final_config.evaluate.target_sensitivity).fit(labels, probabilities)
    return float(selector.threshold_), (
        f"{method} on {where} by {RunFolder.THRESHOLD_FIT}/{RunFolder.LAST}, a model trained like this one "
        f"({_epochs_text(epochs)} on {train_reader.split!r}, the same settings)"
    ), {"data": str(valid_reader.root), "split": valid_reader.split, "method": method}


def _store_threshold(out_dir: Path, threshold: float, source: str, chosen_on: dict[str, Any]) -> None:
    """Put the final model's threshold and its source into its checkpoints and summary.json.

    ``contract.threshold_source`` says in words where it came from; the metadata's
    ``threshold_chosen_on`` (``{data, split, method}``) lets ``evaluate`` label numbers measured at it.
    """
    from pcamlab.fileio import write_json_atomic
    from pcamlab.runtime.checkpoint import load_checkpoint, save_checkpoint

    run = RunFolder(out_dir)
    contract = None
    for path in (run.last, run.best):
        checkpoint = load_checkpoint(path)
        contract = checkpoint.contract.replace(threshold=threshold, threshold_source=source)
        metadata = {**checkpoint.metadata, "threshold_chosen_on": chosen_on}
        save_checkpoint(path, checkpoint.model, checkpoint.config, contract, metadata)
    summary = run.read_summary()
    summary.update(threshold=threshold, contract=contract.to_dict(), threshold_chosen_on=chosen_on)
    write_json_atomic(run.summary, summary)


def choice_from_run(run: str | os.PathLike) -> dict[str, Any]:
    """The epoch count (and threshold) chosen on validation by an earlier run.

    Args:
        run: a hold-out run folder (its ``summary.json``: ``best_epoch``, ``threshold``), a cross-validation
            folder (its ``cv_summary.json``: the median best epoch rounded half up, the median threshold),
            or either JSON file itself.

    Returns:
        ``{"epochs": int, "threshold": float | None, "threshold_method": str, "source": str}``.

    Raises:
        ConfigError: no summary there, or it holds no usable best epoch.
    """
    path = Path(run)
    if path.is_dir():
        folder = RunFolder(path)
        for candidate in (folder.cv_summary, folder.summary):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise ConfigError(
                f"epochs_from {str(run)!r} holds neither {RunFolder.SUMMARY} nor {RunFolder.CV_SUMMARY}; point it at "
                "a finished training run or cross-validation folder", parameters=("epochs_from",)
            )
    if not path.is_file():
        raise ConfigError(f"epochs_from {str(run)!r} does not exist; point it at a finished run folder",
                          parameters=("epochs_from",))
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{str(path)!r} is not valid JSON; point epochs_from at a finished run folder",
                          parameters=("epochs_from",)) from None
    if summary.get("validated") is False:
        raise ConfigError(
            f"{str(path)!r} is a final fit: it was not validated, so its epoch count was not chosen on validation; "
            "point epochs_from at the hold-out run or cross-validation it came from", parameters=("epochs_from",)
        )
    if "epochs_for_final" in summary:
        epochs, threshold = summary["epochs_for_final"], summary.get("threshold_median")
    else:
        epochs, threshold = summary.get("best_epoch"), summary.get("threshold")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(
            f"{str(path)!r} has no best epoch >= 1 (got {epochs!r}); the run must have finished at least one "
            "validated epoch: give epochs instead", parameters=("epochs",)
        )
    runs = [path.parent / run for run in summary["runs"]] if "runs" in summary else [path.parent]
    return {"epochs": epochs, "threshold": threshold, "threshold_method": summary.get("threshold_method", "fixed"),
            "source": str(path), "runs": runs}


# Settings that change how a model is trained (and so the scale of its scores); the others (when to stop,
# where and how fast it runs) do not.
_NOT_TRAINING_SETTINGS = ("patience", "min_delta", "monitor", "device", "threads", "compile", "deterministic")


def _trained_like(final_config: RunConfig, run: Path, epochs: int) -> bool:
    """True when the run folder ``run`` trained its model as the final fit trains: same model, augmentation
    and train settings (``epochs`` epochs, the same schedule), its threshold chosen at its last epoch."""
    try:
        summary = json.loads(RunFolder(run).summary.read_text())
        saved = yaml.safe_load(RunFolder(run).config.read_text()) or {}
    except (OSError, json.JSONDecodeError, yaml.YAMLError):
        return False
    if not (summary.get("best_epoch") == summary.get("epochs_run") == epochs and summary.get("stop_reason") == "all epochs done"):
        return False
    mine = config_to_dict(final_config)
    theirs = saved.get("train", {})
    same_train = all(theirs.get(key) == value for key, value in mine["train"].items() if key not in _NOT_TRAINING_SETTINGS)
    same_model = saved.get("model", {}).get("name") == mine["model"]["name"]
    return same_train and same_model and saved.get("augment") == mine["augment"]


def run_final(
    config: RunConfig,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    epochs_from: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[Any, float], bool] | None = None,
) -> dict[str, Any]:
    """Fit on ``train + valid`` for a chosen number of epochs, then score the test split.

    Nothing is validated during this fit (there is no data left to validate on), so the epoch count
    must come from earlier validation: ``epochs``, or the best epoch of ``epochs_from`` (a hold-out run
    or a cross-validation folder), or else ``train.epochs`` (logged as not chosen on validation). Note
    that the count was chosen for a smaller training set; with more patches per epoch it is, if
    anything, on the safe side.

    With ``evaluate.threshold_method`` other than ``fixed``, the final model's threshold comes from
    models trained the same way (the same settings, this many epochs, the schedule over them, the last
    epoch kept): the threshold of ``epochs_from`` (the median over its folds) when its models were
    trained so; otherwise a model trained like the final one on ``data.train_split`` and validated on
    ``data.valid_split`` (a stratified fifth of the train split when there is none), in
    ``out_dir/threshold-fit/``, whose last epoch chooses it. A fold model chosen at the best epoch of
    a longer or budget schedule scores on another scale: its threshold would not fit the final model.
    The checkpoints' ``contract.threshold_source`` and ``final.json`` say which it was.

    Writes ``out_dir`` as a run folder (``last.safetensors`` = ``best.safetensors`` = the final model),
    ``threshold-fit/`` when a threshold had to be chosen so, ``eval-test/``
    (:func:`~pcamlab.evaluate.run.evaluate_checkpoint` of ``last.safetensors`` on ``data.test_split``)
    when the data has a labelled test split, and ``final.json``.

    Args:
        config: the resolved run configuration.
        out_dir: the run folder to create.
        epochs: number of epochs; overrides ``epochs_from``.
        epochs_from: a run folder or CV folder (or its summary JSON) to take the epoch count from.
        progress: show tqdm progress bars.
        log: called with one human-readable line per event.
        on_step: passed to :func:`~pcamlab.train.loop.train` of the final model and of ``threshold-fit/``
            (called after each optimiser step; True ends that training like a time budget would).

    Returns:
        The contents of ``final.json``: epochs and their source, patch counts, the training summary
        and the test metrics (or why there are none).

    Raises:
        RunError: ``out_dir`` holds a run.
        ConfigError: bad ``epochs`` or ``epochs_from``.

    Example:
        >>> result = run_final(config, "runs/final", epochs_from="runs/cv")
        >>> result["test"]["roc_auc"]
    """
    from pcamlab.data import available_splits
    from pcamlab.train.loop import train

    say = log or (lambda line: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderError(f"output folder {str(out_dir)!r} already holds a run; choose another out_dir",
                       parameters=("out_dir",))
    final_config = copy.deepcopy(config)
    chosen = None
    chosen_length = epochs is not None or epochs_from is not None
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1; got {epochs!r}")
        source = "given"
    elif epochs_from is not None:
        chosen = choice_from_run(epochs_from)
        epochs, source = chosen["epochs"], chosen["source"]
    else:
        epochs, source = config.train.epochs, "train.epochs (not chosen on validation)"
        say("final fit: neither epochs nor epochs_from given; using train.epochs, which was not chosen on validation")
    final_config.train.epochs = int(epochs)
    if chosen_length and final_config.train.schedule_over == "budget":
        # replay the chosen length: a schedule over a time budget would not end at the chosen epoch
        final_config.train.schedule_over, final_config.train.time_budget_minutes = "epochs", 0.0
        say(f"final fit: train.schedule_over=budget replaced by a schedule over the {int(epochs)} chosen epochs, "
            "without the time budget")

    data = config.data
    splits = available_splits(data.path, data.format)
    parts = [_open_train_split(config, data.train_split)]
    if data.valid_split in splits:
        parts.append(_open_train_split(config, data.valid_split))
    else:
        say(f"final fit: the data has no {data.valid_split!r} split; fitting on {data.train_split!r} alone")
    both = ConcatReader(parts)
    say(f"final fit: {_epochs_text(epochs)} ({source}) on {both.split} = "
        + " + ".join(str(len(part)) for part in parts) + f" = {len(both)} patches")
    train(final_config, out_dir, progress=progress, log=log, readers=(both, None), on_step=on_step)
    threshold, threshold_source = final_config.evaluate.threshold, "fixed"
    if final_config.evaluate.threshold_method != "fixed":
        threshold, threshold_source, chosen_on = _threshold_like_the_final_model(
            final_config, out_dir, int(epochs), chosen, splits, progress, log, on_step)
        _store_threshold(out_dir, threshold, threshold_source, chosen_on)
    say(f"final fit: threshold {threshold:.4f} ({threshold_source})")

    result: dict[str, Any] = {
        "protocol": "final",
        "epochs": int(epochs),
        "epochs_source": source,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "train_patches": {**{part.split: len(part) for part in parts}, "total": len(both)},
        "summary": RunFolder.SUMMARY,
        "checkpoint": str(RunFolder(out_dir).last),
    }
    test_split = data.test_split
    if test_split not in splits:
        result["test"] = {"skipped": f"the data has no {test_split!r} split ({splits} found)"}
        say(f"final fit: no {test_split!r} split in {data.path}; nothing to evaluate the final model on")
    elif getattr(_open_train_split(config, test_split), "unlabeled", False):
        result["test"] = {"skipped": f"the {test_split!r} split has no labels (predict it instead)"}
        say(f"final fit: the {test_split!r} split has no labels; use pcamlab predict on it")
    else:
        from pcamlab.evaluate.run import evaluate_checkpoint

        metrics = evaluate_checkpoint(
            RunFolder(out_dir).last, data.path, test_split, out_dir / "eval-test", format=data.format,
            tta=config.evaluate.tta, batch_size=config.evaluate.batch_size, device=config.train.device,
        )
        result["test"] = {"split": test_split, "folder": "eval-test",
                          **{key: metrics.get(key) for key in ("roc_auc", "roc_auc_ci", "accuracy") if key in metrics}}
        say(f"final fit: test {test_split!r} AUC {metrics.get('roc_auc', float('nan')):.4f} "
            f"(details in {out_dir / 'eval-test'})")
    write_text_atomic(RunFolder(out_dir).final, json.dumps(_json_safe(result), indent=2))
    return result
