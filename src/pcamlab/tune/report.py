"""What a study writes: ``trials.csv``, ``best.yaml``, ``figures/*.png`` and a self-contained ``report.html``.

- ``trials.csv``: one row per trial (every state: complete, pruned, failed, running, waiting), with its
  parameters, validation AUC and its 95% confidence interval, latency, epochs, time, run folder, the
  trial it retries and why it failed.
- ``best.yaml``: the resolved config of the best trial (highest validation AUC; with a latency
  objective, the highest-AUC trial of the Pareto front), which ``pcamlab train --config`` runs as is.
- ``figures/``: Optuna's matplotlib plots (optimisation history, parameter importances, slices,
  parallel coordinates, intermediate values; the Pareto front with two objectives); a sweep's
  ``what_mattered.png``.
- ``report.html``: those figures inlined as PNG (no script, no CDN: the page opens offline) and the
  top trials with their AUC confidence intervals.

AUC confidence intervals: hold-out trials use the Hanley & McNeil (1982) standard error from the AUC
and the validation split's class counts (normal approximation); k-fold trials the Student-t interval
of the fold AUCs. Both describe one trial's estimate; the best of many trials is optimistically
biased (it was chosen on the same validation data), so confirm the winner on the test split.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pcamlab.data.runfiles import UNDEFINED, is_undefined, read_json
from pcamlab.config import config_from_dict, config_to_dict
from pcamlab.errors import PcamlabError
from pcamlab.fileio import save_png, write_text_atomic
from pcamlab.runfolder import RunFolder
from pcamlab.tune.space import SweepPlan
from pcamlab.tune.storage import dashboard_command, redacted_url
from pcamlab.tune.sweep import WHAT_MATTERED_COLUMNS, format_what_mattered, plot_what_mattered, t_interval, what_mattered

__all__ = ["TRIAL_COLUMNS", "base_verdict", "hanley_mcneil_interval", "trial_counts", "trial_rows", "write_outputs"]

TRIAL_COLUMNS = ["number", "state", "val_auc", "val_auc_ci_low", "val_auc_ci_high", "latency_ms", "epochs_run",
                 "best_epoch", "train_seconds", "duration_seconds", "run", "retry_of", "worker", "error", "base"]
TOP_TRIALS = 10


def hanley_mcneil_interval(auc: float, positives: int, negatives: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95% normal-approximation interval of an ROC AUC from its Hanley & McNeil (1982) standard error.

    Args:
        auc: the ROC AUC in [0, 1].
        positives, negatives: class counts of the split it was measured on.

    Returns:
        ``(low, high)`` clipped to [0, 1], or None without both classes.
    """
    if positives < 1 or negatives < 1 or math.isnan(auc):
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    half = z * math.sqrt(max(variance, 0.0))
    return max(auc - half, 0.0), min(auc + half, 1.0)


def _valid_counts(base: dict[str, Any]) -> tuple[int, int] | None:
    """(positives, negatives) of the base config's validation split, or None when it cannot be read."""
    import numpy as np

    from pcamlab.data.source import open_run_split

    config = config_from_dict(base)
    try:
        reader = open_run_split(config.data, config.data.valid_split)
    except PcamlabError:
        return None
    labels = np.asarray(reader.labels)
    return int((labels == 1).sum()), int((labels == 0).sum())


