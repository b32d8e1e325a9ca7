"""``pcamlab tune``: hyperparameter search (TPE/random/grid, pruning) and the one-knob-at-a-time sweep.

- ``pcamlab tune --config BASE.yaml --space configs/tune/default.yaml --out studies/NAME --trials 20``
- ``--sweep --space configs/tune/sweep-notes.yaml``: every knob value x seeds from the base, then the
  "what mattered" table.
- ``--resume`` continues a stopped study; ``--workers N`` runs N trial processes here; ``--storage
  postgresql://...`` lets workers on other machines join; ``--report`` rewrites the outputs only.
"""

from __future__ import annotations

import argparse

from pcamlab.cli._common import add_config_arguments, seed_type

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune", help="search hyperparameters on Optuna, or sweep one knob at a time (study folder, report)",
        description="Run an Optuna study: each trial is a normal training run in OUT/trials/. Precedence of the "
        "base config: defaults < --config < --data < --set; the search space (--space) varies it.",
        epilog="Examples: pcamlab tune --config configs/tune/base-quick.yaml --space configs/tune/default.yaml "
        "--out studies/first --trials 20 --minutes 60; pcamlab tune --sweep --config configs/tune/base-quick.yaml "
        "--space configs/tune/sweep-notes.yaml --out studies/knobs; pcamlab tune --resume --out studies/first",
    )
    parser.add_argument("--data", metavar="PATH", help="dataset root (h5, class folders or Kaggle layout), or 'sample'")
    add_config_arguments(parser)
    parser.add_argument("--space", metavar="YAML", help="search space (or, with --sweep, sweep plan); see configs/tune/")
    parser.add_argument("--out", required=True, metavar="DIR", help="study folder, e.g. studies/first")
    parser.add_argument("--sweep", action="store_true", help="one factor at a time from the base, several seeds each")
    parser.add_argument("--resume", action="store_true", help="continue the stopped study in --out")
    parser.add_argument("--report", action="store_true", help="only rewrite trials.csv, best.yaml and report.html of --out")
    budget = parser.add_argument_group("budget")
    budget.add_argument("--trials", type=int, metavar="N", help="finished trials to reach (default 20; a sweep: all its runs)")
    budget.add_argument("--minutes", type=float, default=0.0, metavar="M", help="study budget: no trial starts after M minutes")
    budget.add_argument("--trial-minutes", type=float, default=0.0, metavar="T",
                        help="training budget of each trial (sets train.time_budget_minutes; default: the config's)")
    search = parser.add_argument_group("search")
    search.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe", help="default: tpe")
    search.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                        help="stop bad trials early from their per-epoch validation AUC (default: median)")
    search.add_argument("--objectives", default="auc", metavar="auc[,latency]",
                        help="auc (validation ROC AUC) or auc,latency (and inference ms/patch: a Pareto front)")
    search.add_argument("--protocol", choices=["holdout", "kfold"], default="holdout",
                        help="trial score: best validation AUC (holdout) or its mean over k folds of train (kfold)")
    search.add_argument("--folds", type=int, default=5, metavar="K", help="k for --protocol kfold (default 5)")
    search.add_argument("--seed", type=seed_type, default=0, help="sampler seed (default 0)")
    scale = parser.add_argument_group("scale-out")
    scale.add_argument("--workers", type=int, default=1, metavar="N", help="trial processes on this machine (default 1)")
    scale.add_argument("--threads", type=int, default=0, metavar="T", help="torch threads per worker (default: cores / workers)")
    scale.add_argument("--storage", metavar="URL",
                       help="database shared by many machines, e.g. postgresql://user:password@host:5432/db "
                       "(default: OUT/study.db, SQLite)")
    scale.add_argument("--study-name", metavar="NAME", help="the study's name in --storage (default: the folder's name)")
    scale.add_argument("--heartbeat", type=int, default=10, metavar="S",
                       help="trial heartbeat in seconds; a trial silent 3x as long is failed and re-queued (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pcamlab.errors import ConfigError

    if args.report:
        from pcamlab.tune.study import write_study_outputs

        result = write_study_outputs(args.out, storage=args.storage, log=print)
        _print_result(result)
        return 0
    common = dict(trials=args.trials, minutes=args.minutes, workers=args.workers, storage=args.storage,
                  heartbeat_seconds=args.heartbeat, threads=args.threads, log=print)
    if args.resume:
        from pcamlab.tune.study import resume_study

        given = [flag for flag, value in (("--space", args.space), ("--config", args.config), ("--set", args.overrides),
                                          ("--data", args.data), ("--sweep", args.sweep)) if value]
        if given:
            raise ConfigError(f"--resume continues the study as it was made (its base.yaml and space.yaml); drop {', '.join(given)}")

        _print_result(resume_study(args.out, **common))
        return 0
    if not args.space:
        raise ConfigError("pcamlab tune needs --space YAML (a search space, or a sweep plan with --sweep); see configs/tune/")
    from pcamlab.config import config_to_dict, load_config
    from pcamlab.tune.study import StudySettings, check_data, run_study

    overrides = [("data.path", args.data)] if args.data else []
    base = config_to_dict(load_config(args.config, overrides + args.overrides))
    settings = StudySettings(
        kind="sweep" if args.sweep else "search", objectives=tuple(part.strip() for part in args.objectives.split(",") if part.strip()),
        protocol=args.protocol, folds=args.folds, sampler=args.sampler, pruner=args.pruner,
        trial_minutes=args.trial_minutes, seed=args.seed,
    ).check()
    check_data(base)
    _print_result(run_study(base, args.space, args.out, settings, study_name=args.study_name, **common))
    return 0


def _print_result(result: dict) -> None:
    from pcamlab.tune.report import base_verdict
    from pcamlab.tune.study import dashboard_command

    counts = result["counts"]
    print(f"trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
          + (f", {counts['RUNNING']} still running elsewhere" if counts["RUNNING"] else ""))
    if "what_mattered" in result:
        from pcamlab.tune.sweep import format_what_mattered

        print(format_what_mattered(result["what_mattered"]), end="")
    best = result["best"]
    if best is not None:
        interval = "" if best["ci"][0] is None else f" (95% CI {best['ci'][0]:.4f}-{best['ci'][1]:.4f})"
        latency = "" if best["latency_ms"] is None else f", {best['latency_ms']:.2f} ms/patch"
        print(f"best: trial {best['number']}, val_auc {best['val_auc']:.4f}{interval}{latency}; config: {result['files']['best']}")
    if result.get("base") is not None:
        print(f"base config: {base_verdict(result['base'])}")
    print(f"report: {result['files']['report']}  (interactive: {dashboard_command(result['storage'])})")
