"""Studies on Optuna: storage, samplers, pruners, the trial objective and the worker loop.

A study folder holds::

    study.json     what the study is (objectives, protocol, sampler, pruner, storage, search or sweep)
    base.yaml      the resolved base config;  space.yaml  the search space or sweep plan as given
    study.db       the Optuna storage (SQLite) unless the study lives in PostgreSQL (``storage=``)
    trials/trial-NNNN/   one normal run folder per trial (checkpoints, history.csv, summary.json)
    trials.csv, best.yaml, report.html, figures/   written by :mod:`pcamlab.tune.report`

Every trial process records a heartbeat in the storage (``heartbeat_seconds``); a trial whose process
died (killed, machine lost) is marked failed once its heartbeat is older than the grace period and a
copy with the same parameters is queued (Optuna's ``RetryHeartbeatStaleTrialCallback``), so a study
ends with every trial accounted for. ``resume`` reopens the folder: with the default SQLite storage,
trials left running by a stopped study are failed and re-queued at once (the folder's lock proves
their process is gone).

The study's budget is counted in finished trials (complete or pruned): a failed trial does not use up
a place, its retry does.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pcamlab import stopping
from pcamlab.config import config_from_dict
from pcamlab.errors import ConfigError, PcamlabError, RunError, RunFolderError, did_you_mean
from pcamlab.fileio import write_text_atomic
from pcamlab.runfolder import RunFolder
from pcamlab.tune.report import trial_counts, write_outputs
from pcamlab.tune.space import SearchSpace, SweepPlan, load_space, load_sweep
from pcamlab.tune.storage import check_heartbeat, dashboard_command, local_storage_url, open_storage, redacted_url

__all__ = [
    "OBJECTIVES",
    "PROTOCOLS",
    "PRUNERS",
    "SAMPLERS",
    "StudySettings",
    "dashboard_command",
    "local_storage_url",
    "open_storage",
    "resume_study",
    "check_data",
    "run_study",
    "write_study_outputs",
]

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
PROTOCOLS = ("holdout", "kfold")
OBJECTIVES = ("auc", "latency")  # auc: validation ROC AUC (maximised); latency: inference ms per patch (minimised)
LATENCY_BATCH = 64  # patches per timed predict_proba call
STUDY_FILE = "study.json"
INTERRUPTED = "interrupted ("  # how the error of a trial stopped by SIGINT/SIGTERM begins
STOP_GRACE_SECONDS = 60  # how long a stopped study waits for its workers to reach a safe point before killing them


@dataclass
class StudySettings:
    """What a study optimises and how; saved in ``study.json`` and in the Optuna study's user attrs."""

    kind: str = "search"  # search (a sampler explores a space) | sweep (one factor at a time, grid of runs)
    objectives: tuple[str, ...] = ("auc",)  # auc and/or latency
    protocol: str = "holdout"  # holdout: best validation AUC of one run | kfold: mean best AUC over folds
    folds: int = 5  # k for protocol kfold
    sampler: str = "tpe"  # tpe | random | grid
    pruner: str = "median"  # median | hyperband | none (pruning needs one objective)
    startup_trials: int = 3  # trials finished before pruning (and TPE) start
    trial_minutes: float = 0.0  # per-trial training budget (train.time_budget_minutes; 0 = the config's own)
    seed: int = 0  # seeds the sampler (worker w of the session that creates the study uses seed + w)

    def check(self) -> StudySettings:
        """Raise a one-line ConfigError naming the bad parameter; return self."""
        for name, value, allowed in (("sampler", self.sampler, SAMPLERS), ("pruner", self.pruner, PRUNERS),
                                     ("protocol", self.protocol, PROTOCOLS), ("kind", self.kind, ("search", "sweep"))):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}; got {value!r}{did_you_mean(value, allowed)}")
        objectives = tuple(self.objectives)
        if not objectives or len(set(objectives)) != len(objectives) or "auc" not in objectives:
            raise ConfigError(f"objectives must include auc, each once (e.g. auc or auc,latency); got {','.join(objectives)!r}")
        for objective in objectives:
            if objective not in OBJECTIVES:
                raise ConfigError(f"objectives must be among {list(OBJECTIVES)}; got {objective!r}{did_you_mean(objective, OBJECTIVES)}")
        if self.protocol == "kfold" and self.folds < 2:
            raise ConfigError(f"folds must be >= 2 for protocol kfold; got {self.folds}")
        if not self.trial_minutes >= 0:  # also NaN
            raise ConfigError(f"trial_minutes must be >= 0 (0 = the config's own budget); got {self.trial_minutes}")
        self.objectives = objectives
        return self

    @property
    def directions(self) -> list[str]:
        return ["maximize" if objective == "auc" else "minimize" for objective in self.objectives]

    @property
    def prunes(self) -> bool:
        """Optuna prunes single-objective studies only; a sweep trains every run in full."""
        return self.pruner != "none" and len(self.objectives) == 1 and self.kind == "search"


