"""One self-contained HTML page per run, written for a reader who is a pathologist, not a programmer.

The page embeds every picture as a base64 ``data:`` URI and carries its own CSS, so it can be mailed or
archived as a single file and opened offline. It gathers what the run folder holds:

- ``config.yaml`` (the resolved configuration),
- ``summary.json`` (data and run summary),
- ``history.csv`` (drawn as training curves),
- every ``metrics.json`` in the run folder and its subfolders (``eval-*``),
- every PNG in the run folder and its subfolders (ROC, PR, confusion matrix, reliability, histograms,
  filters, feature maps, Grad-CAM...), each with a caption and a "what this means" line.

Anything missing or unreadable is skipped with a note on the page; the report never fails because a
piece is absent.

Example:
    >>> from pcamlab.evaluate.report import write_report
    >>> write_report("runs/demo")
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcamlab.data.runfiles import UNDEFINED, is_undefined, read_json, read_run_csv
from pcamlab.data.walk import walk_files
from pcamlab.errors import DataError
from pcamlab.fileio import atomic_path, printable, refuse_existing
from pcamlab.runfolder import RunFolder

__all__ = ["write_report", "FIGURE_CAPTIONS", "METRIC_DESCRIPTIONS", "MAX_IMAGE_BYTES", "CSS", "figure_html", "format_value",
           "note_html"]

MAX_IMAGE_BYTES = 25 * 1024 * 1024  # a PNG larger than this is not embedded (keeps the page openable)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SKIPPED_FOLDERS = {RunFolder.TENSORBOARD, "__pycache__"}  # never searched for pictures or metrics

# Figure stem (or stem prefix) -> (title, what this means). Matched in this order, first match wins.
FIGURE_CAPTIONS: dict[str, tuple[str, str]] = {
    "training_curves": (
        "Training curves",
        "Loss should fall and validation AUC rise, then level off; validation loss rising while training "
        "loss keeps falling means the model started to memorise the training patches (overfitting).",
    ),
    "roc": (
        "ROC curve",
        "Each point trades tumour patches found (sensitivity) against normal patches wrongly flagged "
        "(1 - specificity); the closer the curve hugs the top-left corner, the better. The marked point "
        "is the threshold in use.",
    ),
    "pr": (
        "Precision-recall curve",
        "Of the patches called tumour, the share that truly are (precision), as more of the tumour patches "
        "are found (recall); useful when tumour is rare.",
    ),
    "precision_recall": (
        "Precision-recall curve",
        "Of the patches called tumour, the share that truly are (precision), as more of the tumour patches "
        "are found (recall); useful when tumour is rare.",
    ),
    "confusion_matrix": (
        "Confusion matrix",
        "Patches counted by true class (rows) and the model's call (columns) at the chosen threshold; the "
        "off-diagonal cells are the errors: missed tumour and false alarms.",
    ),
    "reliability": (
        "Reliability (calibration) diagram",
        "Whether the scores can be read as probabilities: points on the diagonal mean that patches scored "
        "0.8 are tumour about 80% of the time; points below it mean the model is over-confident.",
    ),
    "calibration": (
        "Calibration diagram",
        "Whether the scores can be read as probabilities: points on the diagonal mean that patches scored "
        "0.8 are tumour about 80% of the time.",
    ),
    "score_histogram": (
        "Score histogram",
        "How the tumour scores of normal and of tumour patches are spread; two well separated humps mean "
        "few borderline calls, overlap marks the patches the model finds hard.",
    ),
    "histogram": (
        "Histogram",
        "How the tumour scores are spread by true class; overlap marks the patches the model finds hard.",
    ),
    "threshold": (
        "Threshold trade-off",
        "How sensitivity and specificity change as the decision threshold moves.",
    ),
    "first_layer_filters": (
        "First-layer filters",
        "The colour and edge patterns the first layer looks for, e.g. purple (haematoxylin: nuclei) or pink "
        "(eosin: cytoplasm, stroma) blobs and edges; noise-like tiles suggest too little training.",
    ),
    "layer_filters": (
        "Deeper-layer filters",
        "Deeper filters combine earlier patterns and are abstract; they mainly show whether training "
        "produced structured weights rather than noise.",
    ),
    "feature_maps": (
        "Feature maps of one tumour patch",
        "How one patch is seen layer by layer: bright areas are where a channel responds. Early layers "
        "follow stain and nuclear outlines; later layers are coarser and more specific.",
    ),
    "gradcam": (
        "Grad-CAM heat maps",
        "The regions that raised the tumour score (red = strongest). Trust grows when the heat sits on "
        "tumour cells inside the dashed centre square, the region PCam's label describes; heat on "
        "background, folds or the border suggests the model uses the wrong cues.",
    ),
    "confident_mistakes": (
        "Most confident mistakes",
        "Patches the model was most sure about and still got wrong: worth a look for label noise, "
        "artefacts, or tissue that the model confuses with tumour (or misses).",
    ),
}

# Metric key -> (display name, what it means). Keys not listed are shown with their raw name.
METRIC_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "roc_auc": ("ROC AUC", "chance that a random tumour patch scores higher than a random normal patch (0.5 = guessing, 1 = perfect)"),
    "roc_auc_ci": ("ROC AUC 95% CI", "range that holds the true AUC with 95% confidence (bootstrap)"),
    "pr_auc": ("PR AUC (average precision)", "precision averaged over all levels of recall"),
    "accuracy": ("Accuracy", "share of all patches called correctly"),
    "balanced_accuracy": ("Balanced accuracy", "mean of sensitivity and specificity; not swayed by class balance"),
    "recall": ("Sensitivity (recall)", "share of tumour patches that were found"),
    "sensitivity": ("Sensitivity", "share of tumour patches that were found"),
    "specificity": ("Specificity", "share of normal patches correctly cleared"),
    "precision": ("Precision (PPV)", "share of patches called tumour that are tumour"),
    "f1": ("F1 score", "balance of precision and sensitivity"),
    "threshold": ("Decision threshold", "a patch is called tumour when its score is at least this"),
    "log_loss": ("Log loss", "penalty for confident wrong scores (lower is better)"),
    "brier": ("Brier score", "mean squared error of the probabilities (lower is better)"),
    "ece": ("Expected calibration error", "average gap between score and observed tumour rate (lower is better)"),
    "n": ("Patches", "number of patches evaluated"),
    "n_positive": ("Tumour patches", "number of patches labelled tumour"),
    "tp": ("True positives", "tumour patches called tumour"),
    "fp": ("False positives", "normal patches called tumour (false alarms)"),
    "tn": ("True negatives", "normal patches called normal"),
    "fn": ("False negatives", "tumour patches missed"),
    "bootstrap": ("Bootstrap resamples", "resamples used for the confidence interval"),
}

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #222;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5em 2em 4em; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; color: #5b2a6e; }
h2 { border-bottom: 2px solid #e6d5ec; padding-bottom: 0.2em; margin-top: 2em; color: #5b2a6e; }
h3 { margin-bottom: 0.3em; }
.subtitle { color: #666; margin-top: 0; }
.note { color: #8a5a00; background: #fff7e0; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; }
.meaning { color: #444; font-style: italic; margin-top: 0.2em; }
.glance { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.card { border: 1px solid #e6d5ec; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; background: #fcf8fd; }
.card .value { font-size: 1.6em; font-weight: bold; color: #5b2a6e; }
.card .label { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3eaf6; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.explain { color: #555; font-size: 0.9em; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; font-size: 0.85em; border-radius: 4px; }
figure { margin: 1.2em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-weight: bold; margin-top: 0.3em; }
nav ul { columns: 2; }
footer { color: #888; font-size: 0.85em; margin-top: 3em; }
"""


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def note_html(text: str) -> str:
    """A highlighted note paragraph (HTML-escaped) for something missing or worth a warning."""
    return f'<p class="note">{_escape(text)}</p>'


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def format_value(value: Any) -> str:
    """A metric or summary value as short text (4 significant decimals for floats)."""
    if is_undefined(value):
        return UNDEFINED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) < 10:
            return f"{value:.4f}"
        return f"{value:.0f}" if value.is_integer() else f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(item, (int, float)) for item in value):
            return f"[{format_value(float(value[0]))}, {format_value(float(value[1]))}]"
        if len(value) > 8:
            return f"({len(value)} values)"
        return ", ".join(format_value(item) for item in value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": value}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> tuple[Any, str | None]:
    """The parsed JSON (old versions' bare NaN/Infinity as None) and None, or None and a note saying why not."""
    try:
        return read_json(path, expect=None), None
    except DataError as error:
        return None, f"{path.name} could not be read ({error}); it is left out."


def _walk(run_dir: Path, pattern: str) -> list[Path]:
    """Files named ``pattern`` (``*.png`` or an exact name) in run_dir and its subfolders, listed by the walker
    every command uses (:func:`pcamlab.data.walk.walk_files`: hidden entries and OS junk skipped, links followed
    once), skipping tensorboard/; the shallowest first."""
    suffix = pattern[1:] if pattern.startswith("*.") else Path(pattern).suffix
    found = [path for path in walk_files(run_dir, (suffix,)).files
             if (pattern.startswith("*.") or path.name == pattern)
             and not any(part in SKIPPED_FOLDERS for part in path.relative_to(run_dir).parts)]
    return sorted(found, key=lambda path: (len(path.relative_to(run_dir).parts), str(path)))


def _caption(stem: str) -> tuple[str, str]:
    key = stem.lower()
    for prefix, caption in FIGURE_CAPTIONS.items():
        if key == prefix or key.startswith(prefix + "_") or key.startswith(prefix + "-") or (
            len(prefix) > 3 and prefix in key
        ):
            return caption
    return stem.replace("_", " ").replace("-", " ").capitalize(), "A figure saved in the run folder."


def _figure_order(path: Path) -> tuple[int, str]:
    key = path.stem.lower()
    for rank, prefix in enumerate(FIGURE_CAPTIONS):
        if key == prefix or key.startswith(prefix):
            return rank, key
    return len(FIGURE_CAPTIONS), key


def figure_html(png: bytes, title: str, meaning: str, source: str) -> str:
    """A ``<figure>`` embedding PNG bytes as a data URI, with its title, source file and "What this means"."""
    return (
        f'<figure><img src="{_data_uri(png)}" alt="{_escape(title)}">'
        f"<figcaption>{_escape(title)} <small>({_escape(source)})</small></figcaption>"
        f'<p class="meaning">What this means: {_escape(meaning)}</p></figure>'
    )


def _read_png(path: Path) -> tuple[bytes | None, str | None]:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return None, f"{path.name} is {size / 1e6:.0f} MB, larger than {MAX_IMAGE_BYTES / 1e6:.0f} MB; not embedded."
        data = path.read_bytes()
    except OSError as error:
        return None, f"{path.name} could not be read ({error}); it is left out."
    if not data.startswith(PNG_SIGNATURE):
        return None, f"{path.name} is not a valid PNG file; it is left out."
    return data, None


# ----------------------------------------------------------------------------------------------- sections


def _config_section(run_dir: Path) -> tuple[str, dict[str, Any]]:
    path = RunFolder(run_dir).config
    if not path.is_file():
        return note_html(f"No {RunFolder.CONFIG} in this run folder, so the configuration is not shown."), {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        return note_html(f"config.yaml could not be read ({error})."), {}
    values: dict[str, Any] = {}
    try:
        import yaml

        loaded = yaml.safe_load(text)
        values = loaded if isinstance(loaded, dict) else {}
    except Exception:  # the raw text is still shown; a YAML error must not stop the report
        values = {}
    lines = []
    model = values.get("model") if isinstance(values.get("model"), dict) else {}
    train = values.get("train") if isinstance(values.get("train"), dict) else {}
    if model:
        lines.append(f"Model <b>{_escape(model.get('name', '?'))}</b>")
    if train:
        lines.append(
            f"{_escape(train.get('epochs', '?'))} epochs, batch size {_escape(train.get('batch_size', '?'))}, "
            f"optimiser {_escape(train.get('optimizer', '?'))}, learning rate {_escape(train.get('learning_rate', '?'))}"
        )
    summary = f"<p>{'; '.join(lines)}.</p>" if lines else ""
    return (
        summary
        + '<p class="meaning">What this means: every setting used for this run; re-running with this file '
        "reproduces it.</p>"
        + f"<details open><summary>config.yaml</summary><pre>{_escape(text)}</pre></details>"
    ), values


def _summary_section(run_dir: Path) -> tuple[str, dict[str, Any]]:
    path = RunFolder(run_dir).summary
    if not path.is_file():
        return note_html(f"No {RunFolder.SUMMARY} in this run folder, so there is no data summary."), {}
    values, problem = _read_json(path)
    if problem:
        return note_html(problem), {}
    if not isinstance(values, dict):
        return note_html(f"summary.json holds a {type(values).__name__}, not a mapping; it is left out."), {}
    flat = _flatten(values)
    if not flat:
        return note_html("summary.json is empty."), values

    def table(items: list[tuple[str, Any]]) -> str:
        rows = [
            f'<tr><th>{_escape(key)}</th><td class="{"number" if _is_number(value) else ""}">'
            f"{_escape(format_value(value))}</td></tr>"
            for key, value in items
        ]
        return f"<table>{''.join(rows)}</table>"

    data_items = [(key, value) for key, value in flat.items() if key.split(".")[0] in ("data", "dataset")]
    other_items = [(key, value) for key, value in flat.items() if key.split(".")[0] not in ("data", "dataset")
                   and not _restates(key, value, flat)]
    parts = [
        '<p class="meaning">What this means: how many patches of each class the model learned from and was '
        "checked on, and facts about the run (time, best epoch).</p>"
    ]
    if data_items:
        parts.append(table(data_items))
    else:
        parts.append(note_html("summary.json has no data section."))
    if other_items:
        parts.append(f"<details{'' if data_items else ' open'}><summary>Run facts ({len(other_items)})</summary>{table(other_items)}</details>")
    return "".join(parts), values


def _restates(key: str, value: Any, flat: Mapping[str, Any]) -> bool:
    """Whether ``contract.threshold`` (any ``contract.X``) only repeats the run fact ``X`` shown beside it."""
    section, _, name = key.partition(".")
    return section == "contract" and name in flat and flat[name] == value


def _read_history_rows(path: Path) -> list[dict[str, Any]]:
    return read_run_csv(path)  # numbers parsed, nan/inf/empty cells None


def _history_summary(rows: list[dict[str, Any]]) -> str:
    def number(text: Any) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.nan

    scores = [(number(row.get("val_auc")), index + 1 if row.get("epoch") is None else row["epoch"])
              for index, row in enumerate(rows)]
    scores = [(value, epoch) for value, epoch in scores if not math.isnan(value)]
    text = f"{len(rows)} epoch{'' if len(rows) == 1 else 's'} recorded."
    if scores:
        best, epoch = max(scores, key=lambda item: item[0])
        text += f" Best validation AUC {best:.4f} at epoch {_escape(epoch)}."
    return f"<p>{text}</p>"


def _plot_history_fallback(rows: list[dict[str, Any]], target: Path) -> Path:
    """A small two-panel loss / AUC plot, used when pcamlab.evaluate.plots is unavailable."""
    from matplotlib.figure import Figure

    def column(name: str) -> list[float]:
        values = []
        for row in rows:
            try:
                values.append(float(row.get(name, "nan")))
            except (TypeError, ValueError):
                values.append(math.nan)
        return values

    epochs = list(range(1, len(rows) + 1))
    figure = Figure(figsize=(9, 3.2))
    loss_axis, score_axis = figure.subplots(1, 2)
    for name in ("train_loss", "val_loss"):
        loss_axis.plot(epochs, column(name), marker="o", label=name)
    for name, label in (("val_auc", "val_auc"), ("val_accuracy", "val_accuracy at 0.5")):
        score_axis.plot(epochs, column(name), marker="o", label=label)
    for axis, title in ((loss_axis, "Loss"), (score_axis, "Validation scores")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.savefig(target, format="png", dpi=100, bbox_inches="tight")
    return target


def _training_section(run_dir: Path, curves_png: Path | None) -> str:
    path = RunFolder(run_dir).history
    parts = []
    rows: list[dict[str, Any]] = []
    if path.is_file():
        try:
            rows = _read_history_rows(path)
        except DataError as error:
            parts.append(note_html(f"history.csv could not be read ({error})."))
        if rows:
            parts.append(_history_summary(rows))
        elif not parts:
            parts.append(note_html("history.csv has no epochs yet."))
    else:
        parts.append(note_html("No history.csv in this run folder, so there are no training curves."))
    title, meaning = FIGURE_CAPTIONS["training_curves"]
    if curves_png is not None:  # the run already saved its own curves
        png, problem = _read_png(curves_png)
        parts.append(figure_html(png, title, meaning, curves_png.name) if png else note_html(problem))
    elif rows:
        try:
            try:
                from pcamlab.evaluate.plots import plot_training_curves
            except ImportError:
                plot_training_curves = None
            with tempfile.TemporaryDirectory(prefix="pcamlab-report-") as folder:
                target = Path(folder) / "training_curves.png"
                if plot_training_curves is not None:
                    plot_training_curves(path, target)
                else:
                    _plot_history_fallback(rows, target)
                png, problem = _read_png(target)
            parts.append(figure_html(png, title, meaning, "drawn from history.csv") if png else note_html(problem))
        except Exception as error:  # a plotting failure must not stop the report
            parts.append(note_html(f"training curves could not be drawn from history.csv ({type(error).__name__}: {error})."))
    return "".join(parts)


def _metric_rows(metrics: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], dict[str, Mapping[str, Any]], list[str]]:
    """Split a metrics mapping into scalar rows, sub-tables (mapping of mappings) and warnings."""
    scalars: list[tuple[str, Any]] = []
    tables: dict[str, Mapping[str, Any]] = {}
    warnings: list[str] = []
    for key, value in metrics.items():
        if key in ("warnings", "notes") and isinstance(value, list):
            warnings.extend(str(item) for item in value)
        elif isinstance(value, Mapping):
            if value and all(isinstance(item, Mapping) for item in value.values()):
                tables[key] = value
            else:
                for sub_key, sub_value in _flatten(value, f"{key}.").items():
                    if not (isinstance(sub_value, (list, tuple)) and len(sub_value) > 8):
                        scalars.append((sub_key, sub_value))
        elif isinstance(value, (list, tuple)) and len(value) > 8:
            continue  # curves and per-patch arrays are drawn as figures, not tabulated
        else:
            scalars.append((key, value))
    order = {key: rank for rank, key in enumerate(METRIC_DESCRIPTIONS)}
    scalars.sort(key=lambda item: (order.get(item[0].split(".")[-1], len(order)), item[0]))
    return scalars, tables, warnings


def _merge_identical_rows(table: Mapping[str, Any]) -> dict[str, Any]:
    """Rows with the same values shown once, named together: ``0.5`` and ``chosen`` at 0.5 -> ``0.5 = chosen``."""
    merged: dict[str, Any] = {}
    for row_name, row in table.items():
        same = next((name for name, kept in merged.items() if kept == row), None)
        if same is None:
            merged[str(row_name)] = row
        else:
            merged = {(f"{name} = {row_name}" if name == same else name): kept for name, kept in merged.items()}
    return merged


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    at_threshold = _threshold_note(metrics)
    origin = metrics.get("threshold_origin")
    if isinstance(origin, Mapping) and origin.get("label"):  # said once: in the threshold row, not as 8 more
        metrics = {key: value for key, value in metrics.items() if key != "threshold_origin"}
        metrics.setdefault("threshold", origin.get("threshold"))
    scalars, tables, warnings = _metric_rows(metrics)
    context = [(key, value) for key, value in scalars if not _is_number(value) and not isinstance(value, (list, tuple))
               and key.split(".")[-1] not in METRIC_DESCRIPTIONS]
    scalars = [item for item in scalars if item not in context]
    parts = []
    if context:
        cells = "".join(f"<tr><th>{_escape(key)}</th><td>{_escape(format_value(value))}</td></tr>" for key, value in context)
        parts.append(f"<table>{cells}</table>")
    if scalars:
        rows = []
        for key, value in scalars:
            name, meaning = METRIC_DESCRIPTIONS.get(key.split(".")[-1], (key, ""))
            if "." in key and key.split(".")[-1] in METRIC_DESCRIPTIONS:
                name = f"{name} ({key.rsplit('.', 1)[0]})"
            elif key in _THRESHOLD_DEPENDENT and at_threshold:
                meaning = f"{meaning}; {at_threshold}" if meaning else at_threshold
            elif key == "threshold" and isinstance(origin, Mapping) and origin.get("label"):
                meaning = f"{meaning}; {origin['label']}"
            css = "number" if _is_number(value) else ""
            rows.append(
                f'<tr><th>{_escape(name)}</th><td class="{css}">{_escape(format_value(value))}</td>'
                f'<td class="explain">{_escape(meaning)}</td></tr>'
            )
        parts.append(f"<table><tr><th>Metric</th><th>Value</th><th>What it means</th></tr>{''.join(rows)}</table>")
    for name, table in tables.items():
        table = _merge_identical_rows(table)
        columns: list[str] = []
        for row in table.values():
            columns.extend(key for key, value in row.items() if key not in columns and not isinstance(value, (Mapping, list)))
        header = "".join(f"<th>{_escape(METRIC_DESCRIPTIONS.get(column, (column, ''))[0])}</th>" for column in columns)
        body = "".join(
            f"<tr><th>{_escape(str(row_name).replace('_', ' '))}</th>"
            + "".join(
                f'<td class="{"number" if _is_number(row.get(column)) else ""}">{_escape(format_value(row.get(column)))}</td>'
                for column in columns
            )
            + "</tr>"
            for row_name, row in table.items()
        )
        heading = "Metrics at other thresholds" if name == "at_thresholds" else name.replace("_", " ").capitalize()
        parts.append(f"<h4>{_escape(heading)}</h4><table><tr><th></th>{header}</tr>{body}</table>")
    if warnings:
        parts.append("<p><b>Warnings from the evaluation:</b></p><ul>" + "".join(f"<li>{_escape(w)}</li>" for w in warnings) + "</ul>")
    return "".join(parts) or note_html("this metrics.json holds no values.")


_THRESHOLD_DEPENDENT = ("accuracy", "balanced_accuracy", "precision", "recall", "sensitivity", "specificity", "f1",
                        "tp", "fp", "tn", "fn")


def _threshold_note(metrics: Mapping[str, Any]) -> str:
    """``at threshold 0.424 (youden, chosen on ...)``: what every threshold-dependent number depends on."""
    origin = metrics.get("threshold_origin")
    if isinstance(origin, Mapping) and origin.get("label"):
        return f"at threshold {origin['label']}"
    threshold = metrics.get("threshold")
    return f"at threshold {threshold:.3f} (where it was chosen is not recorded)" if _is_number(threshold) else ""


def _find_metric(metrics: Mapping[str, Any], key: str) -> Any:
    if key in metrics:
        return metrics[key]
    for value in metrics.values():
        if isinstance(value, Mapping) and key in value and not isinstance(value[key], Mapping):
            return value[key]
    return None


def _glance(metrics: Mapping[str, Any], source: str) -> str:
    """Headline cards and one plain sentence from the first metrics file."""
    cards = []
    auc = _find_metric(metrics, "roc_auc")
    interval = _find_metric(metrics, "roc_auc_ci")
    sensitivity = _find_metric(metrics, "recall")
    if sensitivity is None:
        sensitivity = _find_metric(metrics, "sensitivity")
    specificity = _find_metric(metrics, "specificity")
    accuracy = _find_metric(metrics, "accuracy")
    threshold = _find_metric(metrics, "threshold")
    count = _find_metric(metrics, "n")
    at = f" at {threshold:.2f}" if _is_number(threshold) else ""
    for value, label in ((auc, "ROC AUC"), (sensitivity, f"Sensitivity{at}"), (specificity, f"Specificity{at}"),
                         (accuracy, f"Accuracy{at}")):
        if _is_number(value):
            cards.append(f'<div class="card"><div class="value">{value:.3f}</div><div class="label">{label}</div></div>')
    if not cards:
        return ""
    sentences = []
    if _is_number(auc):
        ci = ""
        if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(_is_number(v) for v in interval):
            ci = f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})"
        sentences.append(
            f"A randomly chosen tumour patch scores above a randomly chosen normal patch {auc * 100:.1f}% of the time{ci}."
        )
    if _is_number(sensitivity) and _is_number(specificity):
        at = f"At threshold {threshold:.2f}, the" if _is_number(threshold) else "The"
        sentences.append(
            f"{at} model finds {sensitivity * 100:.1f}% of tumour patches and correctly clears "
            f"{specificity * 100:.1f}% of normal patches."
        )
        origin = metrics.get("threshold_origin")
        if isinstance(origin, Mapping) and origin.get("label"):
            sentences.append(f"Threshold: {_escape(str(origin['label']))}.")
            if origin.get("optimistic"):
                sentences.append("Numbers at a threshold chosen on the split they are measured on are optimistic; "
                                 "measure them on a split the threshold did not see (e.g. test).")
    if _is_number(count):
        sentences.append(f"Based on {int(count)} patches ({_escape(source)}).")
    return f'<div class="glance">{"".join(cards)}</div><p>{" ".join(sentences)}</p>'


