"""``evaluate_slides``: a cohort of ``slide predict`` results scored against annotations, Camelyon16's way.

Reads one folder per slide (``RESULTS/<slide id>/``, as ``pcamlab slide predict --out RESULTS`` writes
them), the cohort's reference CSV (``slide,label``) and the annotations (a folder of ``<slide id>.xml`` /
``.geojson`` / mask files, :mod:`pcamlab.slide.annotations`), and writes into ``out_dir``:

- ``metrics.json``: slide level (ROC AUC with bootstrap 95% CI, sensitivity and specificity of the
  out-of-fold calls, for ``max``, ``top_k_mean`` and the learned ``aggregator``; the wrong slides, worst
  first), lesion level (FROC: sensitivity at 1/4..8 false positives per slide and their mean), pixel
  level (Dice, IoU, tile ROC AUC), the options used and any warnings;
- ``slides.csv``: one row per slide (label, scores, the call, largest lesion, hits, false positives, Dice);
- ``detections/<slide id>.csv``: each slide's detections in the challenge's CSV format;
- ``slide_roc.png``, ``froc.png``; ``slides/<slide id>.png`` for the slides shown in the report;
- ``report.html``: one self-contained page (see :mod:`pcamlab.slide.evaluation.report`).

Everything is written in this process's own hidden staging folder beside ``out_dir``
(:func:`pcamlab.fileio.staged_folder`) and renamed to it when complete; a finished ``out_dir`` is never
overwritten, and a second evaluation into the same ``out_dir`` while one runs is refused at once. Every input is checked before any slide is scored:
a reference slide without a result folder, a tumour slide without annotation, a normal slide whose
annotation holds tumour, annotations that do not fit the slide, a cohort of one class: one line each.

Example:
    >>> evaluation = evaluate_slides("results", "annotations", "reference.csv", "evaluation")
    >>> evaluation.metrics["lesion"]["froc"], evaluation.metrics["slide"]["scores"]["aggregator"]["roc_auc"]
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab import stopping
from pcamlab.config_ranges import SEED, Range, check_number
from pcamlab.errors import DataError, RunFolderError
from pcamlab.fileio import atomic_path, printable, staged_folder, write_json_atomic
from pcamlab.slide.annotations import ANNOTATION_SUFFIXES, find_annotation_file, rasterize, read_annotations
import pcamlab.slide.evaluation.froc as froc_module
from pcamlab.slide.evaluation.inputs import SlideInput
from pcamlab.slide.evaluation.detections import DetectionOptions, detect
from pcamlab.slide.evaluation.pixel import overlap, tile_labels
from pcamlab.slide.evaluation.slide_level import (
    FEATURES,
    cross_validate,
    map_features,
    summarise,
    top_k_mean,
    wrong_slides,
)
from pcamlab.slide.predict import OUTPUT_FILES, RUN_KEY
from pcamlab.slide.reference import read_reference

__all__ = ["EVALUATION_FILES", "SlideInput", "SlideEvaluation", "load_cohort", "evaluate_slides"]

EVALUATION_FILES = {  # key -> name in out_dir
    "metrics": "metrics.json",
    "slides_csv": "slides.csv",
    "slide_roc": "slide_roc.png",
    "froc": "froc.png",
    "report": "report.html",
    "detections": "detections",  # folder: <slide id>.csv per slide (Camelyon16 submission format)
    "pictures": "slides",  # folder: <slide id>.png per slide shown in the report
}
SLIDE_COLUMNS = ("slide", "label", "max", "top_k_mean", "aggregator", "aggregator_threshold", "call", "correct",
                 "largest_lesion_um", "lesions", "lesions_hit", "itc_regions", "false_positives", "detections",
                 "dice", "iou", "tiles", "tumour_tiles")


@dataclass
class SlideEvaluation:
    """What :func:`evaluate_slides` returns: ``metrics`` (the content of metrics.json), ``rows`` (slides.csv,
    wrong slides first), ``files`` (key of :data:`EVALUATION_FILES` -> path) and ``out_dir``."""

    out_dir: Path
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


def _result_folders(results: Path) -> dict[str, Path]:
    if not results.is_dir():
        raise DataError(f"results folder {printable(results)!r} does not exist; pass the out folder of "
                        "pcamlab slide predict (one folder per slide)")
    found = {path.parent.name: path.parent for path in sorted(results.glob(f"*/{OUTPUT_FILES['summary']}"))}
    if not found:
        raise DataError(f"{printable(results)!r} holds no slide results (no <slide>/{OUTPUT_FILES['summary']}); "
                        "pass the out folder of pcamlab slide predict")
    return found


def _read_summary(folder: Path) -> dict[str, Any]:
    path = folder / OUTPUT_FILES["summary"]
    try:
        summary = json.loads(path.read_text())
        grid = summary["grid"]
        for key in ("stride", "patch_size", "read_scale", "level_downsample", "mpp0", "rows", "cols"):
            float(grid[key])
        [int(value) for value in summary["slide_dimensions"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{printable(path)!r} is not a slide predict summary ({type(error).__name__}: {error}); "
                        "predict the slide again with pcamlab slide predict") from None
    return summary


def load_cohort(results: str | os.PathLike, annotations: str | os.PathLike, reference: str | os.PathLike, *,
                class_map: Mapping[str, str] | None = None, mask_downsample: float | None = None,
                repair: bool = True, notes: list[str] | None = None) -> list[SlideInput]:
    """The checked cohort: every reference slide with its result folder, geometry and annotation.

    Args:
        results: the out folder of ``pcamlab slide predict``.
        annotations: an annotation folder (``<slide id>.xml`` / ``.geojson`` / masks) or, for a one-slide
            cohort, one file.
        reference: the reference CSV (``slide,label``).
        class_map, mask_downsample, repair: how annotation files are read
            (:func:`pcamlab.slide.annotations.read_annotations`).
        notes: receives a sentence about result folders the reference does not list (left out).

    Raises:
        DataError: one line for the first problem: reference slides with no result folder, a cohort of one
            class, a tumour slide without tumour annotation, a normal slide whose annotation holds tumour,
            annotations that do not fit the slide, an unreadable summary or annotation file.
    """
    notes = [] if notes is None else notes
    results, annotations = Path(results), Path(annotations)
    labels = read_reference(reference)
    folders = _result_folders(results)
    missing = [slide for slide in labels if slide not in folders]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} slide(s) of the reference have no result folder in {printable(results)!r}: "
                        f"{shown}; predict them with pcamlab slide predict, or remove them from the reference")
    extra = sorted(set(folders) - set(labels))
    if extra:
        notes.append(f"{len(extra)} result folder(s) not in the reference were left out: "
                     + ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    tumour_count = sum(labels.values())
    if tumour_count in (0, len(labels)):
        kind = "tumour" if tumour_count else "normal"
        raise DataError(f"the reference lists only {kind} slides ({len(labels)}); slide ROC AUC and FROC need both "
                        "tumour and normal slides")
    if not annotations.exists():
        raise DataError(f"annotations {printable(annotations)!r} does not exist; pass the folder of <slide id>.xml "
                        "/ .geojson annotation files")
    if annotations.is_dir():
        known = set(labels) | set(folders)
        orphans = sorted({path.name.split(".")[0] for path in annotations.iterdir() if path.is_file()
                          and path.suffix.lower() in ANNOTATION_SUFFIXES and not path.name.startswith(".")}
                         - known)
        orphans = [name for name in orphans if name.removesuffix("_mask") not in known]
        if orphans:
            notes.append(f"{len(orphans)} annotation file(s) name a slide in neither the reference nor the results "
                         "(not scored): " + ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else ""))
    cohort = []
    for slide, label in labels.items():
        folder = folders[slide]
        summary = _read_summary(folder)
        grid = summary["grid"]
        scale = float(grid["read_scale"]) * float(grid["level_downsample"])
        dimensions = (int(summary["slide_dimensions"][0]), int(summary["slide_dimensions"][1]))
        path = find_annotation_file(annotations, slide)
        slide_annotations = None
        if path is not None:
            slide_annotations = read_annotations(path, slide_dimensions=dimensions, class_map=class_map,
                                                 mask_downsample=mask_downsample, repair=repair)
        if path is not None and annotations.is_dir():
            _note_other_formats(notes, slide, path, slide_annotations, dimensions, class_map, mask_downsample, repair)
        has_tumour = slide_annotations is not None and not slide_annotations.tumour.is_empty
        if label == 1 and not has_tumour:
            what = "no annotation file" if path is None else f"no tumour region in {printable(path)!r}"
            raise DataError(f"tumour slide {slide!r} has {what} under {printable(annotations)!r}; lesion and pixel "
                            "scores need its tumour outlined (<slide id>.xml or .geojson)")
        if label == 0 and has_tumour:
            raise DataError(f"slide {slide!r} is normal in the reference but {printable(path)!r} outlines tumour; "
                            "fix the reference label or the annotation file")
        cohort.append(SlideInput(slide, folder, label, summary, slide_annotations,
                                 float(grid["stride"]) * scale, float(grid["patch_size"]) * scale,
                                 float(grid["mpp0"]), dimensions))
    return cohort


def _note_other_formats(notes: list[str], slide: str, path: Path, read, dimensions, class_map, mask_downsample,
                        repair) -> None:
    """A note when the folder holds the slide's annotation in another format too and its tumour differs from
    the file that was read (:func:`find_annotation_file`: ASAP XML wins over GeoJSON, GeoJSON over a mask)."""
    for suffix in ANNOTATION_SUFFIXES:
        other = path.with_name(f"{slide}{suffix}")
        if other == path or not other.is_file():
            continue
        try:
            second = read_annotations(other, slide_dimensions=dimensions, class_map=class_map,
                                      mask_downsample=mask_downsample, repair=repair)
        except DataError as error:
            notes.append(f"{slide}: {printable(path.name)!r} was read; {printable(other.name)!r} is unreadable ({error})")
            continue
        first_tumour = read.tumour if read is not None else None
        differs = (first_tumour is None) != (second.tumour is None) or (
            first_tumour is not None and first_tumour.symmetric_difference(second.tumour).area
            > 0.01 * max(first_tumour.area, second.tumour.area, 1.0))
        if differs:
            notes.append(f"{slide}: {printable(path.name)!r} and {printable(other.name)!r} outline different tumour; "
                         f"{printable(path.name)!r} was read (ASAP XML wins over GeoJSON, GeoJSON over a mask)")


def _load_maps(item: SlideInput) -> tuple[np.ndarray, np.ndarray]:
    """(probability map, tile probabilities) of a result folder, shapes checked against its grid."""
    grid = item.summary["grid"]
    try:
        probability_map = np.load(item.folder / OUTPUT_FILES["probability_map"])
        tiles = np.load(item.folder / OUTPUT_FILES["tile_probabilities"])
    except (OSError, ValueError) as error:
        raise DataError(f"result folder {printable(item.folder)!r} lacks a readable probability map ({error}); "
                        "predict the slide again") from None
    cells = int(grid["patch_size"]) // int(grid["stride"])
    expected_tiles = (int(grid["rows"]), int(grid["cols"]))
    expected_map = (expected_tiles[0] + cells - 1, expected_tiles[1] + cells - 1)
    if tiles.shape != expected_tiles or probability_map.shape != expected_map:
        raise DataError(f"result folder {printable(item.folder)!r}: maps of shape {probability_map.shape} and "
                        f"{tiles.shape} do not match its grid ({expected_map}, {expected_tiles}); predict it again")
    return probability_map.astype(np.float32), tiles.astype(np.float32)


@dataclass
class _Scored:
    """One slide after scoring (kept for the report)."""

    item: SlideInput
    lesions: froc_module.SlideLesions
    features: dict[str, float]
    scores: dict[str, float]
    pixel: dict[str, Any]
    tile_probabilities: np.ndarray
    tile_truth: np.ndarray


def _score(item: SlideInput, detection: DetectionOptions, top_k: int, threshold: float | None,
           lesion_options: dict[str, Any]) -> _Scored:
    probability_map, tiles = _load_maps(item)
    detections = detect(probability_map, item.cell_level0, item.mpp, detection)
    tumour = item.tumour
    mask = None
    if item.label == 1:
        downsample = froc_module.mask_downsample(item.mpp)
        shape = (math.ceil(item.dimensions[1] / downsample), math.ceil(item.dimensions[0] / downsample))
        mask = froc_module.evaluation_mask(rasterize(tumour, shape, downsample), downsample, item.mpp,
                                           **lesion_options)
    lesions = froc_module.score_slide(item.slide, detections, mask)
    cut = float(item.summary.get("threshold", 0.5) if threshold is None else threshold)
    truth_map = rasterize(tumour, probability_map.shape, item.cell_level0)
    pixel = overlap(np.nan_to_num(probability_map, nan=0.0) >= cut, truth_map)
    pixel["threshold"] = cut
    rows, cols = np.nonzero(np.isfinite(tiles))
    truth = tile_labels(rows, cols, item.cell_level0, item.tile_size_level0, tumour)
    known = tiles[rows, cols]
    scores = {"max": float(known.max()) if known.size else 0.0, "top_k_mean": top_k_mean(known, top_k)}
    features = map_features(probability_map, item.cell_level0 * item.mpp)
    return _Scored(item, lesions, features, scores, pixel, known.astype(np.float64), truth)


def _pixel_summary(scored: list[_Scored]) -> tuple[dict[str, Any], list[str]]:
    from pcamlab.evaluate.metrics import roc_auc

    notes = []
    tumour = [entry.pixel for entry in scored if entry.item.label == 1]
    dice = [row["dice"] for row in tumour if row["dice"] is not None]
    iou = [row["iou"] for row in tumour if row["iou"] is not None]
    intersection = sum(entry.pixel["intersection"] for entry in scored)
    predicted = sum(entry.pixel["predicted"] for entry in scored)
    truth = sum(entry.pixel["truth"] for entry in scored)
    probabilities = np.concatenate([entry.tile_probabilities for entry in scored])
    labels = np.concatenate([entry.tile_truth for entry in scored])
    tile_auc = roc_auc(labels, np.clip(probabilities, 0, 1)) if labels.size else None
    if tile_auc is None:
        notes.append("tile ROC AUC is undefined: the tiles' centres hold only one class")
    thresholds = sorted({entry.pixel["threshold"] for entry in scored})
    return {
        "threshold": thresholds[0] if len(thresholds) == 1 else thresholds,
        "dice_mean": float(np.mean(dice)) if dice else None,
        "iou_mean": float(np.mean(iou)) if iou else None,
        "dice_pooled": 2 * intersection / (predicted + truth) if predicted + truth else None,
        "iou_pooled": intersection / (predicted + truth - intersection) if predicted + truth else None,
        "tumour_slides": len(tumour),
        "tile_roc_auc": tile_auc,
        "tiles": int(labels.size),
        "tumour_tiles": int(labels.sum()),
    }, notes


def _write_slides_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=SLIDE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else
                                   f"{row[key]:.6g}" if isinstance(row.get(key), float) else printable(row[key]))
                             for key in SLIDE_COLUMNS})


def _refuse_out(out_dir: Path) -> None:
    """Raise when ``out_dir`` is a file or already holds files (a finished evaluation is never overwritten)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"out_dir {printable(out_dir)!r} is a file; choose a folder", parameters=("out_dir",))
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise RunFolderError(f"{printable(out_dir)!r} already holds files; an evaluation is never overwritten: "
                             "choose another out_dir or delete it", parameters=("out_dir",))