# ----------------------------------------------------------------------------------------------
# Samplers and pruners.


def _sampler(settings: StudySettings, task: SearchSpace | SweepPlan, seed: int):
    import optuna

    # A grid sampler maps trial number -> grid point through a permutation drawn from its seed, so
    # every worker and every session of one study must use the same seed (settings.seed); with one
    # seed per worker, two workers ran the same sweep run and others were never run.
    if isinstance(task, SweepPlan):
        return optuna.samplers.GridSampler({"run": list(range(len(task.runs)))}, seed=settings.seed)
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler(task.grid(), seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(settings.startup_trials, 1), multivariate=True,
                                      group=True, constant_liar=True)


def _pruner(settings: StudySettings):
    import optuna

    if not settings.prunes:
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=1)


# ----------------------------------------------------------------------------------------------
# One trial.


class _Reporter:
    """The ``on_epoch`` callback of a trial's training: reports validation AUC, prunes when told."""

    def __init__(self, trial, prune: bool):
        self.trial = trial
        self.prune = prune
        self.step = 0  # one step per epoch, counted across the folds of a k-fold trial

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        import optuna

        stopping.check()  # a safe point: between epochs
        self.step += 1
        auc = float(row["val_auc"])
        if not self.prune or math.isnan(auc):
            return
        self.trial.report(auc, self.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: val_auc {auc:.4f} below the pruner's bar")


def _latency_ms(checkpoint: Path, threads: int) -> float:
    """Inference milliseconds per patch of a checkpoint: best of 3 timed batches of LATENCY_BATCH patches."""
    import numpy as np
    import torch

    from pcamlab.runtime import load_predictor

    if threads > 0:
        torch.set_num_threads(threads)
    predictor = load_predictor(checkpoint)
    size = int(predictor.contract.patch_size)
    images = np.random.default_rng(0).integers(0, 256, size=(LATENCY_BATCH, size, size, 3), dtype=np.uint8)
    predictor.predict_proba(images[:8], batch_size=LATENCY_BATCH)  # warm-up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        predictor.predict_proba(images, batch_size=LATENCY_BATCH)
        timings.append(time.perf_counter() - start)
    return 1000.0 * min(timings) / LATENCY_BATCH


@dataclass
class _Job:
    """Everything a worker process needs (picklable)."""

    out_dir: str
    storage_url: str
    study_name: str
    settings: StudySettings
    base: dict[str, Any]
    task: SearchSpace | SweepPlan
    target: int  # finished trials the study should hold
    deadline: float | None  # time.time() after which no new trial starts
    heartbeat_seconds: int
    threads: int
    worker: int = 0
    seed_offset: int = 0  # 0 for the session that created the study; else distinct, so no two draw the same

    @property
    def seed(self) -> int:
        return self.settings.seed + self.worker + self.seed_offset


def _trial_config(job: _Job, trial) -> tuple[Any, dict[str, Any]]:
    """The trial's RunConfig and the values that define it (sampled params, or the sweep run)."""
    if isinstance(job.task, SweepPlan):
        run = job.task.runs[trial.suggest_int("run", 0, len(job.task.runs) - 1)]
        values = job.task.apply(job.base, run)
        described = {"knob": run.knob, "value": run.value, "seed": run.seed}
    else:
        described = job.task.sample(trial)
        values = job.task.apply(job.base, described)
    train = values.setdefault("train", {})
    if job.settings.trial_minutes > 0:
        train["time_budget_minutes"] = job.settings.trial_minutes
        # the budget rule of every budget run (pcamlab.train.early_stopping): the trial's schedule decays over
        # its budget, and patience counts only once the learning rate has decayed, on a machine of any speed
        if train.get("scheduler", "cosine") in ("cosine", "onecycle") and not train.get("deterministic"):
            train["schedule_over"] = "budget"
    if job.threads > 0 and not train.get("threads"):
        train["threads"] = job.threads
    return config_from_dict(values), described


def _objective(job: _Job, log: Callable[[str], None]):
    import optuna

    from pcamlab.train.loop import train
    from pcamlab.train.protocols import run_kfold

    settings = job.settings

    def objective(trial):
        config, described = _trial_config(job, trial)
        run_dir = Path(job.out_dir) / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir.relative_to(job.out_dir)))
        trial.set_user_attr("worker", _worker_name(os.getpid()))
        if isinstance(job.task, SweepPlan):
            for key, value in described.items():
                trial.set_user_attr(key, value)
        retried = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        if isinstance(job.task, SweepPlan):
            twin = _earlier_twin(trial, retried)
            if twin is not None:  # two sessions queued the same run at once: train it once
                raise optuna.TrialPruned(f"sweep run already taken by trial {twin}")
        log(f"trial {trial.number} started" + (f" (retry of trial {retried})" if retried is not None else "")
            + f": {_describe(described)}")
        reporter = _Reporter(trial, settings.prunes)
        record = {"number": trial.number, "values": described, "state": "RUNNING"}
        try:
            if settings.protocol == "kfold":
                result = run_kfold(config, run_dir, folds=settings.folds, groups="auto", progress=False, on_epoch=reporter,
                                   on_step=_safe_point)
                aucs = [float(row["val_auc"]) for row in result["folds"]]
                auc = float(result["metrics"]["val_auc"]["mean"])
                trial.set_user_attr("fold_aucs", aucs)
                checkpoint = RunFolder(run_dir).fold(1, 1).best
                summary = result["folds"][0]
                epochs_run = sum(int(row["epochs_run"]) for row in result["folds"])
                wall = sum(float(row["wall_seconds"]) for row in result["folds"])
            else:
                summary = train(config, run_dir, progress=False, on_epoch=reporter, on_step=_safe_point)
                auc = float(summary["best"]["val_auc"])
                checkpoint = Path(summary["checkpoints"]["best"] or summary["checkpoints"]["last"])
                epochs_run, wall = int(summary["epochs_run"]), float(summary["wall_seconds"])
                trial.set_user_attr("parameters", int(summary["parameters"]))
                trial.set_user_attr("flops_per_patch", int(summary["flops_per_patch"]))
        except optuna.TrialPruned as pruned:
            write_text_atomic(run_dir / "trial.json", json.dumps({**record, "state": "PRUNED", "reason": str(pruned)}, indent=2))
            raise
        except KeyboardInterrupt as stop:  # SIGINT/SIGTERM: Optuna fails the trial, the worker re-queues it
            trial.set_user_attr("error", f"{INTERRUPTED}{signal.Signals(getattr(stop, 'signum', signal.SIGINT)).name}); "
                                         "re-queued with the same parameters")
            raise
        except PcamlabError as error:
            trial.set_user_attr("error", str(error))
            if run_dir.is_dir():
                write_text_atomic(run_dir / "trial.json", json.dumps({**record, "state": "FAIL", "reason": str(error)}, indent=2))
            raise
        trial.set_user_attr("val_auc", auc)
        if "error" in trial.user_attrs:  # a retry carries its failed original's error: this one did not fail
            trial.set_user_attr("error", None)
        trial.set_user_attr("best_epoch", int(summary["best_epoch"]))
        trial.set_user_attr("epochs_run", epochs_run)
        trial.set_user_attr("train_seconds", wall)
        if math.isnan(auc):
            raise RunError(f"trial {trial.number} has no validation AUC (one class only in the validation split?)")
        values: list[float] = [auc]
        if "latency" in settings.objectives:
            latency = _latency_ms(checkpoint, job.threads)
            trial.set_user_attr("latency_ms", latency)
            values.append(latency)
        write_text_atomic(run_dir / "trial.json", json.dumps({**record, "state": "COMPLETE", "objectives": values}, indent=2))
        return values[0] if len(values) == 1 else tuple(values)

    return objective


