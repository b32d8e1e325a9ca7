"""``pcamlab report``: one self-contained HTML page for a run folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a run (config, curves, metrics, plots)",
        description="Collect a run folder's config, training curves, every metrics.json and every PNG "
        "(evaluations, explanations) into one HTML page with the images embedded.",
    )
    parser.add_argument("run", metavar="RUN", help="a run folder written by pcamlab train or pcamlab demo")
    parser.add_argument("--out", metavar="FILE", help="HTML file to write (default RUN/report.html, brought up to date "
                        "on every run); an existing --out file is never replaced without --force")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pcamlab.errors import RunFolderError
    from pcamlab.evaluate.plots import plot_training_curves
    from pcamlab.evaluate.report import write_report
    from pcamlab.runfolder import RunFolder

    folder = Path(args.run)
    if not folder.is_dir():
        raise RunFolderError(f"run folder {str(folder)!r} does not exist; pass a folder written by pcamlab train")
    history = RunFolder(folder).history
    if history.is_file():
        plot_training_curves(history, folder / "training_curves.png")
    path = write_report(folder, args.out, force=args.force)
    print(f"report written to {path} (open it in a browser)")
    return 0