# The allowed range of every number evaluate_slides takes, declared once (parameter -> (range, integer)).
# Camelyon16's own values: dilation 75 um, ITC 275 um (Evaluation_FROC.py); larger than 1 mm / 10 mm is no
# longer that rule. 100 folds and 100,000 resamples are far past where the estimates stop changing.
OPTION_RANGES: dict[str, tuple[Range, bool]] = {
    "top_k": (Range(1, 1_000_000, example="10", meaning="tiles"), True),
    "folds": (Range(2, 100, example="5"), True),
    "bootstrap": (Range(0, 100_000, example="1000", meaning="resamples; 0 = no CI"), True),
    "report_slides": (Range(0, 10_000, example="40"), True),
    "threshold": (Range(0, 1, example="0.5", meaning="a probability"), False),
    "dilation_um": (Range(0, 1000, example="75", meaning="um"), False),
    "itc_um": (Range(0, 10_000, example="275", meaning="um"), False),
    "seed": (SEED, True),
}


def _check_options(values: Mapping[str, Any]) -> None:
    """One ConfigError naming the first option out of :data:`OPTION_RANGES` (None: not given)."""
    for name, (allowed, integer) in OPTION_RANGES.items():
        if values.get(name) is not None:
            check_number(name, values[name], allowed, integer=integer)