def _worker_name(pid: int) -> str:
    """``host:pid``, the ``worker`` attribute of the trials a process runs."""
    return f"{socket.gethostname()}:{pid}"


def _safe_point(model, epochs: float) -> bool:
    """The ``on_step`` of a trial's training: a safe point between steps (raises Stopped after a signal)."""
    stopping.check()
    return False


def _describe(described: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_short(value)}" for key, value in described.items()) or "base config"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------
# Workers.


def _load_study(job: _Job):
    import optuna

    storage = open_storage(job.storage_url, job.heartbeat_seconds)
    return optuna.load_study(study_name=job.study_name, storage=storage,
                             sampler=_sampler(job.settings, job.task, job.seed), pruner=_pruner(job.settings))


def _progress_line(study, job: _Job, started: float, durations: list[float]) -> str:
    counts = trial_counts(study)
    best = _best_text(study, job.settings)
    left = []
    if job.deadline is not None:
        left.append(f"{max(job.deadline - time.time(), 0) / 60:.1f} min of the study budget left")
    remaining = max(job.target - counts["finished"], 0)
    if durations and remaining:
        left.append(f"~{remaining * (sum(durations) / len(durations)) / 60:.1f} min per worker for {remaining} more")
    return (f"[{counts['finished']}/{job.target} finished: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed] best {best}" + (f"; {'; '.join(left)}" if left else ""))


