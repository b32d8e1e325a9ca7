"""``pcamlab compare RUN... [--sort roc_auc] [--format table|csv|markdown]``: runs side by side."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare the metrics of run folders (and tune studies' trials) in one table",
        description=(
            "Compare run folders: one row per metrics.json (the run folder and its eval-* subfolders) with "
            "facts from summary.json, config.yaml and history.csv, best first; a cross-validation folder shows its "
            "folds' mean and sd. Then the config fields that differ between the runs (table and markdown)."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by pcamlab train --out, or study folders of pcamlab tune (one row per trial)")
    parser.add_argument("--sort", default="roc_auc", metavar="COLUMN", help="column to rank by (default: roc_auc)")
    parser.add_argument(
        "--format", default="table", choices=["table", "csv", "markdown"], help="output format (default: table)"
    )
    parser.add_argument(
        "--all-columns", action="store_true", help="show every known column, not only the key ones (csv always does)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pcamlab.evaluate.compare import COLUMNS, compare_runs, config_differences, format_config_differences, format_rows

    rows = compare_runs(args.runs, sort_by=args.sort)
    columns = None
    if args.all_columns:
        columns = [column for column in COLUMNS if column == "run" or any(row.get(column) is not None for row in rows)]
    print(format_rows(rows, args.format, columns), end="")
    if args.format != "csv" and len(args.runs) > 1:  # CSV stays one table a program can read
        differences = config_differences(args.runs)
        print()
        print(format_config_differences(differences, args.format) or "config: the runs' config.yaml files agree", end="" if differences else "\n")
    return 0
