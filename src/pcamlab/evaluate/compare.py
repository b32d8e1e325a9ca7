"""Side-by-side comparison of run folders: key metrics in one table (terminal, CSV or Markdown).

Each run contributes one row per ``metrics.json`` it holds (the run folder itself and its ``eval-*``
or other subfolders), with facts about the run from ``summary.json``, ``config.yaml`` and
``history.csv``. A run that has not been evaluated yet still gets one row, with empty metrics. A
cross-validation folder (``cv_summary.json``) gets a row of its folds' mean with the sample sd beside
it (``roc_auc_sd``, ``accuracy_sd``; its accuracy is at threshold 0.5, as in training).
:func:`config_differences` lists the config fields whose values differ between the runs.

Example:
    >>> from pcamlab.evaluate.compare import compare_runs, format_rows
    >>> rows = compare_runs(["runs/baseline", "runs/resnet18"], sort_by="roc_auc")
    >>> print(format_rows(rows, "markdown"))
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pcamlab.data.runfiles import UNDEFINED, is_undefined, read_run_csv, read_json
from pcamlab.errors import ConfigError, DataError, did_you_mean
from pcamlab.fileio import printable
from pcamlab.runfolder import RunFolder

__all__ = [
    "COLUMNS",
    "KEY_COLUMNS",
    "LOWER_IS_BETTER",
    "FORMATS",
    "compare_runs",
    "config_differences",
    "format_config_differences",
    "format_table",
    "format_csv",
    "format_markdown",
    "format_rows",
]

# Output columns, in order, with the keys each is looked up under (first found wins). A key with a dot
# must match the flattened path exactly; a plain key also matches the last part of a nested path.
METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "split": ("split",),
    "n": ("n", "num_samples", "patches"),
    "roc_auc": ("roc_auc", "auc", "auroc"),
    "roc_auc_ci_low": ("roc_auc_ci.0", "roc_auc_ci_low"),
    "roc_auc_ci_high": ("roc_auc_ci.1", "roc_auc_ci_high"),
    "pr_auc": ("pr_auc", "average_precision"),
    "accuracy": ("accuracy",),
    "balanced_accuracy": ("balanced_accuracy",),
    "sensitivity": ("recall", "sensitivity", "tpr"),
    "specificity": ("specificity", "tnr"),
    "f1": ("f1",),
    "threshold": ("threshold",),
    "brier": ("brier", "brier_score"),
    "ece": ("ece", "expected_calibration_error"),
    "log_loss": ("log_loss",),
}
SUMMARY_ALIASES: dict[str, tuple[str, ...]] = {
    "model": ("model.name", "model_name", "model"),
    "parameters": ("parameters", "num_parameters", "params", "model.parameters"),
    "epochs": ("epochs_run", "epochs_completed", "epochs"),
    "best_epoch": ("best_epoch",),
    "flops_per_patch": ("flops_per_patch", "flops"),
    "best_val_auc": ("best_val_auc", "best.val_auc"),
    "train_seconds": ("train_seconds", "training_seconds", "wall_seconds", "total_seconds", "seconds", "elapsed_seconds"),
    "images_per_second": ("train_images_per_second_median", "images_per_second"),
}
CV_COLUMNS = ("folds", "roc_auc_sd", "accuracy_sd")  # a cross-validation row: fold count and sample sd over folds
COLUMNS = (
    "run", "evaluation", "model", *METRIC_ALIASES, *CV_COLUMNS, "parameters", "flops_per_patch", "epochs",
    "best_epoch", "best_val_auc", "train_seconds", "images_per_second",
)
# The compact set the terminal table and Markdown show by default (CSV has every column).
KEY_COLUMNS = (
    "run", "evaluation", "model", "split", "n", "folds", "roc_auc", "roc_auc_sd", "roc_auc_ci_low", "roc_auc_ci_high",
    "accuracy", "accuracy_sd", "sensitivity", "specificity", "threshold", "ece", "parameters", "epochs", "train_seconds",
)
LOWER_IS_BETTER = frozenset({"brier", "ece", "log_loss", "train_seconds", "parameters", "roc_auc_sd", "accuracy_sd"})
TEXT_COLUMNS = frozenset({"run", "evaluation", "model", "split"})
FORMATS = ("table", "csv", "markdown")


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and short lists as ``{"a.b": value, "ci.0": low}``."""
    flat: dict[str, Any] = {}
    if isinstance(values, Mapping):
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(values, (list, tuple)) and 0 < len(values) <= 4:
        for index, value in enumerate(values):
            flat.update(_flatten(value, f"{prefix}{index}."))
    else:
        flat[prefix.rstrip(".")] = values
    return flat


