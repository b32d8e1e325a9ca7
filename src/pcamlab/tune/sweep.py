"""The knob-by-knob study: what each one-factor change did to validation AUC, against seed noise.

Each knob value was trained with the same seeds as the base config, so seed ``s`` of a value and seed
``s`` of the base share their initial weights, batch order and augmentation draws (for shapes that
match); the effect of a value is estimated from the paired differences ``AUC(value, s) - AUC(base, s)``:
their mean, and a Student-t 95% confidence interval over the seeds (``n - 1`` degrees of freedom). The
interval's standard deviation is the value's own spread of differences, but never below the spread
pooled over every value of the sweep: with 2 or 3 seeds two differences can agree by chance (AUCs on a
small validation split move in steps), and a zero-width interval would call that an effect. A value
whose interval excludes 0 changed AUC by more than seed-to-seed noise explains; with 3 seeds the
interval is wide (t = 4.30), which is the honest answer for 3 seeds.

Example:
    >>> table = what_mattered(rows)      # rows: {"knob", "value", "seed", "val_auc"} per finished run
    >>> print(format_what_mattered(table))
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["WHAT_MATTERED_COLUMNS", "format_what_mattered", "plot_what_mattered", "t_interval", "what_mattered"]

WHAT_MATTERED_COLUMNS = ["knob", "value", "seeds", "mean_auc", "sd_auc", "delta_auc", "ci_low", "ci_high", "verdict"]


def t_interval(values: Sequence[float], confidence: float = 0.95, sd_floor: float = 0.0) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean of ``values`` (None for fewer than 2 values).

    ``sd_floor``: the smallest standard deviation used (a pooled estimate when the sample's own may be
    too small by chance).
    """
    from scipy.stats import t

    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    sd = max(statistics.stdev(values), sd_floor)
    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def what_mattered(rows: Sequence[dict[str, Any]], knobs: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The sweep's table: per knob value, its AUC difference from the base with a paired 95% CI.

    Args:
        rows: one per finished run, with ``knob`` ("base" for the base), ``value``, ``seed`` and
            ``val_auc`` (validation ROC AUC, float).
        knobs: knob -> value labels, for the table's order (default: the order in ``rows``).

    Returns:
        ``{"base": {"seeds", "mean_auc", "sd_auc", "aucs", "pooled_sd_difference"}, "rows": [...]}``; each
        row has the keys of :data:`WHAT_MATTERED_COLUMNS` plus ``differences`` (per seed). ``verdict`` is ``better`` or
        ``worse`` when the interval excludes 0, ``within noise`` otherwise, ``too few seeds`` below 2.
    """
    base = {int(row["seed"]): float(row["val_auc"]) for row in rows if row["knob"] == "base"}
    base_values = list(base.values())
    summary = {
        "seeds": len(base_values),
        "mean_auc": statistics.fmean(base_values) if base_values else None,
        "sd_auc": statistics.stdev(base_values) if len(base_values) > 1 else None,
        "aucs": base,
    }
    if knobs is None:
        knobs = {}
        for row in rows:
            if row["knob"] != "base" and row["value"] not in knobs.setdefault(row["knob"], []):
                knobs[row["knob"]].append(row["value"])
    cells = []
    for knob, values in knobs.items():
        for value in values:
            runs = {int(r["seed"]): float(r["val_auc"]) for r in rows if r["knob"] == knob and r["value"] == value}
            cells.append((knob, value, runs, {seed: auc - base[seed] for seed, auc in runs.items() if seed in base}))
    squares = sum(sum((d - statistics.fmean(diffs.values())) ** 2 for d in diffs.values()) for *_, diffs in cells if diffs)
    freedom = sum(len(diffs) - 1 for *_, diffs in cells if diffs)
    pooled = math.sqrt(squares / freedom) if freedom > 0 else 0.0
    summary["pooled_sd_difference"] = pooled
    table = []
    for knob, value, runs, differences in cells:
        interval = t_interval(list(differences.values()), sd_floor=pooled)
        if interval is None:
            verdict = "too few seeds"
        elif interval[0] > 0:
            verdict = "better"
        elif interval[1] < 0:
            verdict = "worse"
        else:
            verdict = "within noise"
        table.append({
            "knob": knob, "value": value, "seeds": len(runs),
            "mean_auc": statistics.fmean(runs.values()) if runs else None,
            "sd_auc": statistics.stdev(runs.values()) if len(runs) > 1 else None,
            "delta_auc": statistics.fmean(differences.values()) if differences else None,
            "ci_low": interval[0] if interval else None, "ci_high": interval[1] if interval else None,
            "verdict": verdict, "differences": differences,
        })
    return {"base": summary, "rows": table}


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_what_mattered(table: dict[str, Any], markdown: bool = False) -> str:
    """The table as aligned text (or Markdown), the base line first."""
    base = table["base"]
    header = ["knob", "value", "seeds", "mean AUC", "sd", "AUC - base", "95% CI", "verdict"]
    lines = [["base", "(base config)", str(base["seeds"]), _number(base["mean_auc"]), _number(base["sd_auc"]), "", "", ""]]
    for row in table["rows"]:
        interval = "-" if row["ci_low"] is None else f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
        lines.append([row["knob"], str(row["value"]), str(row["seeds"]), _number(row["mean_auc"]), _number(row["sd_auc"]),
                      _number(row["delta_auc"], signed=True), interval, row["verdict"]])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---", "---", "---:", "---:", "---:", "---:", "---", "---"]) + " |"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
        return "\n".join(out) + "\n"
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    render = lambda cells: "  ".join(c.ljust(w) if i in (0, 1, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)]) + "\n"


def plot_what_mattered(table: dict[str, Any], path: str | Path) -> Path:
    """Forest plot: AUC difference from the base per knob value (mean, 95% CI, each seed's difference).

    The grey band is what seed noise alone does to the difference of two single runs
    (+-1.96 x sqrt(2) x the base's seed-to-seed sd); an effect inside it is not visible in one run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pcamlab.fileio import save_png

    rows = table["rows"]
    base = table["base"]
    sd = base["sd_auc"]
    with plt.style.context("default"):  # Optuna's plots switch the global style to ggplot
        height = 2.2 + 0.35 * max(len(rows), 1)  # inches
        figure, axes = plt.subplots(figsize=(8, height))
        if sd:
            band = 1.96 * math.sqrt(2) * sd
            axes.axvspan(-band, band, color="0.88", zorder=0,
                         label=f"seed noise: one run vs one run (+-1.96 x sqrt(2) x base sd {sd:.4f})")
        axes.axvline(0, color="0.4", linewidth=0.8)
        colours = {"better": "tab:green", "worse": "tab:red"}
        for index, row in enumerate(rows):
            y = len(rows) - 1 - index
            colour = colours.get(row["verdict"], "tab:blue")
            for difference in row["differences"].values():
                axes.plot(difference, y, "o", color=colour, alpha=0.4, markersize=4, zorder=2)
            if row["delta_auc"] is not None:
                if row["ci_low"] is not None:
                    axes.plot([row["ci_low"], row["ci_high"]], [y, y], color=colour, linewidth=2, zorder=3)
                axes.plot(row["delta_auc"], y, "D", color=colour, markersize=6, zorder=4)
        axes.set_yticks(range(len(rows)))
        axes.set_yticklabels([f"{row['knob']}: {row['value']}" for row in reversed(rows)], fontsize=8)
        axes.set_ylim(-0.7, len(rows) - 0.3)
        axes.set_xlabel("validation AUC minus the base's, same seed (diamond: mean; line: 95% CI; dots: seeds)", fontsize=9)
        axes.set_title(f"What mattered: one knob at a time from the base\n(base AUC {_number(base['mean_auc'])} "
                       f"over {base['seeds']} seeds)", fontsize=10)
        if sd:
            # just under the x label, whatever the number of rows: about 0.55 inch below the axes
            axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55 / max(height - 1.2, 1.0)), fontsize=8, frameon=False)
        figure.tight_layout()
        saved = save_png(figure, path, bbox_inches="tight")
        plt.close(figure)
    return saved