def trial_rows(study, settings, task, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per trial: :data:`TRIAL_COLUMNS`, then the parameters (or knob, value, seed of a sweep)."""
    counts = _valid_counts(base) if settings.protocol == "holdout" else None
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        auc = attrs.get("val_auc")
        interval = None
        if auc is not None and trial.state.name == "COMPLETE":
            if "fold_aucs" in attrs:
                interval = t_interval(attrs["fold_aucs"])
            elif counts is not None:
                interval = hanley_mcneil_interval(float(auc), *counts)
        duration = None
        if trial.datetime_start and trial.datetime_complete:
            duration = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        row = {
            "number": trial.number, "state": trial.state.name, "val_auc": auc,
            "val_auc_ci_low": interval[0] if interval else None, "val_auc_ci_high": interval[1] if interval else None,
            "latency_ms": attrs.get("latency_ms"), "epochs_run": attrs.get("epochs_run", len(trial.intermediate_values) or None),
            "best_epoch": attrs.get("best_epoch"), "train_seconds": attrs.get("train_seconds"),
            "duration_seconds": duration, "run": attrs.get("run"), "retry_of": trial.system_attrs.get("failed_trial"),
            "worker": attrs.get("worker"), "error": attrs.get("error"), "base": bool(attrs.get("base", False)),
        }
        if isinstance(task, SweepPlan):
            run = task.runs[trial.params["run"]] if "run" in trial.params else None
            row.update({"knob": run.knob if run else None, "value": run.value if run else None, "seed": run.seed if run else None})
        else:
            row.update({param.path: trial.params.get(param.path) for param in task.params})
        rows.append(row)
    return rows


def trial_counts(study) -> dict[str, int]:
    """Trials per state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING) and ``finished`` (complete + pruned)."""
    counts = dict.fromkeys(("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"), 0)
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name in counts:
            counts[trial.state.name] += 1
    counts["finished"] = counts["COMPLETE"] + counts["PRUNED"]
    return counts


def _base_summary(rows: list[dict[str, Any]], best: dict[str, Any] | None) -> dict[str, Any] | None:
    """The base-config trial (enqueued as trial 0 of a search) against the best trial, or None.

    ``beats`` is True when the best trial's AUC exceeds the base's by more than the half-width of the
    base's 95% CI (the rule for replacing a default; one validation split, so the best is optimistic).
    """
    row = next((r for r in rows if r.get("base") and r["state"] == "COMPLETE" and r["val_auc"] is not None), None)
    if row is None:
        return None
    summary = {"number": row["number"], "val_auc": row["val_auc"], "ci": [row["val_auc_ci_low"], row["val_auc_ci_high"]],
               "best_minus_base": None, "beats": None}
    if best is not None and best["val_auc"] is not None:
        summary["best_minus_base"] = best["val_auc"] - row["val_auc"]
        if row["val_auc_ci_low"] is not None:
            half_width = (row["val_auc_ci_high"] - row["val_auc_ci_low"]) / 2
            summary["ci_half_width"] = half_width
            summary["beats"] = best["number"] != row["number"] and summary["best_minus_base"] > half_width
    return summary


def base_verdict(base: dict[str, Any]) -> str:
    """One line: the base trial's AUC, and whether the best trial beats it by more than its CI."""
    line = f"trial {base['number']}: val AUC {base['val_auc']:.4f}"
    if base["ci"][0] is not None:
        line += f" (95% CI {base['ci'][0]:.4f}-{base['ci'][1]:.4f})"
    if base["best_minus_base"] is not None:
        line += f"; best - base = {base['best_minus_base']:+.4f}"
        if base["beats"] is not None:
            line += (": more than the base's CI half-width, a candidate to replace it" if base["beats"]
                     else f": within the base's CI half-width ({base['ci_half_width']:.4f}), keep the base")
    return line


def _cell(value: Any, precise: bool = False) -> str:
    """A table cell: floats to 4 decimals, an undefined value (None, NaN, infinite) as ``—``; ``precise``: for
    CSV, floats in full and undefined as an empty cell."""
    if is_undefined(value):
        return "" if precise else UNDEFINED
    if isinstance(value, float):
        return repr(value) if precise else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _csv(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0]) if rows else TRIAL_COLUMNS
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column), precise=True) for column in columns])
    return buffer.getvalue()


def _best_trial(study, settings):
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if len(settings.objectives) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda trial: trial.values[0])


def _best_config(trial, out_dir: Path, settings, task, base) -> dict[str, Any]:
    """The best trial's resolved config: its run folder's config.yaml, or rebuilt from its parameters."""
    run = trial.user_attrs.get("run")
    saved = RunFolder(out_dir / run).config if run else None
    if saved is not None and saved.is_file():
        return yaml.safe_load(saved.read_text())
    if isinstance(task, SweepPlan):
        values = task.apply(base, task.runs[trial.params["run"]])
    else:
        values = task.apply(base, {path: trial.params[path] for path in trial.params})
    if settings.trial_minutes > 0:
        values.setdefault("train", {})["time_budget_minutes"] = settings.trial_minutes
    return config_to_dict(config_from_dict(values))