def _lookup(flat: Mapping[str, Any], aliases: Sequence[str], numeric: bool = True) -> Any:
    """The first alias found: exact flattened path first, then the shallowest path ending in it.

    With ``numeric`` only a real number counts as found: a string (``"0.9"``, ``"NaN"``) or a boolean under a
    metric's key is not a value of that metric, so it shows as undefined and sorts last.
    """
    for alias in aliases:
        if alias in flat and _usable(flat[alias], numeric):
            return flat[alias]
    for alias in aliases:
        if "." in alias:
            continue
        matches = sorted((key for key in flat if key.endswith("." + alias) and _usable(flat[key], numeric)),
                         key=lambda k: k.count("."))
        if matches:
            return flat[matches[0]]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _usable(value: Any, numeric: bool = False) -> bool:
    if numeric and not _is_number(value):
        return False
    return not (is_undefined(value) or isinstance(value, (list, tuple, Mapping)))


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every number column holding a real number or None (undefined): never text or a boolean."""
    return {column: value if column in TEXT_COLUMNS or _usable(value, numeric=True) else None
            for column, value in row.items()}


def _run_facts(run_dir: Path) -> dict[str, Any]:
    """Model, size and training facts from summary.json, config.yaml and history.csv (when present)."""
    facts: dict[str, Any] = {}
    summary_path = RunFolder(run_dir).summary
    flat = _flatten(read_json(summary_path)) if summary_path.is_file() else {}
    for column, aliases in SUMMARY_ALIASES.items():
        facts[column] = _lookup(flat, aliases, numeric=column not in TEXT_COLUMNS)
    config_path = RunFolder(run_dir).config
    if facts["model"] is None and config_path.is_file():
        import yaml

        try:
            config = yaml.safe_load(config_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            config = None
        if isinstance(config, dict) and isinstance(config.get("model"), dict):
            facts["model"] = config["model"].get("name")
    history_path = RunFolder(run_dir).history
    if history_path.is_file() and (facts["epochs"] is None or facts["best_val_auc"] is None):
        try:
            rows = read_run_csv(history_path)
        except DataError:
            rows = []
        if rows and facts["epochs"] is None:
            facts["epochs"] = len(rows)
        scores = []
        for index, row in enumerate(rows, start=1):
            score, epoch = row.get("val_auc"), row.get("epoch")
            if isinstance(score, (int, float)) and not is_undefined(score):
                scores.append((float(score), int(epoch) if isinstance(epoch, (int, float)) and not is_undefined(epoch) else index))
        if scores and facts["best_val_auc"] is None:
            best = max(scores)
            facts["best_val_auc"] = best[0]
            if facts["best_epoch"] is None:
                facts["best_epoch"] = best[1]
    return facts


RUN_FILES = (*RunFolder.RUN_MARKERS, "metrics.json", RunFolder.CV_SUMMARY)  # any one marks a run folder


def _metric_files(run_dir: Path) -> list[Path]:
    files = [run_dir / "metrics.json"] if (run_dir / "metrics.json").is_file() else []
    files += sorted(path for path in run_dir.glob("*/metrics.json") if path.parent.name != RunFolder.TENSORBOARD)
    return files


def _cv_row(run_dir: Path) -> dict[str, Any] | None:
    """The row of a cross-validation folder: each metric's mean over the folds, with its sample sd."""
    path = RunFolder(run_dir).cv_summary
    if not path.is_file():
        return None
    summary = read_json(path)
    metrics = summary.get("metrics") if isinstance(summary.get("metrics"), Mapping) else {}

    def spread(name: str, key: str) -> Any:
        values = metrics.get(name)
        return values.get(key) if isinstance(values, Mapping) else None

    row = dict.fromkeys(COLUMNS)
    folds, repeats = summary.get("folds"), summary.get("repeats") or 1
    row.update({
        "run": run_dir.name,
        "evaluation": f"kfold {folds}" + (f" x {repeats} repeats" if repeats > 1 else ""),
        "model": summary.get("model"),
        "split": f"{summary.get('split', 'train')} held-out folds",
        "n": summary.get("patches"),
        "folds": spread("val_auc", "n"),
        "roc_auc": spread("val_auc", "mean"),
        "roc_auc_sd": spread("val_auc", "sd"),
        "accuracy": spread("val_accuracy", "mean"),
        "accuracy_sd": spread("val_accuracy", "sd"),
        "threshold": 0.5 if spread("val_accuracy", "mean") is not None else None,  # val_accuracy is at 0.5
        "log_loss": None,
        "best_epoch": summary.get("best_epoch_median"),
    })
    return row


def _flat_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's config.yaml as ``{"train.learning_rate": 0.001, "model.options.width": 32, ...}``."""
    import yaml

    path = RunFolder(run_dir).config
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{str(path)!r} is not readable YAML ({error}); re-run the step that writes it") from None
    if not isinstance(values, Mapping):
        return None
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping) and value:
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(values, "")
    flat.pop("config_files", None)  # where the values came from, not what they are
    return flat