def _cv_section(run_dir: Path) -> tuple[str, str]:
    """(section HTML, glance HTML) of a cross-validation folder: every fold and the mean +- sd; ("", "") otherwise."""
    cv_summary = RunFolder(run_dir).cv_summary
    summary, problem = _read_json(cv_summary) if cv_summary.is_file() else (None, None)
    if problem:
        return note_html(problem), ""
    if not isinstance(summary, Mapping):
        return "", ""
    rows: list[dict[str, Any]] = []
    results = RunFolder(run_dir).cv_results
    if results.is_file():
        try:
            rows = read_run_csv(results)
        except DataError as error:
            return note_html(f"{RunFolder.CV_RESULTS} could not be read ({error})."), ""
    metrics = summary.get("metrics") if isinstance(summary.get("metrics"), Mapping) else {}
    names = {"val_auc": "Validation ROC AUC", "val_loss": "Validation loss", "val_accuracy": "Validation accuracy at 0.5"}

    def spread(metric: str) -> str:
        values = metrics.get(metric)
        if not isinstance(values, Mapping) or not _is_number(values.get("mean")) or is_undefined(values.get("mean")):
            return UNDEFINED
        sd = values.get("sd")
        sd = f"{sd:.4f}" if _is_number(sd) and not is_undefined(sd) else UNDEFINED
        return f"{values['mean']:.4f} &plusmn; {sd}"

    columns = ["repeat", "fold", "train_patches", "valid_patches", "val_auc", "val_loss", "val_accuracy", "best_epoch"]
    header = "".join(f"<th>{_escape(names.get(column, column.replace('_', ' ')))}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="number">{_escape(format_value(_number_or_text(row.get(column))))}</td>'
                         for column in columns) + "</tr>"
        for row in rows
    )
    body += ('<tr><th colspan="4">mean &plusmn; sd over the folds</th>'
             + "".join(f'<td class="number">{spread(metric)}</td>' for metric in ("val_auc", "val_loss", "val_accuracy"))
             + f'<td class="number">{_escape(format_value(summary.get("best_epoch_median")))} (median)</td></tr>')
    folds, repeats = summary.get("folds"), summary.get("repeats") or 1
    intro = (f"<p>{_escape(folds)}-fold cross-validation{f' repeated {repeats} times' if repeats > 1 else ''} over "
             f"split {_escape(summary.get('split'))} ({_escape(summary.get('patches'))} patches, folds "
             f"{_escape(summary.get('groups') or 'not grouped by slide')}); each fold's model is validated on the "
             "patches it did not train on. Accuracy is at threshold 0.5.</p>")
    section = intro + f"<table><tr>{header}</tr>{body}</table>"
    glance = (f'<div class="glance"><div class="card"><div class="value">{spread("val_auc")}</div>'
              f'<div class="label">Validation ROC AUC, mean &plusmn; sd over {len(rows) or folds} folds</div></div></div>')
    return section, glance