def _best_text(study, settings: StudySettings) -> str:
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return "none yet"
    if len(settings.objectives) == 1:
        top = max(complete, key=lambda t: t.value)
        return f"val_auc {top.value:.4f} (trial {top.number})"
    front = study.best_trials
    top = max(front, key=lambda t: t.values[0])
    return f"{len(front)} on the Pareto front, top val_auc {top.values[0]:.4f} at {top.values[1]:.2f} ms/patch (trial {top.number})"


def _work(job: _Job, log: Callable[[str], None]) -> None:
    """One worker: run trials until the study holds ``target`` finished trials or the deadline passes.

    Stopping is a flag (:mod:`pcamlab.stopping`) checked between trials, between a trial's training
    steps and epochs, and while waiting: SIGINT/SIGTERM fail the running trial (never left RUNNING) and
    re-queue it with the same parameters, then raise :class:`~pcamlab.stopping.Stopped`.
    """
    from optuna.storages import fail_stale_trials

    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with stopping.safe_points():
        if job.threads > 0:
            import torch

            torch.set_num_threads(job.threads)
        study = _load_study(job)
        objective = _objective(job, log)
        durations: list[float] = []
        started = time.time()

        def finished(study, trial) -> None:
            if trial.datetime_start and trial.datetime_complete:
                durations.append((trial.datetime_complete - trial.datetime_start).total_seconds())
            if trial.state.name == "COMPLETE":
                what = "val_auc " + " / ".join(f"{v:.4f}" if i == 0 else f"{v:.2f} ms/patch" for i, v in enumerate(trial.values))
            elif trial.state.name == "PRUNED":
                what = f"pruned after {len(trial.intermediate_values)} epochs"
            else:
                what = f"failed: {trial.user_attrs.get('error', 'see the log above')}"
            log(f"trial {trial.number} {what}  {_progress_line(study, job, started, durations)}")

        sweep = isinstance(job.task, SweepPlan)
        try:
            while True:
                stopping.check()  # a safe point: between trials
                fail_stale_trials(study)
                counts = trial_counts(study)
                # a sweep is done when every run has finished once (duplicates do not count), a search at its target
                if (not _sweep_runs_to_queue(study, job.task, finished_only=True)) if sweep else counts["finished"] >= job.target:
                    break
                if job.deadline is not None and time.time() >= job.deadline:
                    log(f"study budget reached: no new trial starts ({counts['finished']} of {job.target} finished)")
                    break
                all_taken = (not _sweep_runs_to_queue(study, job.task)) if sweep else counts["finished"] + counts["RUNNING"] >= job.target
                if all_taken and counts["WAITING"] == 0:
                    _wait(job.heartbeat_seconds)  # the last trials run elsewhere: wait until they end or go stale
                    continue
                study.optimize(objective, n_trials=1, catch=(PcamlabError,), callbacks=[finished], gc_after_trial=True)
        except KeyboardInterrupt:
            _requeue_interrupted(study, {_worker_name(os.getpid())}, log)
            raise


def _wait(seconds: float) -> None:
    """Sleep ``seconds``, checking for a stop request every 0.2 s."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        stopping.check()
        time.sleep(min(0.2, max(end - time.monotonic(), 0.0)))


def _retry_callback():
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RetryHeartbeatStaleTrialCallback(max_retry=2)


def _requeue_interrupted(study, workers: set[str] | None, log: Callable[[str], None]) -> None:
    """Queue a copy (same parameters) of each trial a signal stopped (of ``workers`` only, unless None), once."""
    from optuna.trial import TrialState

    retry = _retry_callback()
    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if (str(trial.user_attrs.get("error", "")).startswith(INTERRUPTED) and trial.number not in retried
                and (workers is None or trial.user_attrs.get("worker") in workers)):
            retry(study, trial)
            log(f"trial {trial.number} was interrupted: re-queued with the same parameters")


def _sweep_runs_to_queue(study, task: SweepPlan, finished_only: bool = False) -> list[int]:
    """Sweep runs (indices into ``task.runs``) with no finished trial (nor, unless ``finished_only``, a running or queued one)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED) + (() if finished_only else (TrialState.RUNNING, TrialState.WAITING))
    taken = set()
    for trial in study.get_trials(deepcopy=False, states=states):
        run = trial.params.get("run", trial.system_attrs.get("fixed_params", {}).get("run"))
        if run is not None:
            taken.add(int(run))
    return [index for index in range(len(task.runs)) if index not in taken]