def config_differences(run_dirs: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """The config fields whose values differ between runs, from each run's ``config.yaml``.

    Args:
        run_dirs: run folders (hold-out, cross-validation or final fit); those without a config.yaml
            are left out.

    Returns:
        ``{field: {run: value}}`` in field order, ``run`` being the folder as given; a field one run
        lacks shows as None for it. Empty when fewer than two runs have a config.yaml or all agree.

    Example:
        >>> config_differences(["runs/baseline", "runs/simple"])
        {'model.name': {'runs/baseline': 'baseline', 'runs/simple': 'simple-cnn'}, ...}
    """
    configs = {str(run_dir): flat for run_dir in run_dirs if (flat := _flat_config(Path(run_dir))) is not None}
    if len(configs) < 2:
        return {}
    fields = list(dict.fromkeys(key for flat in configs.values() for key in flat))
    differences = {}
    for field in fields:
        values = {run: flat.get(field) for run, flat in configs.items()}
        if len({json.dumps(value, sort_keys=True, default=str) for value in values.values()}) > 1:
            differences[field] = values
    return differences


def format_config_differences(differences: Mapping[str, Mapping[str, Any]], format: str = "table") -> str:
    """:func:`config_differences` as text: one line per field (``table``) or a Markdown table."""
    if not differences:
        return ""
    runs = list(dict.fromkeys(run for values in differences.values() for run in values))

    def show(value: Any) -> str:
        return UNDEFINED if is_undefined(value) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    if format == "markdown":
        lines = ["| config field | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
        lines += [f"| {field} | " + " | ".join(show(values.get(run)).replace("|", "\\|") for run in runs) + " |"
                  for field, values in differences.items()]
        return "\n".join(lines) + "\n"
    width = max(len(field) for field in differences)
    lines = [f"config fields that differ ({len(differences)}):"]
    lines += [f"  {field:<{width}}  " + "  ".join(f"{run}: {show(values.get(run))}" for run in runs)
              for field, values in differences.items()]
    return "\n".join(lines) + "\n"


def _sort_key(row: Mapping[str, Any], column: str) -> tuple[int, Any]:
    value = row.get(column)
    if is_undefined(value):
        return (1, 0)  # missing values last, whatever the direction
    if column in TEXT_COLUMNS or not isinstance(value, (int, float)):
        return (0, str(value))
    return (0, value if column in LOWER_IS_BETTER else -value)


def _expand_studies(run_dirs) -> list[tuple[Path, str]]:
    """(folder, row name) pairs: a study folder of ``pcamlab tune`` (``study.json``) stands for its trials."""
    pairs = []
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise DataError(f"run folder {str(run_dir)!r} does not exist; pass run folders written by pcamlab train")
        if (run_dir / "study.json").is_file():
            trials = sorted(path for path in (run_dir / "trials").glob("trial-*")  # a trial that failed early may be empty
                            if path.is_dir() and any((path / file_name).exists() for file_name in (*RUN_FILES, RunFolder.CV_RESULTS)))
            pairs += [(trial, f"{run_dir.name}/{trial.name}") for trial in trials]
        else:
            pairs.append((run_dir, run_dir.name))
    return pairs


def compare_runs(run_dirs: Sequence[str | Path], sort_by: str = "roc_auc") -> list[dict[str, Any]]:
    """Key metrics of several runs, one row per evaluation, best first.

    Args:
        run_dirs: run folders written by ``pcamlab train --out`` (evaluated or not), or study folders of
            ``pcamlab tune`` (one row per trial, named ``STUDY/trial-NNNN``).
        sort_by: a column of :data:`COLUMNS`. Scores sort best first (descending, or ascending for
            :data:`LOWER_IS_BETTER` columns such as brier, ece, log_loss); text sorts A-Z; rows
            missing the value come last.

    Returns:
        list of dicts with every key of :data:`COLUMNS` (None where unknown). ``run`` is the folder
        name, ``evaluation`` the subfolder holding the metrics.json ("" for the run folder itself,
        None when the run has no metrics.json).

    Raises:
        ConfigError: unknown ``sort_by`` or no run folder given.
        DataError: a run folder is missing or holds no run (none of :data:`RUN_FILES` nor an evaluation),
            or its metrics.json / summary.json is not readable JSON.

    Example:
        >>> compare_runs(["runs/a", "runs/b"])[0]["roc_auc"]
        0.951
    """
    if sort_by not in COLUMNS:
        raise ConfigError(f"sort_by must be one of {list(COLUMNS)}; got {sort_by!r}{did_you_mean(sort_by, COLUMNS)}")
    if isinstance(run_dirs, (str, Path)) or not run_dirs:
        raise ConfigError(f"run_dirs must be a non-empty list of run folders; got {run_dirs!r}")
    rows: list[dict[str, Any]] = []
    for run_dir, name in _expand_studies(map(Path, run_dirs)):
        files = _metric_files(run_dir)
        if not files and not any((run_dir / file_name).is_file() for file_name in RUN_FILES):
            raise DataError(
                f"{str(run_dir)!r} is not a run folder: it holds none of {list(RUN_FILES)} or */metrics.json; "
                "pass run folders written by pcamlab train"
            )
        facts = _run_facts(run_dir)
        cv_row = _cv_row(run_dir)
        if cv_row is not None:
            rows.append(cv_row)
            if not files:
                continue
        if not files:
            rows.append({**dict.fromkeys(COLUMNS), **facts, "run": printable(name), "evaluation": None})
            continue
        for path in files:
            flat = _flatten(read_json(path))
            row = dict.fromkeys(COLUMNS)
            row.update(facts)
            row["run"] = printable(name)
            row["evaluation"] = "" if path.parent == run_dir else path.parent.name
            for column, aliases in METRIC_ALIASES.items():
                row[column] = _lookup(flat, aliases, numeric=column not in TEXT_COLUMNS)
            rows.append(row)
    rows = [_typed(row) for row in rows]
    return sorted(rows, key=lambda row: _sort_key(row, sort_by))


def _present_columns(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None, default: Sequence[str] = COLUMNS
) -> list[str]:
    """The columns asked for, or those of ``default`` that at least one row has a value in."""
    if columns is not None:
        unknown = [column for column in columns if column not in COLUMNS]
        if unknown:
            raise ConfigError(
                f"columns must be among {list(COLUMNS)}; got {unknown[0]!r}{did_you_mean(unknown[0], COLUMNS)}"
            )
        return list(columns)
    return [column for column in default if column == "run" or any(row.get(column) not in (None, "") for row in rows)]


def _text(value: Any, precise: bool = False, decimals: int | None = None) -> str:
    """A cell's text; ``decimals`` fixes a float's places (the column's), else 4 below 10 and 1 above."""
    if is_undefined(value):
        return "" if precise else UNDEFINED
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if precise:
            return repr(value)
        if decimals is None:
            decimals = 4 if abs(value) < 10 else 1
        return f"{value:.{decimals}f}"
    return str(value)


def _cells(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[list[str]]:
    """Each row's cell texts, one number format per column: 4 decimals, or 1 where any value is >= 10."""
    decimals = []
    for column in columns:
        floats = [value for row in rows if isinstance(value := row.get(column), float) and math.isfinite(value)]
        decimals.append(1 if any(abs(value) >= 10 for value in floats) else 4)
    return [[_text(row.get(column), decimals=places) for column, places in zip(columns, decimals)] for row in rows]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as an aligned plain-text table for the terminal (numbers right-aligned, '—' = unknown or undefined; one number
    format per column: 4 decimals, or 1 where any of its values is 10 or more).

    Without ``columns``, shows the :data:`KEY_COLUMNS` that have a value in some row.
    """
    columns = _present_columns(rows, columns, KEY_COLUMNS)
    cells = _cells(rows, columns)
    widths = [max([len(column)] + [len(line[index]) for line in cells]) for index, column in enumerate(columns)]
    numeric = [
        column not in TEXT_COLUMNS and all(isinstance(row.get(column), (int, float, type(None))) for row in rows)
        for column in columns
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * width for width in widths]), *(line(values) for values in cells)]) + "\n"


def format_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV with a header line (every column with a value, full precision, empty cell = unknown)."""
    columns = _present_columns(rows, columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(row.get(column), precise=True) for column in columns])
    return buffer.getvalue()


def format_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as a GitHub-flavoured Markdown table ('—' = unknown or undefined); default columns as format_table.

    Each column has one number format: 4 decimals, or 1 where any of its values is 10 or more.
    """
    columns = _present_columns(rows, columns, KEY_COLUMNS)

    numeric = [column not in TEXT_COLUMNS for column in columns]
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---:" if is_number else "---" for is_number in numeric) + " |",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in _cells(rows, columns)]
    return "\n".join(lines) + "\n"


def format_rows(rows: Sequence[Mapping[str, Any]], format: str = "table", columns: Sequence[str] | None = None) -> str:
    """Format rows as ``table``, ``csv`` or ``markdown``.

    Raises:
        ConfigError: unknown format.
    """
    formatters = {"table": format_table, "csv": format_csv, "markdown": format_markdown}
    if format not in formatters:
        raise ConfigError(f"format must be one of {list(FORMATS)}; got {format!r}{did_you_mean(format, FORMATS)}")
    return formatters[format](rows, columns)
