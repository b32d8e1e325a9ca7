"""Small helpers shared by the command modules (argument groups and progress callbacks)."""

from __future__ import annotations

import argparse
import sys


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config FILE and repeated --set section.field=value."""
    parser.add_argument(
        "--config", metavar="FILE", action="append", default=[],
        help="YAML run config (see configs/); repeat to merge several in order, a later file winning field by "
        "field (e.g. --config configs/baseline.yaml --config configs/models/simple-cnn.yaml); defaults otherwise",
    )
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
        help="override one config field, e.g. --set train.epochs=5 (repeatable)",
    )


def add_format_argument(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """``--format`` with the registered data readers (and ``auto``) as its choices."""
    from pcamlab.data.readers import format_choices  # the reader registry only: no torch

    parser.add_argument("--format", default=default, choices=format_choices(), help=help)


def progress_bar(description: str, enabled: bool = True, unit: str = "patch"):
    """``(progress(done, total), close)``: a bar on stderr when it is a terminal (pcamlab.progress)."""
    from pcamlab.progress import progress_bar as bar

    return bar(description, enabled and sys.stderr.isatty(), unit=unit)


def seed_type(text: str) -> int:
    """argparse ``type`` of every ``--seed``: an integer in :data:`pcamlab.config_ranges.SEED` (0..2**32-1, the
    seeds scikit-learn, NumPy and PyTorch all accept), refused at parse time with the allowed range."""
    from pcamlab.config_ranges import SEED

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not SEED.contains(value):
        raise argparse.ArgumentTypeError(f"must be an integer {SEED.describe()}; got {text!r}; use e.g. {SEED.example}")
    return value
