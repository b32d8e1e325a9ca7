"""``pcamlab train``: train a model from a YAML config into a run folder, under an evaluation protocol.

- ``--protocol holdout`` (default): learn on train, choose the epoch on valid (one run folder).
- ``--protocol kfold --folds K [--repeats R]``: (iterated) k-fold cross-validation over the train split,
  one run folder per fold, then a table of the folds and mean +- sd.
- ``--final``: fit on train+valid for the epoch count chosen on validation (``--epochs-from RUN``, or
  ``train.epochs``), then evaluate on the test split. With ``--protocol kfold`` the cross-validation runs
  first and the final fit goes into ``OUT/final`` with the CV's median best epoch.
- ``--resume``: continue the interrupted run in ``--out``, whatever its protocol (the folder knows it).
- ``--continue RUN``: train the finished run RUN further (``--set train.epochs=N``, N larger) into the new
  folder ``--out``; RUN is not touched.
"""

from __future__ import annotations

import argparse
import shlex

from pcamlab.cli._common import add_config_arguments, add_format_argument


def _print(*args, **kwargs) -> None:
    """``print`` on the first process only: under torchrun every process runs this command."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(*args, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML config into a run folder (hold-out, k-fold or final fit)",
        description="Train a model. Precedence: config defaults < --config FILE (repeatable: merged in order, a "
        "later file winning field by field) < --data/--format < --set.",
        epilog="Examples: pcamlab train --config configs/baseline.yaml --out runs/first; "
        "pcamlab train --protocol kfold --folds 5 --repeats 2 --out runs/cv; "
        "pcamlab train --final --epochs-from runs/cv --out runs/final",
    )
    parser.add_argument("--data", metavar="PATH", help="dataset root (h5, class folders or Kaggle layout), or 'sample'")
    add_format_argument(parser, "data layout (default: the config's data.format, auto = detect)")
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder to create, e.g. runs/first")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run (or cross-validation) in --out; its protocol, folds and "
                        "config come from the folder")
    parser.add_argument("--continue", dest="continue_from", metavar="RUN",
                        help="train the finished run RUN further into the new folder --out, up to a larger "
                        "train.epochs (--set train.epochs=N); RUN's files are left as they are")
    parser.add_argument("--skip-bad", action="store_true",
                        help="go on past unreadable or malformed image files and report how many were skipped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    protocol = parser.add_argument_group("evaluation protocol")
    protocol.add_argument(
        "--protocol", choices=["holdout", "kfold"], default=None,
        help="holdout: train on train, validate on valid (default); kfold: cross-validate over the train split",
    )
    protocol.add_argument("--folds", type=int, metavar="K", help="k of k-fold (default 5; needs --protocol kfold)")
    protocol.add_argument("--repeats", type=int, metavar="R",
                          help="iterated k-fold: draw the folds R times with seeds data.seed + r (default 1)")
    protocol.add_argument(
        "--groups", metavar="auto|none|CSV",
        help="slides to group folds by: auto = PCam's _meta.csv beside the h5 files (default), none, or a meta CSV path",
    )
    protocol.add_argument("--final", action="store_true",
                          help="fit on train+valid without validation, then evaluate on the test split")
    protocol.add_argument("--epochs-from", metavar="RUN",
                          help="with --final: take the epoch count from a run's summary.json (best_epoch) or a "
                          "cross-validation folder (median best epoch)")
    parser.set_defaults(func=run)


def _check_arguments(args: argparse.Namespace) -> None:
    from pcamlab.errors import ConfigError

    if args.resume:  # the folder knows its protocol: take it from there, refuse a contradicting --protocol
        from pcamlab.train.protocols import run_folder_protocol

        found = run_folder_protocol(args.out)
        if found is not None and found["protocol"] == "final":
            raise ConfigError(
                f"{args.out!r} is a final fit; a final fit cannot be resumed: run it again into a new folder "
                "(pcamlab train --final ... --out NEW)"
            )
        if found is not None:
            if args.protocol is not None and args.protocol != found["protocol"]:
                raise ConfigError(
                    f"{args.out!r} holds a {found['protocol']} run but --protocol {args.protocol} was given; "
                    "drop --protocol (--resume reads it from the folder)"
                )
            args.protocol = found["protocol"]
    if args.continue_from is not None and (args.resume or args.final or args.protocol == "kfold"):
        raise ConfigError("--continue trains one finished hold-out run further; drop --resume, --final and --protocol")
    kfold = args.protocol == "kfold"
    for flag, value in (("--folds", args.folds), ("--repeats", args.repeats), ("--groups", args.groups)):
        if value is not None and not kfold:
            raise ConfigError(f"{flag} applies to cross-validation only; add --protocol kfold (or drop {flag})")
    if args.epochs_from and not args.final:
        raise ConfigError("--epochs-from applies to the final fit only; add --final (or drop --epochs-from)")
    if args.epochs_from and kfold:
        raise ConfigError(
            "--protocol kfold --final takes the epoch count from its own cross-validation; drop --epochs-from"
        )
    if args.resume and args.final:
        raise ConfigError("--resume continues hold-out or k-fold runs, not a final fit; drop --resume or --final")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pcamlab.config import load_config
    from pcamlab.errors import ConfigError
    from pcamlab.runfolder import RunFolder

    _check_arguments(args)
    overrides: list = []  # typed (field, value) pairs: a flag's value is never re-read as YAML
    if args.data:
        # stored absolute, so the run's checkpoints find their data from any working folder ('sample' is a name)
        data = args.data if args.data == "sample" else str(Path(args.data).expanduser().absolute())
        overrides.append(("data.path", data))
    if args.format:
        overrides.append(("data.format", args.format))
    if args.skip_bad:
        overrides.append(("data.skip_bad", True))
    if args.resume or args.continue_from:
        saved = RunFolder(args.continue_from or args.out).config
        if saved.is_file():
            if args.config:
                raise ConfigError(
                    f"{'--continue' if args.continue_from else '--resume'} continues with the run's own {saved}; "
                    f"drop --config {' '.join(args.config)} (a run keeps the config it started with)"
                )
            config = load_config(saved, overrides + args.overrides)
        else:
            config = load_config(args.config, overrides + args.overrides)
        _refuse_resuming_a_finished_run(args)
    else:
        config = load_config(args.config, overrides + args.overrides)
        if len(args.config) > 1:
            _print(f"config: merged {' < '.join(args.config)} (a later file wins field by field; "
                  "the resolved config lists them in config_files)")
        elif not args.config:
            _print(f"config: no --config, so pcamlab's built-in field defaults ({config.model.name} with its builder's "
                   f"options, {config.train.epochs} epochs, time budget {config.train.time_budget_minutes:g} min, "
                   f"evaluate.tta {str(config.evaluate.tta).lower()}); the recommended recipe is --config "
                   "configs/default.yaml (the default model at width 16, 15 minutes, TTA)")
    progress = not args.no_progress and sys.stderr.isatty()

    if args.protocol == "kfold":
        from pcamlab.train.protocols import format_cv_table, run_kfold

        result = run_kfold(
            config, args.out, folds=args.folds, repeats=args.repeats,
            groups=args.groups or "auto", resume=args.resume, progress=progress, log=_print,
        )
        _print(format_cv_table(result))
        _print(f"cross-validation folder: {args.out}  (cv_results.csv, cv_summary.json)")
        if args.final:
            _final(config, Path(args.out) / "final", None, args.out, progress)
        return 0
    if args.final:
        _final(config, args.out, None, args.epochs_from, progress)
        return 0

    from pcamlab.train.loop import train

    summary = train(config, args.out, resume=args.resume, continue_from=args.continue_from, progress=progress, log=_print)
    best = summary["checkpoints"]["best"]
    _print(f"run folder: {args.out}  ({f'best checkpoint: {best}' if best else 'no best checkpoint was written'})")
    return 0


def _refuse_resuming_a_finished_run(args: argparse.Namespace) -> None:
    """``--resume`` of a finished run: say how to train it further without overwriting it."""
    from pcamlab.errors import ConfigError
    from pcamlab.runfolder import RunFolder

    run = RunFolder(args.out)
    if args.resume and run.finished():
        ran = run.read_summary().get("epochs_run")
        raise ConfigError(
            f"run {args.out!r} already finished ({ran} epochs) and is never overwritten; to train it further, "
            f"write a new folder: pcamlab train --continue {shlex.quote(str(args.out))} --out NEW --set train.epochs=N (N > {ran})"
        )


def _final(config, out, epochs, epochs_from, progress: bool) -> None:
    from pathlib import Path

    from pcamlab.train.protocols import run_final

    result = run_final(config, out, epochs=epochs, epochs_from=epochs_from, progress=progress, log=_print)
    test = result["test"]
    if "skipped" in test:
        where = f"no test evaluation: {test['skipped']}"
    else:
        auc = "n/a" if test.get("roc_auc") is None else f"{test['roc_auc']:.4f}"
        where = f"test {test['split']!r}: AUC {auc}, metrics in {Path(out) / test['folder']}"
    _print(f"final model: {result['checkpoint']}  ({result['epochs']} epoch{'' if result['epochs'] == 1 else 's'} on {result['train_patches']['total']} patches; {where})")
