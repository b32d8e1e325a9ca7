"""Pictures and the cohort HTML report of a slide evaluation, in the run report's style.

- :func:`plot_slide_roc`: the out-of-fold ROC curve of every slide score, with its AUC (95% CI) and the
  operating point of the calls made with each fold's threshold.
- :func:`plot_froc`: sensitivity against average false positives per slide (log axis), the six points
  Camelyon16 reads marked, the FROC score in the title.
- :func:`plot_slide`: one slide: its thumbnail and its heatmap side by side, the annotated tumour outlined,
  detections marked (hit, false positive, on an ITC region).
- :func:`write_evaluation_report`: one self-contained HTML page (the CSS, cards, notes and figure blocks of
  :mod:`pcamlab.evaluate.report`), wrong slides first.

Example:
    >>> plot_froc("froc.png", compute_froc([tumour_slide, normal_slide]))
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pcamlab.evaluate.plots import DPI, NEGATIVE_COLOUR, POSITIVE_COLOUR, finish_rate_axes, new_figure
from pcamlab.evaluate.report import CSS, figure_html, format_value, note_html
from pcamlab.fileio import save_png, write_text_atomic
from pcamlab.slide.evaluation.froc import FALSE_POSITIVE, HIT, ITC_HIT, FROCResult, SlideLesions

if TYPE_CHECKING:
    from pcamlab.slide.evaluation.inputs import SlideInput

__all__ = ["plot_slide_roc", "plot_froc", "plot_slide", "write_evaluation_report"]

SCORE_NAMES = {"max": "max tile probability", "top_k_mean": "mean of the top k tiles",
               "aggregator": "learned aggregator (map features)"}
SCORE_COLOURS = {"max": "#7f7f7f", "top_k_mean": NEGATIVE_COLOUR, "aggregator": POSITIVE_COLOUR}
OUTLINE_COLOUR = "#00e5ff"  # the annotated tumour: cyan stands out on the map's inferno and on H&E
MARKERS = {HIT: ("o", "#39ff14", "hit"), FALSE_POSITIVE: ("x", "#ff3030", "false positive"),
           ITC_HIT: ("s", "#bbbbbb", "on an ITC region (ignored)")}


def plot_slide_roc(path: str | Path, labels: np.ndarray, scores: Mapping[str, tuple[np.ndarray, Mapping[str, Any]]]) -> Path:
    """ROC curves of the out-of-fold slide scores.

    Args:
        path: PNG to write.
        labels: int ``(N,)`` 1 = tumour slide.
        scores: name -> (``(N,)`` out-of-fold scores, their summary with roc_auc, roc_auc_ci, sensitivity,
            specificity).
    """
    from pcamlab.evaluate.metrics import roc_curve

    figure = new_figure(5.6, 5.2)
    axes = figure.add_subplot()
    for name, (values, summary) in scores.items():
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, np.clip(values, 0, 1))
        text = f"{SCORE_NAMES.get(name, name)}: AUC {format_value(summary['roc_auc'])}"
        if summary.get("roc_auc_ci"):
            low, high = summary["roc_auc_ci"]
            text += f" ({low:.3f}-{high:.3f})"
        colour = SCORE_COLOURS.get(name, "black")
        axes.plot(false_positive_rate, true_positive_rate, color=colour, linewidth=1.8, label=text,
                  drawstyle="default")
        if summary.get("sensitivity") is not None and summary.get("specificity") is not None:
            axes.plot([1 - summary["specificity"]], [summary["sensitivity"]], marker="o", color=colour,
                      markeredgecolor="black", linestyle="none")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    finish_rate_axes(axes, x_label="False positive rate (1 - specificity), normal slides",
                     y_label="True positive rate (sensitivity), tumour slides",
                     title=f"Slide-level ROC, out of fold ({len(labels)} slides, {int(np.sum(labels))} tumour)",
                     legend="lower right", legend_size=7, square=True)
    return save_png(figure, path, dpi=DPI)


def plot_froc(path: str | Path, curve: FROCResult) -> Path:
    """The FROC curve: sensitivity against average false positives per slide (log axis), the 6 read points."""
    figure = new_figure(6.0, 4.6)
    axes = figure.add_subplot()
    if curve.score is None:
        axes.text(0.5, 0.5, "FROC undefined: no lesion above the ITC size in the cohort", ha="center",
                  va="center", transform=axes.transAxes)
        axes.set_xticks([])
        axes.set_yticks([])
        return save_png(figure, path, dpi=DPI)
    x = np.maximum(curve.false_positives_per_slide[::-1], 1e-3)  # increasing; 0 drawn at the left edge
    axes.step(x, curve.sensitivity[::-1], where="post", color=POSITIVE_COLOUR, linewidth=1.6, label="FROC curve")
    rates = list(curve.sensitivities)
    axes.plot(rates, [curve.sensitivities[rate] for rate in rates], marker="o", color="black", linestyle="none",
              label="read at 1/4, 1/2, 1, 2, 4, 8 FP per slide")
    axes.set_xscale("log")
    axes.set_xlim(0.1, max(16.0, float(x.max()) * 1.2))
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("Average false positives per slide")
    axes.set_ylabel("Sensitivity (lesions hit)")
    axes.set_title(f"Lesion-level FROC: score {curve.score:.3f} ({curve.lesions} lesions, {curve.slides} slides)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right", fontsize=8)
    return save_png(figure, path, dpi=DPI)


def _draw_geometry(axes, geometry, scale: float) -> None:
    """Outline every polygon (and hole) of a shapely geometry, coordinates multiplied by ``scale``."""
    if geometry is None or geometry.is_empty:
        return
    parts = getattr(geometry, "geoms", [geometry])
    for part in parts:
        for ring in (getattr(part, "exterior", None), *getattr(part, "interiors", ())):
            if ring is None:
                continue
            xy = np.asarray(ring.coords) * scale
            axes.plot(xy[:, 0], xy[:, 1], color=OUTLINE_COLOUR, linewidth=1.2)


def plot_slide(path: str | Path, item: SlideInput, probability_map: np.ndarray, lesions: SlideLesions) -> Path:
    """One slide's thumbnail and heatmap side by side (axes in mm), tumour outlined, detections marked."""
    from matplotlib import colormaps
    from PIL import Image

    from pcamlab.slide.predict import OUTPUT_FILES

    scale = item.mpp / 1000  # level-0 px -> mm
    width_mm, height_mm = item.dimensions[0] * scale, item.dimensions[1] * scale
    thumbnail_path = item.folder / OUTPUT_FILES["thumbnail"]
    thumbnail = None
    if thumbnail_path.is_file():
        try:
            thumbnail = np.asarray(Image.open(thumbnail_path).convert("RGB"))
        except OSError:
            thumbnail = None
    panels = 2 if thumbnail is not None else 1
    aspect = height_mm / max(width_mm, 1e-9)
    figure = new_figure(5.0 * panels, max(2.6, min(8.0, 4.6 * aspect + 0.9)))
    axes_list = figure.subplots(1, panels, squeeze=False)[0]
    map_height = probability_map.shape[0] * item.cell_level0 * scale
    map_width = probability_map.shape[1] * item.cell_level0 * scale
    colour_map = colormaps["inferno"].with_extremes(bad="#ebebeb")
    images = []
    if thumbnail is not None:
        images.append(("slide", lambda axes: axes.imshow(thumbnail, extent=(0, width_mm, height_mm, 0))))
    images.append(("tumour probability", lambda axes: axes.imshow(
        np.ma.masked_invalid(probability_map), extent=(0, map_width, map_height, 0), cmap=colour_map, vmin=0,
        vmax=1, interpolation="nearest")))
    for axes, (title, draw) in zip(axes_list, images):
        image = draw(axes)
        _draw_geometry(axes, item.tumour, scale)
        for outcome, (marker, colour, label) in MARKERS.items():
            chosen = lesions.outcome == outcome
            if np.any(chosen):
                points = lesions.detections[chosen]
                axes.plot(points[:, 1] * scale, points[:, 2] * scale, marker=marker, color=colour, linestyle="none",
                          markersize=6, markeredgecolor="black", markeredgewidth=0.5, label=label)
        axes.set_xlim(0, width_mm)
        axes.set_ylim(height_mm, 0)
        axes.set_xlabel("mm")
        axes.set_title(title, fontsize=9)
        if title == "tumour probability":
            figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03)
    handles, names = axes_list[-1].get_legend_handles_labels()
    if handles:
        axes_list[-1].legend(handles, names, loc="lower right", fontsize=6)
    label = "tumour" if item.label else "normal"
    figure.suptitle(f"{item.slide} ({label}): {lesions.lesions_hit} of {lesions.lesions} lesions hit, "
                    f"{len(lesions.false_positives)} false positives", fontsize=10)
    return save_png(figure, path, dpi=80)


