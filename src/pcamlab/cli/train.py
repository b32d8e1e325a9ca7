"""``pcamlab train``: train a model from a YAML config into a run folder."""

from __future__ import annotations

import argparse

from pcamlab.cli._common import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML config into a run folder",
        description="Train a model. Precedence: config defaults < --config FILE < --data/--format < --set.",
    )
    parser.add_argument("--data", metavar="PATH", help="dataset root (h5, class folders or Kaggle layout), or 'sample'")
    parser.add_argument("--format", choices=["auto", "h5", "folders", "kaggle"], help="data layout (default: detect)")
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder to create, e.g. runs/first")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from pcamlab.config import load_config
    from pcamlab.train.loop import train

    overrides = []
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.format:
        overrides.append(f"data.format={args.format}")
    if args.resume:
        from pathlib import Path

        saved = Path(args.out) / "config.yaml"
        config = load_config(saved if saved.is_file() else args.config, overrides + args.overrides)
    else:
        config = load_config(args.config, overrides + args.overrides)
    summary = train(config, args.out, resume=args.resume, progress=not args.no_progress and sys.stderr.isatty(), log=print)
    print(f"run folder: {args.out}  (best checkpoint: {summary['checkpoints']['best']})")
    return 0