def _number_or_text(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else number


def _folder_title(relative: Path) -> str:
    if str(relative) in ("", "."):
        return "Run folder"
    name = str(relative)
    if name.startswith("eval") or "-eval-" in name:  # eval-valid; last-eval-valid, swa-eval-valid (other checkpoints)
        return f"Evaluation: {name}"
    if name.startswith("explain"):
        return f"Explanation: {name}"
    return name


def write_report(run_dir: str | Path, path: str | Path | None = None, *, force: bool = False) -> Path:
    """Write one self-contained HTML report of a run folder.

    Args:
        run_dir: a run folder (``pcamlab train --out``), possibly with ``eval-*`` / ``explain-*``
            subfolders.
        path: HTML file to write; None = ``run_dir/report.html`` (the run's own report, brought up to date
            on every call).
        force: replace an existing ``path`` (a file named by the caller is otherwise never replaced).

    Returns:
        The path written.

    Raises:
        DataError: ``run_dir`` is not a folder, or holds no run (nothing to report).
        RunFolderError: ``path`` exists and ``force`` is False.

    Example:
        >>> write_report("runs/demo")
        PosixPath('runs/demo/report.html')
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run folder {str(run_dir)!r} does not exist; pass a run folder written by pcamlab train")
    from pcamlab.evaluate.compare import RUN_FILES

    if not any((run_dir / name).is_file() for name in RUN_FILES) and not _walk(run_dir, "metrics.json"):
        raise DataError(
            f"{str(run_dir)!r} is not a run folder: it holds none of {list(RUN_FILES)} nor an evaluation's "
            "metrics.json; pass a run folder written by pcamlab train (or an evaluation folder of pcamlab evaluate)"
        )
    replace = path is None or force
    path = run_dir / "report.html" if path is None else Path(path)
    if not replace:  # checked before the page is built, and again atomically when it is published
        refuse_existing(path, "path", force="force")

    config_html, config_values = _config_section(run_dir)
    summary_html, _ = _summary_section(run_dir)
    pngs = _walk(run_dir, "*.png")
    curves_png = next((png for png in pngs if png.parent == run_dir and png.stem == "training_curves"), None)
    training_html = _training_section(run_dir, curves_png)

    metrics_parts = []
    glance_html = ""
    metric_files = _walk(run_dir, "metrics.json")
    for metrics_path in metric_files:
        relative = metrics_path.relative_to(run_dir)
        values, problem = _read_json(metrics_path)
        heading = f"<h3>{_escape(_folder_title(relative.parent))} <small>({_escape(relative)})</small></h3>"
        if problem:
            metrics_parts.append(heading + note_html(problem))
            continue
        if not isinstance(values, Mapping):
            metrics_parts.append(heading + note_html(f"{relative} holds a {type(values).__name__}, not a mapping; left out."))
            continue
        if not glance_html:
            glance_html = _glance(values, str(relative))
        metrics_parts.append(heading + _metrics_table(values))
    if not metric_files:
        metrics_parts.append(note_html("No metrics.json in this run folder or its subfolders; run pcamlab evaluate to add them."))

    figure_parts = []
    groups: dict[Path, list[Path]] = {}
    for png in pngs:
        if png == curves_png:
            continue
        groups.setdefault(png.parent.relative_to(run_dir), []).append(png)
    shown: dict[str, Path] = {}  # SHA-256 of the PNG bytes -> the file that showed it
    for relative, files in groups.items():
        figure_parts.append(f"<h3>{_escape(_folder_title(relative))}</h3>")
        for png_path in sorted(files, key=_figure_order):
            data, problem = _read_png(png_path)
            if data is None:
                figure_parts.append(note_html(problem))
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in shown:  # e.g. an older demo's filters.png beside explain-valid/first_layer_filters.png
                figure_parts.append(f'<p class="meaning">{_escape(png_path.relative_to(run_dir))} is the same picture '
                                    f"as {_escape(shown[digest].relative_to(run_dir))}.</p>")
                continue
            shown[digest] = png_path
            title, meaning = _caption(png_path.stem)
            figure_parts.append(figure_html(data, title, meaning, str(png_path.relative_to(run_dir))))
    if not figure_parts:
        figure_parts.append(note_html("No PNG figures in this run folder; pcamlab evaluate and pcamlab explain write them."))

    cv_html, cv_glance = _cv_section(run_dir)
    model = config_values.get("model", {}).get("name") if isinstance(config_values.get("model"), dict) else None
    title = f"pcamlab run report: {run_dir.resolve().name}"
    subtitle = f"Model {model}. " if model else ""
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    sections = [
        ("glance", "At a glance", glance_html or cv_glance
         or note_html("No metrics yet: the headline numbers appear once the run is evaluated.")),
        *([("cross-validation", "Cross-validation", cv_html)] if cv_html else []),
        ("data", "Data and run summary", summary_html),
        ("training", "Training", training_html),
        ("metrics", "Evaluation metrics", "".join(metrics_parts)),
        ("figures", "Figures", "".join(figure_parts)),
        ("config", "Configuration", config_html),
    ]
    navigation = "".join(f'<li><a href="#{key}">{_escape(name)}</a></li>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_escape(name)}</h2>{content}</section>' for key, name, content in sections)
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{_escape(title)}</h1>"
        f'<p class="subtitle">{_escape(subtitle)}Detector of metastatic tumour in the centre of 96x96-pixel '
        f"H&amp;E lymph-node patches (PatchCamelyon). Generated {generated}.</p>"
        f"<nav><ul>{navigation}</ul></nav>{body}"
        "<footer>Made by pcamlab. Research use only: not a medical device and not for diagnosis.</footer>"
        "</main></body></html>\n"
    )
    with atomic_path(path, replace=replace, parameter="path") as temporary:
        Path(temporary).write_text(printable(page), encoding="utf-8")  # file names that are not UTF-8 as \xNN
    return path