def _figure_png(draw: Callable[[], Any], path: Path) -> tuple[Path | None, str | None]:
    """Run an Optuna matplotlib plot, save it; (path, None) or (None, why it was not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = draw()
            figure = np.ravel(axes)[0].figure if isinstance(axes, np.ndarray) else axes.figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 7), max(figure.get_size_inches()[1], 4.5))
            figure.tight_layout()
        save_png(figure, path)
        return path, None
    except Exception as error:  # noqa: BLE001 - Optuna raises several types for "too few trials"
        return None, (str(error).splitlines() or [type(error).__name__])[0]
    finally:
        plt.close("all")


def _figures(study, settings, task, out_dir: Path) -> list[tuple[str, Path | None, str | None]]:
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    folder = out_dir / "figures"
    auc = (lambda t: t.values[0]) if len(settings.objectives) > 1 else None
    name = "validation AUC"
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    jobs: list[tuple[str, str, Callable[[], Any]]] = [
        ("Optimisation history", "history.png", lambda: plots.plot_optimization_history(study, target=auc, target_name=name)),
    ]
    if len(settings.objectives) > 1:
        jobs.append(("AUC / latency Pareto front", "pareto_front.png",
                     lambda: plots.plot_pareto_front(study, target_names=["validation AUC", "ms per patch"])))
    if not isinstance(task, SweepPlan):
        jobs += [
            ("Parameter importances", "importances.png", lambda: plots.plot_param_importances(study, target=auc, target_name=name)),
            ("Slice plots", "slices.png", lambda: plots.plot_slice(study, target=auc, target_name=name)),
            ("Parallel coordinates", "parallel_coordinates.png", lambda: plots.plot_parallel_coordinate(study, target=auc, target_name=name)),
        ]
    if settings.prunes:
        jobs.append(("Validation AUC per epoch (what the pruner saw)", "intermediate_values.png", lambda: plots.plot_intermediate_values(study)))
    results = []
    for title, file, draw in jobs:
        if complete == 0:
            results.append((title, None, "no complete trial yet"))
            continue
        path, reason = _figure_png(draw, folder / file)
        results.append((title, path, reason))
    return results


def _png_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table_html(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(column)))}</td>" for column in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(title: str, facts: list[tuple[str, str]], sections: list[tuple[str, str]]) -> str:
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4;padding:1px 3px}"
             ".note{color:#555;font-size:13px}")
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in facts)
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><table>{fact_rows}</table>{body}</body></html>\n")


def write_outputs(study, out_dir: str | Path, settings, base: dict[str, Any], task, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write ``trials.csv``, ``best.yaml``, the figures and ``report.html`` of a study (atomically).

    Args:
        study: the Optuna study (loaded from its storage).
        out_dir: the study folder.
        settings: its :class:`~pcamlab.tune.study.StudySettings`.
        base: nested values of the base config.
        task: its :class:`~pcamlab.tune.space.SearchSpace` or :class:`~pcamlab.tune.space.SweepPlan`.
        log: called with one line per file written.

    Returns:
        ``{"counts", "best" (number, val_auc, CI, latency, params) or None, "files", "what_mattered"
        (sweep only)}``.
    """
    say = log or (lambda line: None)
    out_dir = Path(out_dir)
    rows = trial_rows(study, settings, task, base)
    files = {"trials": write_text_atomic(out_dir / "trials.csv", _csv(rows))}
    counts = trial_counts(study)
    best = _best_trial(study, settings)
    best_summary = None
    if best is not None:
        row = next(r for r in rows if r["number"] == best.number)
        best_summary = {"number": best.number, "val_auc": row["val_auc"], "ci": [row["val_auc_ci_low"], row["val_auc_ci_high"]],
                        "latency_ms": row["latency_ms"], "params": dict(best.params), "run": row["run"]}
        described = ", ".join(f"{k}={v}" for k, v in best.params.items())
        if isinstance(task, SweepPlan):
            described = f"knob {row['knob']} = {row['value']}, seed {row['seed']}"
        header = (f"# Best trial {best.number} of study {study.study_name!r}: validation AUC {row['val_auc']:.4f}"
                  + (f" (95% CI {row['val_auc_ci_low']:.4f}-{row['val_auc_ci_high']:.4f})" if row["val_auc_ci_low"] is not None else "")
                  + (f", {row['latency_ms']:.2f} ms/patch" if row["latency_ms"] is not None else "")
                  + f"\n# {described}\n# Train it: pcamlab train --config {shlex.quote(str(out_dir / 'best.yaml'))} --out runs/NAME\n")
        config = _best_config(best, out_dir, settings, task, base)
        files["best"] = write_text_atomic(out_dir / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    figures = _figures(study, settings, task, out_dir)
    sections = []
    result: dict[str, Any] = {"counts": counts, "best": best_summary, "base": _base_summary(rows, best_summary)}
    if isinstance(task, SweepPlan):
        finished = [r for r in rows if r["state"] == "COMPLETE" and r["knob"] is not None]
        table = what_mattered([{"knob": r["knob"], "value": r["value"], "seed": r["seed"], "val_auc": r["val_auc"]} for r in finished], task.knobs)
        result["what_mattered"] = table
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(WHAT_MATTERED_COLUMNS)
        for item in table["rows"]:
            writer.writerow([_cell(item[column], precise=True) for column in WHAT_MATTERED_COLUMNS])
        files["what_mattered_csv"] = write_text_atomic(out_dir / "what_mattered.csv", buffer.getvalue())
        files["what_mattered_md"] = write_text_atomic(out_dir / "what_mattered.md", format_what_mattered(table, markdown=True))
        plot = None
        if table["rows"] and table["base"]["seeds"]:
            plot = files["what_mattered_png"] = plot_what_mattered(table, out_dir / "figures" / "what_mattered.png")
        sections.append(("What mattered", (_png_tag(plot) if plot else "<p>no finished runs yet</p>")
                         + _table_html([{"knob": "base", "value": "(base config)", "seeds": table["base"]["seeds"],
                                         "mean_auc": table["base"]["mean_auc"], "sd_auc": table["base"]["sd_auc"]}] + table["rows"],
                                        WHAT_MATTERED_COLUMNS)
                         + "<p class='note'>AUC - base: mean over seeds of the paired difference (same seed); 95% CI: Student t "
                           "over the seeds. The grey band is the spread seed noise alone gives the difference of two single runs.</p>"))
    complete = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -(r["val_auc"] or 0))
    param_columns = [c for c in rows[0] if c not in TRIAL_COLUMNS] if rows else []
    top_columns = ["number", "val_auc", "val_auc_ci_low", "val_auc_ci_high", *(["latency_ms"] if len(settings.objectives) > 1 else []),
                   "epochs_run", "train_seconds", *param_columns, "run"]
    sections.append((f"Top {min(TOP_TRIALS, len(complete))} trials", _table_html(complete[:TOP_TRIALS], top_columns)
                     + "<p class='note'>95% CI of each trial's validation AUC ("
                     + ("Student t over its folds" if settings.protocol == "kfold" else "Hanley &amp; McNeil 1982, from the validation class counts")
                     + "). The best of many trials is optimistic: it was chosen on the same validation data; confirm it on the test split.</p>"))
    for title, path, reason in figures:
        sections.append((title, _png_tag(path) if path else f"<p class='note'>not drawn: {html.escape(reason or '')}</p>"))
    storage = read_json(out_dir / "study.json").get("storage") or "study.db" if (out_dir / "study.json").is_file() else "study.db"
    dashboard = dashboard_command(out_dir / "study.db") if storage == "study.db" else f"{dashboard_command(storage)} (with its password)"
    sections.append(("Open the study interactively", f"<p><code>{html.escape(dashboard)}</code> then open http://127.0.0.1:8080/</p>"))
    facts = [
        ("study", study.study_name), ("storage", storage if storage != "study.db" else str(out_dir / "study.db")),
        ("kind", settings.kind), ("objectives", " + ".join(settings.objectives)), ("protocol", settings.protocol + (f" ({settings.folds} folds)" if settings.protocol == "kfold" else "")),
        ("sampler / pruner", "grid over runs (sweep)" if settings.kind == "sweep" else f"{settings.sampler} / {settings.pruner if settings.prunes else 'none'}"),
        ("trials", f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['RUNNING']} running, {counts['WAITING']} waiting"),
        ("best", "none yet" if best_summary is None else f"trial {best_summary['number']}: val AUC {best_summary['val_auc']:.4f}"),
    ]
    if result["base"] is not None:
        facts.append(("base config", base_verdict(result["base"])))
    files["figures"] = [path for _, path, _ in figures if path]
    files["report"] = write_text_atomic(out_dir / "report.html", _html(f"pcamlab study {study.study_name}", facts, sections))
    say(f"study outputs: {files['trials']}, {files.get('best', 'no best.yaml (no complete trial)')}, {files['report']}")
    result["files"] = files
    result["storage"] = redacted_url(storage) if storage != "study.db" else str(out_dir / "study.db")
    return result