def _earlier_twin(trial, retried: int | None) -> int | None:
    """The number of another trial of the same sweep run that finished, or started before this one."""
    from optuna.trial import TrialState

    run = trial.params.get("run")
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != trial.number and other.number != retried and other.params.get("run") == run and (
                other.state == TrialState.COMPLETE or other.number < trial.number):
            return other.number
    return None


def _queue_sweep_runs(study, task: SweepPlan, log: Callable[[str], None]) -> None:
    """Queue every sweep run not yet finished, running or queued: all seeds of the first seed first.

    Workers take queued trials one at a time from the storage (Optuna's WAITING trials: a database
    transaction hands each to one worker), so no run is trained twice and none is skipped, on one
    machine or many, and a resumed sweep queues only what it still lacks.
    """
    missing = _sweep_runs_to_queue(study, task)
    order = sorted(missing, key=lambda index: (task.seeds.index(task.runs[index].seed), index))
    for index in order:
        study.enqueue_trial({"run": index})
    if missing and len(missing) < len(task.runs):
        log(f"queued the {len(missing)} sweep runs not yet finished or running")


def _worker_entry(job: _Job, log: Callable[[str], None], stop_signal, parent: int) -> None:
    """A worker process: SIGINT/SIGTERM (its own, or the study's via ``stop_signal``) stop it at a safe point.

    Exits with 128 + the signal number after failing and re-queueing its running trial. A worker whose
    parent is gone (killed) stops the same way instead of running on unsupervised.
    """
    stopping.install()

    def follow_parent() -> None:  # the parent asks through shared memory: a second signal would mean "at once"
        while True:
            if stop_signal.value:
                stopping.request(stop_signal.value)
                return
            if os.getppid() != parent:
                stopping.request(signal.SIGTERM)
                return
            time.sleep(0.2)

    threading.Thread(target=follow_parent, name="pcamlab-follow-parent", daemon=True).start()
    try:
        _work(job, log)
    except KeyboardInterrupt as stop:
        sys.exit(128 + getattr(stop, "signum", signal.SIGINT))


# ----------------------------------------------------------------------------------------------
# The study folder.