def _card(value: Any, label: str) -> str:
    return (f'<div class="card"><div class="value">{html.escape(format_value(value))}</div>'
            f'<div class="label">{html.escape(label)}</div></div>')


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(
        f'<td class="{"number" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""}">'
        f"{html.escape(format_value(value))}</td>" for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_block(path: Path, title: str, meaning: str) -> str:
    try:
        return figure_html(Path(path).read_bytes(), title, meaning, Path(path).name)
    except OSError as error:
        return note_html(f"{Path(path).name} could not be read ({error}); it is left out.")


def write_evaluation_report(path: str | Path, metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                            files: Mapping[str, Path], pictures: Mapping[str, Path]) -> Path:
    """The evaluation's self-contained HTML page.

    Args:
        path: the HTML file to write.
        metrics: the content of ``metrics.json``.
        rows: the per-slide rows (``slides.csv``), wrong slides first.
        files: key of ``EVALUATION_FILES`` -> path (the ROC and FROC pictures are embedded).
        pictures: slide id -> its PNG (:func:`plot_slide`), embedded in the order of ``rows``.
    """
    slide, lesion, pixel = metrics["slide"], metrics["lesion"], metrics["pixel"]
    primary = slide["scores"][slide["primary"]]
    interval = primary.get("roc_auc_ci")
    cards = [
        _card(primary["roc_auc"], "slide ROC AUC (learned aggregator, out of fold)"),
        _card(f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else None, "its 95% CI (bootstrap over slides)"),
        _card(primary["sensitivity"], "sensitivity (tumour slides found)"),
        _card(primary["specificity"], "specificity (normal slides cleared)"),
        _card(lesion["froc"], "FROC score (lesion level)"),
        _card(pixel["dice_mean"], "Dice, mean over tumour slides"),
        _card(pixel["tile_roc_auc"], "tile ROC AUC"),
    ]
    wrong = slide["wrong"]
    sentence = (f"{slide['slides']} slides ({slide['tumour_slides']} tumour, {slide['normal_slides']} normal). "
                f"Out of fold, the learned aggregator calls {len(wrong)} slide(s) wrongly at thresholds chosen on "
                f"training slides ({slide['threshold_rule']}).")
    if lesion["froc"] is not None:
        sentence += (f" Of {lesion['lesions']} lesions, {lesion['lesions_hit']} were hit by a detection; "
                     f"{lesion['false_positives']} detections fell outside any lesion.")
    score_rows = [(SCORE_NAMES.get(name, name), values["roc_auc"],
                   f"{values['roc_auc_ci'][0]:.3f}-{values['roc_auc_ci'][1]:.3f}" if values.get("roc_auc_ci") else None,
                   values["sensitivity"], values["specificity"], ", ".join(f"{t:.3f}" for t in values["thresholds"]))
                  for name, values in slide["scores"].items()]
    slide_html = (
        '<p class="meaning">What this means: whether the model tells which slides hold metastases (Camelyon16 '
        "task 1). Every score is measured on slides that no threshold or aggregator was fitted on "
        f"({slide['scores'][slide['primary']]['folds']}-fold cross-validation over slides).</p>"
        + _table(("slide score", "ROC AUC", "95% CI", "sensitivity", "specificity", "thresholds per fold"), score_rows)
        + _figure_block(files["slide_roc"], "Slide-level ROC", "Each curve trades tumour slides found against normal "
                        "slides flagged; dots are the calls made at each fold's threshold.")
    )
    if wrong:
        slide_html += "<h3>Slides called wrongly, worst first</h3>" + _table(
            ("slide", "label", "error", "score", "threshold"),
            [(row["slide"], row["label"], row["error"], row["score"], row["threshold"]) for row in wrong])
    lesion_html = (
        '<p class="meaning">What this means: whether the model finds each metastasis where it is (Camelyon16 '
        "task 2). A detection inside a lesion (annotation grown by "
        f"{lesion['dilation_um']:g} um in diameter) is a hit; lesions under {lesion['itc_um']:g} um (isolated "
        "tumour cells) count neither way; the score is the mean sensitivity at 1/4 to 8 false positives per "
        "slide.</p>"
        + _table(("false positives per slide", *lesion["sensitivity_at"].keys(), "FROC score"),
                 [("sensitivity", *lesion["sensitivity_at"].values(), lesion["froc"])])
        + _figure_block(files["froc"], "FROC curve", "Sensitivity rises as more false positives are allowed; "
                        "the dots are the six points Camelyon16 averages.")
        + f"<p>Detections: {html.escape(lesion['detection']['method'])}, threshold "
        f"{lesion['detection']['threshold']:g}; one CSV per slide in detections/ (the challenge's format).</p>"
    )
    pixel_html = (
        '<p class="meaning">What this means: how well the thresholded map covers the outlined tumour, cell by '
        "cell (Dice and IoU: 1 = exact), and how well tiles are told apart by PCam's rule (tile ROC AUC).</p>"
        + _table(("threshold", "Dice (mean)", "IoU (mean)", "Dice (pooled)", "IoU (pooled)", "tile ROC AUC", "tiles",
                  "tumour tiles"),
                 [(pixel["threshold"], pixel["dice_mean"], pixel["iou_mean"], pixel["dice_pooled"],
                   pixel["iou_pooled"], pixel["tile_roc_auc"], pixel["tiles"], pixel["tumour_tiles"])])
    )
    table_columns = ("slide", "label", "call", "correct", "max", "top_k_mean", "aggregator", "largest_lesion_um",
                     "lesions", "lesions_hit", "false_positives", "dice")
    slides_html = _table(table_columns, [[row.get(column) for column in table_columns] for row in rows])
    picture_parts = []
    for row in rows:
        if row["slide"] in pictures:
            picture_parts.append(_figure_block(
                pictures[row["slide"]], f"{row['slide']} ({row['label']}, called {row['call']})",
                "Left: the slide; right: the tumour map. Cyan: the annotated tumour; green circles: detections "
                "that hit a lesion; red crosses: false positives; grey squares: detections on isolated tumour "
                "cells (ignored)."))
    if len(pictures) < len(rows):
        picture_parts.append(note_html(f"{len(rows) - len(pictures)} more slide(s) are not drawn here "
                                       "(report_slides); their numbers are in the table above and slides.csv."))
    warnings = metrics.get("warnings") or []
    warnings_html = ("<ul>" + "".join(f"<li>{html.escape(text)}</li>" for text in warnings) + "</ul>") if warnings \
        else "<p>None.</p>"
    sections = [
        ("glance", "At a glance", f'<div class="glance">{"".join(cards)}</div><p>{html.escape(sentence)}</p>'),
        ("slide-level", "Slide level: which slides hold metastases", slide_html),
        ("lesion-level", "Lesion level: where the metastases are (FROC)", lesion_html),
        ("pixel-level", "Pixel and tile level", pixel_html),
        ("slides", "Every slide (wrong calls first)", slides_html + "".join(picture_parts)),
        ("warnings", "Warnings", warnings_html),
    ]
    navigation = "".join(f'<li><a href="#{key}">{html.escape(name)}</a></li>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(name)}</h2>{content}</section>' for key, name, content in sections)
    title = f"pcamlab slide evaluation: {Path(str(metrics.get('results', 'results'))).name}"
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="subtitle">Slide, lesion and pixel scores of a patch model\'s tumour maps against the '
        f"pathologists' annotations, as Camelyon16 scored them. Generated {generated}.</p>"
        f"<nav><ul>{navigation}</ul></nav>{body}"
        "<footer>Made by pcamlab slide evaluate. Research use only: not a medical device and not for diagnosis."
        "</footer></main></body></html>\n"
    )
    write_text_atomic(path, page)
    return Path(path)