def _models(cohort: list[SlideInput]) -> dict[str, list[str]]:
    """model_sha256 (or the model's name when a summary has no hash) -> the slides predicted with it."""
    models: dict[str, list[str]] = {}
    for item in cohort:
        run = item.summary.get(RUN_KEY) or {}
        model = run.get("model_sha256") or item.summary.get("model_sha256") or item.summary.get("model") or "unknown"
        models.setdefault(str(model), []).append(item.slide)
    return models


def evaluate_slides(
    results: str | os.PathLike,
    annotations: str | os.PathLike,
    reference: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    detection: DetectionOptions = DetectionOptions(),
    top_k: int = 10,
    threshold: float | None = None,
    aggregator: str = "random_forest",
    folds: int = 5,
    seed: int = 0,
    bootstrap: int = 1000,
    dilation_um: float = froc_module.DILATION_UM,
    itc_um: float = froc_module.ITC_UM,
    itc_axis: str = "major_axis",
    class_map: Mapping[str, str] | None = None,
    mask_downsample: float | None = None,
    repair: bool = True,
    report_slides: int = 40,
    mixed_models: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> SlideEvaluation:
    """Score a cohort's slide predictions at slide, lesion and pixel level and write the evaluation folder.

    Args:
        results: the out folder of ``pcamlab slide predict`` (``<slide id>/summary.json`` ...).
        annotations: folder of annotation files named by slide id (or one file for a one-slide cohort).
        reference: reference CSV, one row ``slide,label`` per slide (tumor/normal or 1/0).
        out_dir: the evaluation folder to create (must not exist or be empty).
        detection: how lesion detections are made from each map (:class:`DetectionOptions`).
        top_k: the ``top_k_mean`` slide score averages the ``top_k`` highest tile probabilities.
        threshold: probability at which a map cell counts as tumour for Dice/IoU (default: each slide's
            ``slide predict`` threshold, the model's).
        aggregator: ``"random_forest"`` or ``"logistic"`` (the learned slide score).
        folds: most folds of the cross-validation over slides.
        seed: seed of the folds, the forest and the bootstrap.
        bootstrap: resamples of the slide ROC AUC's 95% CI (0 = none).
        dilation_um, itc_um, itc_axis: the FROC's reference regions (:func:`froc.evaluation_mask`).
        class_map, mask_downsample, repair: how annotation files are read (extra class names -> tumour,
            normal or exclude; a label mask's downsample; repair self-intersecting polygons).
        report_slides: most slides drawn in the report (wrong slides first).
        mixed_models: score results predicted by different models together (their ``summary.json`` record
            different ``model_sha256``); refused by default, since such a cohort scores no one model.
        progress: ``progress(slides_done, slides_total)`` after each slide.

    Returns:
        A :class:`SlideEvaluation`.

    Raises:
        DataError: bad input (see :func:`load_cohort`), detections outside a slide, results of different
            models (unless ``mixed_models``).
        ConfigError: an option out of its range (:data:`OPTION_RANGES`, :data:`DETECTION_RANGES`).
        RunFolderError: ``out_dir`` is a file or holds files, or another process is writing it now
            (:func:`pcamlab.fileio.staged_folder`).

    Example:
        >>> evaluation = evaluate_slides("results", "annotations", "reference.csv", "evaluation", folds=5)
        >>> evaluation.metrics["lesion"]["froc"]
    """
    out_dir = Path(out_dir)
    _check_options({"top_k": top_k, "folds": folds, "bootstrap": bootstrap, "report_slides": report_slides,
                    "threshold": threshold, "dilation_um": dilation_um, "itc_um": itc_um, "seed": seed})
    lesion_options = {"dilation_um": dilation_um, "itc_um": itc_um, "itc_axis": itc_axis}
    froc_module.evaluation_mask(np.zeros((1, 1)), 1.0, 1.0, **lesion_options)  # checks the options at once
    _refuse_out(out_dir)  # before the inputs are read
    notes: list[str] = []
    cohort = load_cohort(results, annotations, reference, class_map=class_map, mask_downsample=mask_downsample,
                         repair=repair, notes=notes)
    models = _models(cohort)
    if len(models) > 1 and not mixed_models:
        shown = "; ".join(f"{model[:12]}: {', '.join(slides[:3])}{' ...' if len(slides) > 3 else ''} "
                          f"({len(slides)} slide(s))" for model, slides in models.items())
        raise DataError(f"the results of {printable(results)!r} come from {len(models)} different models "
                        f"(model_sha256 of summary.json: {shown}); predict every slide with one model, or pass "
                        "mixed_models=True to score them together anyway", parameters=("mixed_models",))
    if len(models) > 1:
        notes.append(f"the slides were predicted by {len(models)} different models (mixed_models=True)")
    with staged_folder(out_dir) as partial:  # refuses at once when another process writes out_dir now
        return _evaluate(cohort, partial, out_dir, notes, models, results=results, reference=reference,
                         detection=detection, top_k=top_k, threshold=threshold, aggregator=aggregator, folds=folds,
                         seed=seed, bootstrap=bootstrap, lesion_options=lesion_options, report_slides=report_slides,
                         mixed_models=mixed_models, progress=progress)


def _evaluate(cohort: list[SlideInput], partial: Path, out_dir: Path, notes: list[str], models: dict[str, list[str]],
              *, results, reference, detection: DetectionOptions, top_k: int, threshold: float | None, aggregator: str,
              folds: int, seed: int, bootstrap: int, lesion_options: dict[str, Any], report_slides: int,
              mixed_models: bool, progress) -> SlideEvaluation:
    """The body of :func:`evaluate_slides`: score the checked cohort and write everything into ``partial``."""
    from pcamlab.slide.evaluation import report as report_module

    scored: list[_Scored] = []
    with stopping.safe_points():
        for index, item in enumerate(cohort):
            stopping.check()
            scored.append(_score(item, detection, top_k, threshold, lesion_options))
            if progress is not None:
                progress(index + 1, len(cohort))
    slides = [entry.item.slide for entry in scored]
    labels = np.array([entry.item.label for entry in scored], dtype=np.int64)
    features = np.array([[entry.features[name] for name in FEATURES] for entry in scored])
    fixed = {name: [entry.scores[name] for entry in scored] for name in ("max", "top_k_mean")}
    validated = cross_validate(features, labels, fixed, aggregator=aggregator, folds=folds, seed=seed, notes=notes)
    primary = "aggregator"
    slide_metrics = {
        "slides": len(slides), "tumour_slides": int(labels.sum()), "normal_slides": int(len(labels) - labels.sum()),
        "aggregator": aggregator, "features": list(FEATURES), "top_k": top_k, "primary": primary,
        "threshold_rule": "Youden's J on the training slides of each fold",
        "scores": {name: summarise(result, labels, bootstrap=bootstrap, seed=seed) for name, result in validated.items()},
        "wrong": wrong_slides(validated[primary], labels, slides),
    }
    curve = froc_module.compute_froc([entry.lesions for entry in scored])
    if curve.score is None:
        notes.append("FROC is undefined: no tumour slide has a lesion above the ITC size")
    lesion_metrics = {
        "froc": curve.score,
        "sensitivity_at": {f"{rate:g}": value for rate, value in (curve.sensitivities or {}).items()},
        "lesions": curve.lesions,
        "lesions_hit": sum(entry.lesions.lesions_hit for entry in scored),
        "itc_regions": sum(len(entry.lesions.itc) for entry in scored),
        "detections": sum(len(entry.lesions.detections) for entry in scored),
        "false_positives": sum(len(entry.lesions.false_positives) for entry in scored),
        "detection": detection.to_dict(), **lesion_options,
        "source": "Camelyon16 Evaluation_FROC.py (Bejnordi et al., JAMA 2017); see docs/slide-evaluation.md",
    }
    pixel_metrics, pixel_notes = _pixel_summary(scored)
    notes += pixel_notes
    for entry in scored:
        notes += [f"{entry.item.slide}: {note}" for note in (entry.item.annotations.notes if entry.item.annotations
                                                             else ())]

    rows = []
    result = validated[primary]
    for index, entry in enumerate(scored):
        rows.append({
            "slide": entry.item.slide, "label": "tumour" if entry.item.label else "normal",
            "max": entry.scores["max"], "top_k_mean": entry.scores["top_k_mean"],
            "aggregator": float(result.scores[index]), "aggregator_threshold": float(result.thresholds[index]),
            "call": "tumour" if result.decisions[index] else "normal",
            "correct": bool(result.decisions[index] == entry.item.label),
            "largest_lesion_um": entry.lesions.largest_lesion_um, "lesions": entry.lesions.lesions,
            "lesions_hit": entry.lesions.lesions_hit, "itc_regions": len(entry.lesions.itc),
            "false_positives": len(entry.lesions.false_positives), "detections": len(entry.lesions.detections),
            "dice": entry.pixel["dice"], "iou": entry.pixel["iou"],
            "tiles": int(entry.tile_truth.size), "tumour_tiles": int(entry.tile_truth.sum()),
        })
    margin = {row["slide"]: row["margin"] for row in slide_metrics["wrong"]}
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["correct"], -margin.get(rows[i]["slide"], 0.0),
                                                    -(rows[i]["lesions"] - rows[i]["lesions_hit"]), rows[i]["slide"]))
    rows = [rows[i] for i in order]
    scored = [scored[i] for i in order]
    metrics = {"results": printable(Path(results).resolve()), "reference": printable(Path(reference).resolve()),
               "models": [{"model_sha256": model, "slides": len(slides)} for model, slides in models.items()],
               "options": {"seed": seed, "folds": folds, "bootstrap": bootstrap, "top_k": top_k, "threshold": threshold,
                           "aggregator": aggregator, "report_slides": report_slides, "mixed_models": mixed_models,
                           "detection": detection.to_dict(), **lesion_options},
               "slide": slide_metrics, "lesion": lesion_metrics, "pixel": pixel_metrics, "warnings": notes}

    files = {key: partial / name for key, name in EVALUATION_FILES.items()}
    for entry in scored:
        froc_module.write_detections_csv(files["detections"] / f"{entry.item.slide}.csv", entry.lesions.detections)
    _write_slides_csv(files["slides_csv"], rows)
    report_module.plot_slide_roc(files["slide_roc"], labels[order], {
        name: (validated[name].scores[order], slide_metrics["scores"][name]) for name in validated})
    report_module.plot_froc(files["froc"], curve)
    pictures = {}
    with stopping.safe_points():
        for entry in scored[:report_slides]:
            stopping.check()
            probability_map, _ = _load_maps(entry.item)
            pictures[entry.item.slide] = report_module.plot_slide(
                files["pictures"] / f"{entry.item.slide}.png", entry.item, probability_map, entry.lesions)
    write_json_atomic(files["metrics"], metrics)
    report_module.write_evaluation_report(files["report"], metrics, rows, files, pictures)
    return SlideEvaluation(out_dir, metrics, rows, {key: out_dir / name for key, name in EVALUATION_FILES.items()})