def _lock(out_dir: Path):
    """An exclusive lock on the study folder for this process's life (released by the OS if it dies)."""
    handle = open(out_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderError(f"another pcamlab tune is running on study folder {str(out_dir)!r}; wait for it or stop it first") from None
    return handle


def _fail_orphans(study, storage, log, workers: set[str] | None = None) -> None:
    """Fail and re-queue trials a stopped study left RUNNING (their process is gone), and interrupted ones.

    ``workers``: only the trials of these ``host:pid`` workers (a shared database where other machines
    still run theirs); None: every RUNNING trial (the local storage, whose folder lock proves them orphaned).
    """
    from optuna.trial import TrialState

    retry = _retry_callback()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if workers is not None and trial.user_attrs.get("worker") not in workers:
            continue
        storage.set_trial_user_attr(trial._trial_id, "error", "its process stopped mid-trial; re-queued")
        if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            retry(study, storage.get_trial(trial._trial_id))
            log(f"trial {trial.number} was left running by the stopped study: marked failed and re-queued")
    _requeue_interrupted(study, workers, log)


def run_study(
    base: dict[str, Any],
    space_file: str | Path,
    out_dir: str | Path,
    settings: StudySettings | None = None,
    *,
    trials: int | None = None,
    minutes: float = 0.0,
    workers: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    heartbeat_seconds: int = 10,
    threads: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Create a study folder and run a search (or a sweep) on Optuna; write its outputs.

    Args:
        base: nested plain values of the base config (``config_to_dict(load_config(...))``).
        space_file: a search space YAML (``settings.kind`` search) or a sweep plan (sweep).
        out_dir: the study folder to create (must not hold a study: use :func:`resume_study`).
        settings: objectives, protocol, sampler, pruner, per-trial budget (defaults: TPE, median pruner,
            hold-out AUC).
        trials: finished trials the study should hold (default 20; a sweep: all its runs; grid: the
            grid's size at most).
        minutes: study budget in minutes: no trial starts after it (0 = none).
        workers: trial processes on this machine, sharing the storage.
        storage: a database URL (PostgreSQL for several machines); default: ``study.db`` in the folder.
            With a URL whose database already holds ``study_name``, this folder's workers join it.
        study_name: the study's name in the storage (default: the folder's name).
        heartbeat_seconds: trial heartbeat; a trial silent for 3x this is failed and re-queued.
        threads: torch threads per worker (0: the cores divided among the workers).
        log: called with one line per event (the CLI passes ``print``); with ``workers > 1`` it runs in
            each worker process, so it must be picklable (``print`` and module-level functions are).

    Returns:
        The study outputs of :func:`pcamlab.tune.report.write_outputs` (paths, counts, best trial).

    Raises:
        ConfigError: bad space, settings or parameters (one line). RunFolderError: the folder holds a
            study or another tune runs on it. RunError: the storage cannot be reached.

    Example:
        >>> base = config_to_dict(load_config("configs/tune/base-tiny.yaml"))
        >>> result = run_study(base, "configs/tune/default.yaml", "studies/first", trials=10)
        >>> result["best"]["val_auc"]
    """
    settings = (settings or StudySettings()).check()
    out_dir = Path(out_dir)
    _check_budget(trials, minutes, workers)
    task = load_sweep(space_file, base) if settings.kind == "sweep" else load_space(space_file, base)
    if settings.kind == "search" and settings.sampler == "grid":
        task.grid()  # floats without a step fail here, before anything is written
    check_heartbeat(heartbeat_seconds)
    if storage:  # a bad URL or an unreachable server is said before the study folder exists
        open_storage(storage, heartbeat_seconds)
    if out_dir.exists() and any(out_dir.iterdir()):
        if (out_dir / STUDY_FILE).is_file():
            raise RunFolderError(f"{str(out_dir)!r} already holds a study; resume it (resume_study, resume=True) or "
                                 "choose another out_dir", parameters=("resume", "out_dir"))
        raise RunFolderError(f"study folder {str(out_dir)!r} is not empty; choose a new folder")
    with stopping.safe_points():  # a signal while the folder is written stops at the first check: whole or resumable
        return _create_and_run(base, space_file, out_dir, settings, task, trials, minutes, workers, storage, study_name,
                               heartbeat_seconds, threads, log)


def _create_and_run(base, space_file, out_dir, settings, task, trials, minutes, workers, storage, study_name,
                    heartbeat_seconds, threads, log):
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir)
    url = storage or local_storage_url(out_dir)
    name = study_name or out_dir.resolve().name
    record = {
        "study_name": name,
        "storage": redacted_url(url) if storage else "study.db",
        "settings": _settings_dict(settings),
        "trials": trials,
        "space_file": str(space_file),
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    write_text_atomic(out_dir / "base.yaml", yaml.safe_dump(base, sort_keys=False))
    write_text_atomic(out_dir / "space.yaml", yaml.safe_dump(task.raw, sort_keys=False))
    write_text_atomic(out_dir / STUDY_FILE, json.dumps(record, indent=2))
    try:
        return _run(out_dir, url, name, settings, base, task, trials, minutes, workers, heartbeat_seconds, threads,
                    log or _quiet, resume=False)
    finally:
        lock.close()


def resume_study(
    out_dir: str | Path,
    *,
    trials: int | None = None,
    minutes: float = 0.0,
    workers: int = 1,
    storage: str | None = None,
    heartbeat_seconds: int = 10,
    threads: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Continue a stopped study in ``out_dir`` (its settings, base config and space are the folder's).

    Trials left running by the stopped study are failed and re-queued with the same parameters (local
    storage at once; a shared database once their heartbeat is stale). ``trials`` raises the target.

    Raises:
        RunFolderError: ``out_dir`` holds no study. ConfigError: the study lives in a database and
            ``storage`` (its URL with the password, which the folder does not keep) is missing.
    """
    out_dir = Path(out_dir)
    path = out_dir / STUDY_FILE
    if not path.is_file():
        raise RunFolderError(f"nothing to resume in {str(out_dir)!r}: it has no {STUDY_FILE}; start a new study instead")
    _check_budget(trials, minutes, workers)
    record = json.loads(path.read_text())
    settings = StudySettings(**{**record["settings"], "objectives": tuple(record["settings"]["objectives"])}).check()
    if record["storage"] != "study.db" and not storage:
        raise ConfigError(f"study {record['study_name']!r} lives in {record['storage']}; pass that storage URL (with its password) to resume")
    base = yaml.safe_load((out_dir / "base.yaml").read_text())
    space_path = out_dir / "space.yaml"
    task = load_sweep(space_path, base) if settings.kind == "sweep" else load_space(space_path, base)
    lock = _lock(out_dir)
    try:
        with stopping.safe_points():
            return _run(out_dir, storage or local_storage_url(out_dir), record["study_name"], settings, base, task,
                        trials or record.get("trials"), minutes, workers, heartbeat_seconds, threads,
                        log or _quiet, resume=True)
    finally:
        lock.close()


def _quiet(line: str) -> None:
    """The default ``log``: says nothing (a module-level function, so worker processes can receive it)."""


def _check_budget(trials: int | None, minutes: float, workers: int) -> None:
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise ConfigError(f"trials must be an integer >= 1; got {trials!r}")
    if not minutes >= 0:  # also NaN
        raise ConfigError(f"minutes must be >= 0 (0 = no study budget); got {minutes!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1; got {workers!r}")


def _settings_dict(settings: StudySettings) -> dict[str, Any]:
    values = dataclasses.asdict(settings)
    values["objectives"] = list(settings.objectives)
    return values


def _run(out_dir, url, name, settings, base, task, trials, minutes, workers, heartbeat_seconds, threads, log, *, resume):
    """Open the study in its storage, run the workers, write the outputs; signals stop it at safe points."""
    import optuna

    storage = open_storage(url, heartbeat_seconds)
    identity = {"kind": settings.kind, "objectives": list(settings.objectives), "protocol": settings.protocol,
                "space": task.raw}
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=settings.directions, load_if_exists=True)
    except ValueError as error:  # e.g. the name exists with other directions
        raise RunError(f"study {name!r} in {redacted_url(url)}: {error}") from None
    known = study.user_attrs.get("pcamlab")
    if known is None:
        study.set_user_attr("pcamlab", identity)
        study.set_user_attr("base", base)
        study.set_user_attr("settings", _settings_dict(settings))
    elif known != identity:
        raise ConfigError(
            f"study {name!r} in {redacted_url(url)} was made with another space, objectives or protocol; "
            "use the same space_file, objectives and protocol to join it, or another study_name",
            parameters=("space_file", "objectives", "protocol", "study_name"),
        )
    elif not resume:
        log(f"joining study {name!r} in {redacted_url(url)} ({len(study.trials)} trials so far)")
    if resume and url == local_storage_url(out_dir):
        _fail_orphans(study, storage, log)
    if isinstance(task, SweepPlan) and (known is None or resume):  # a joining worker takes what is queued
        _queue_sweep_runs(study, task, log)
    # a resumed or joining session must not replay the first session's random draws
    seed_offset = 0 if known is None else 7919 * len(study.trials) + os.getpid()
    size = len(task.runs) if isinstance(task, SweepPlan) else None
    if settings.kind == "search" and settings.sampler == "grid":
        size = math.prod(len(values) for values in task.grid().values())
    target = size if trials is None and size is not None else (trials or 20)
    if size is not None:
        target = min(target, size)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    deadline = time.time() + 60 * minutes if minutes > 0 else None
    job = _Job(str(out_dir), url, name, settings, base, task, target, deadline, heartbeat_seconds, threads, 0, seed_offset)
    what = (f"sweep of {len(task.runs)} runs ({sum(map(len, task.knobs.values()))} values of {len(task.knobs)} knobs + the base, "
            f"x {len(task.seeds)} seeds)") if isinstance(task, SweepPlan) else (
        f"{settings.sampler} search of {len(task.params)} parameters for {target} trials")
    log(f"study {name!r} ({redacted_url(url) if url != local_storage_url(out_dir) else out_dir / 'study.db'}): {what}; "
        f"objective {' + '.join(settings.objectives)} on {settings.protocol}"
        + (f", {settings.pruner} pruning" if settings.prunes else "")
        + (f", {minutes:g} min budget" if minutes else "") + f"; {workers} worker(s) x {threads} threads")
    if known is None and isinstance(task, SearchSpace) and settings.sampler != "grid":
        point, reason = task.base_point(base)
        if point is None:
            log(f"the base config is not a point of the space ({reason}): no base trial to compare with")
        else:  # trial 0 scores the base config itself: the reference a better recipe must beat
            study.enqueue_trial(point, user_attrs={"base": True})
            log("trial 0 is the base config (the reference the search must beat)")
    stopping.check()  # a safe point: the study is recorded, no trial runs yet
    if workers == 1:
        _work(job, log)
    else:
        _run_workers(job, workers, storage, local=url == local_storage_url(out_dir), log=log)
    study = optuna.load_study(study_name=name, storage=storage)
    return write_outputs(study, out_dir, settings, base, task, log=log)


def _run_workers(job: _Job, workers: int, storage, *, local: bool, log: Callable[[str], None]) -> None:
    """Run ``workers`` worker processes until they end; a stop request reaches each of them once.

    SIGINT/SIGTERM to this process (or a terminal's Ctrl-C, which reaches every process of its group)
    asks every worker through shared memory, not a second signal (which would mean "stop at once"):
    each fails and re-queues its running trial at its next safe point and exits. A worker still running
    after :data:`STOP_GRACE_SECONDS` is killed and its trial failed and re-queued here, so no trial is
    left RUNNING.

    Raises:
        Stopped: after SIGINT/SIGTERM, once every worker has ended.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    import optuna

    context = multiprocessing.get_context("spawn")
    stop_signal = context.Value("i", 0, lock=False)
    processes = [context.Process(target=_worker_entry, args=(dataclasses.replace(job, worker=index), log, stop_signal, os.getpid()),
                                 daemon=False) for index in range(workers)]
    with stopping.children_ignore_interrupt():  # a Ctrl+C while they import must not half-start them
        for process in processes:
            process.start()
    try:
        while any(process.is_alive() for process in processes):
            stopping.check()  # a safe point: while the workers run
            wait([process.sentinel for process in processes if process.is_alive()], timeout=0.2)
    except KeyboardInterrupt as stop:
        stop_signal.value = getattr(stop, "signum", signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            process.join(timeout=max(deadline - time.monotonic(), 0.1))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        study = optuna.load_study(study_name=job.study_name, storage=storage)
        _fail_orphans(study, storage, log, None if local else {_worker_name(process.pid) for process in processes})
        raise
    stopped = [process.exitcode for process in processes if process.exitcode in (128 + signal.SIGINT, 128 + signal.SIGTERM)]
    bad = [process.exitcode for process in processes if process.exitcode not in (0, None) and process.exitcode not in stopped]
    if stopped:
        log(f"{len(stopped)} worker process(es) were stopped by a signal (exit codes {stopped}); their trials were re-queued")
    if bad:
        log(f"{len(bad)} worker process(es) ended abnormally (exit codes {bad}); their trials were re-queued")


def check_data(base: dict[str, Any]) -> None:
    """Open the base config's training split once, so a bad data path fails before any trial runs.

    Raises:
        DataError / ConfigError: the data cannot be opened (one line with the fix).
    """
    from pcamlab.data.source import open_run_split

    config = config_from_dict(base)
    open_run_split(config.data, config.data.train_split, path=config.data.path)  # the --data given: its own error


def write_study_outputs(out_dir: str | Path, *, storage: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rewrite ``trials.csv``, ``best.yaml`` and ``report.html`` of a study folder from its storage.

    For a study shared by several machines, any of them can refresh the outputs while others run.

    Raises:
        RunFolderError: no study in ``out_dir``. ConfigError: a database study without its ``storage`` URL.
    """
    import optuna

    out_dir = Path(out_dir)
    path = out_dir / STUDY_FILE
    if not path.is_file():
        raise RunFolderError(f"{str(out_dir)!r} holds no study ({STUDY_FILE} is missing); pass a folder written by pcamlab tune")
    record = json.loads(path.read_text())
    if record["storage"] != "study.db" and not storage:
        raise ConfigError(f"study {record['study_name']!r} lives in {record['storage']}; pass that storage URL (with its password)")
    settings = StudySettings(**{**record["settings"], "objectives": tuple(record["settings"]["objectives"])}).check()
    base = yaml.safe_load((out_dir / "base.yaml").read_text())
    task = load_sweep(out_dir / "space.yaml", base) if settings.kind == "sweep" else load_space(out_dir / "space.yaml", base)
    study = optuna.load_study(study_name=record["study_name"], storage=open_storage(storage or local_storage_url(out_dir)))
    return write_outputs(study, out_dir, settings, base, task, log=log)
