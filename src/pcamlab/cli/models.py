"""``pcamlab models``: the table of model presets (parameters, MFLOPs per patch, description).

A thin adapter over :func:`pcamlab.models.model_table`, imported inside the command so
``pcamlab --help`` stays fast.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``pcamlab models`` to the top-level parser (the table, then the default model's line)."""
    parser = subparsers.add_parser(
        "models",
        help="list the model presets with parameters, MFLOPs and a description",
        description="List the registered models (default options): parameters, forward MFLOPs per patch "
                    "(2 x multiply-adds of conv/linear layers) and a one-line description.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="models to show (default: all)")
    parser.add_argument("--options", action="store_true", help="also list each model's options and defaults")
    parser.add_argument("--input-size", type=int, default=96, help="patch side for the FLOP count (default 96)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pcamlab.models import default_model, model_summary, model_table

    rows = model_table(args.names or None, args.input_size)
    name_width = max(len("model"), *(len(row["name"]) for row in rows))
    print(f"{'model':{name_width}s}  {'parameters':>11s}  {'MFLOPs':>8s}  description")
    for row in rows:
        print(f"{row['name']:{name_width}s}  {row['parameters']:11,d}  {row['flops'] / 1e6:8.1f}  {row['description']}")
        if args.options:
            for key, value in row["options"].items():
                shown = list(value) if isinstance(value, tuple) else value
                print(f"{'':{name_width}s}    {key}: {shown}")
    default = default_model()
    if default.name in (row["name"] for row in rows):
        summary = model_summary(default, args.input_size)
        options = ", ".join(f"{key} {value}" for key, value in default.options.items())
        print(f"default model: {default.name} with {options} (configs/default.yaml, pcamlab demo, pcamlab bench): "
              f"{summary['parameters']:,d} parameters, {summary['flops'] / 1e6:.1f} MFLOPs/patch; "
              "the rows show each model with its builder's defaults")
    return 0
