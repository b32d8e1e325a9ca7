"""The training loop: ``train()`` read top to bottom, set-up, epochs, end.

``train(config, out_dir)`` opens the data (:mod:`.inputs`), builds the model and its optimiser
(:mod:`.model_setup`), and for each epoch trains (:func:`.epoch.train_one_epoch`), validates
(:func:`.epoch.validate`), logs a row to ``history.csv`` and TensorBoard, and saves ``last.safetensors``
(every epoch), ``best.safetensors`` (when the monitored value improves) and ``resume.pt``
(:mod:`.checkpointing`). The rules with state across epochs live in small objects the loop asks:
the crop schedule (:class:`.crops.CropSchedule`), the best epoch and early stopping
(:class:`.early_stopping.EarlyStopping`, with the budget rule), the learning rate
(:class:`.schedule.LearningRate`), the weight average (:class:`.ema.ModelEma`), the average of the decayed
tail's epochs (:class:`.swa.TailAverage`, ``train.swa_lr_fraction``: validated after the last epoch, written
to ``swa.safetensors`` and to ``best.safetensors`` when it beats the best epoch) and the clock
(:class:`.clock.RunClock`).

A finished run folder is never overwritten: a new run needs a new ``out_dir``; ``resume=True``
continues an interrupted one from its last completed epoch and ends with the same weights as a run
that was never interrupted (a run interrupted before its first epoch ended starts again from epoch 1).
``continue_from=RUN`` trains a finished run further, up to a larger ``train.epochs``, into a new
``out_dir``: RUN's files stay as they were. SIGINT/SIGTERM stop the run between two steps
(:mod:`pcamlab.stopping`); the resume state of the last finished epoch stays, and the log says where.

Launched by ``torchrun --nproc-per-node N``, every process trains on its share of each global batch
(``train.batch_size`` patches per step in total) with DistributedDataParallel; only rank 0 writes logs
and checkpoints. The processes follow one clock, rank 0's, so a time budget and a schedule over it
give every process the same learning rate and the same last step.

Example:
    >>> from pcamlab.config import load_config
    >>> result = train(load_config("configs/default.yaml"), "runs/first")
    >>> result["best"]["val_auc"]
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcamlab import stopping
from pcamlab.config import RunConfig
from pcamlab.fileio import write_json_atomic
from pcamlab.runfolder import RunFolder
from pcamlab.train.checkpointing import HISTORY_COLUMNS, prepare_run_dir
from pcamlab.train.crops import CROP_BUDGET_SHARE, crops_in_epoch
from pcamlab.train.epoch import compute_loss
from pcamlab.train.model_setup import split_head, split_pretrained
from pcamlab.train.schedule import learning_rate_factor

__all__ = ["train", "HISTORY_COLUMNS", "learning_rate_factor", "crops_in_epoch", "compute_loss", "split_head",
           "split_pretrained", "prepare_run_dir", "torch_settings", "CROP_BUDGET_SHARE"]


@contextlib.contextmanager
def torch_settings(train_config) -> Any:
    """Thread count and determinism flags for one run, put back as they were afterwards.

    ``train.threads`` > 0 sets torch's CPU threads (a float sum split over another number of threads
    rounds differently, so runs compare bit for bit only at the same count). ``train.deterministic``
    turns on deterministic algorithms (``torch.use_deterministic_algorithms``, warning where an op has
    none), oneDNN's deterministic mode (``torch.backends.mkldnn.deterministic``, which
    ``use_deterministic_algorithms`` does not set), cuDNN's, and cuBLAS's fixed workspace.
    """
    previous = (
        torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.mkldnn.deterministic,
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
    )
    try:
        if train_config.threads > 0:
            torch.set_num_threads(train_config.threads)
        if train_config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.mkldnn.deterministic = True
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        threads, deterministic, warn_only, mkldnn, cudnn, benchmark = previous
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.mkldnn.deterministic = mkldnn
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn, benchmark


def _in_torch_settings(function: Callable) -> Callable:
    """Run ``function(config, ...)`` inside :func:`torch_settings` of ``config.train``: no global state leaks."""

    @functools.wraps(function)
    def wrapper(config: RunConfig, *args: Any, **kwargs: Any) -> Any:
        with torch_settings(config.train):
            return function(config, *args, **kwargs)

    return wrapper


@_in_torch_settings
def train(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    continue_from: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    readers: tuple[Any, Any | None] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    on_step: Callable[[nn.Module, float], bool] | None = None,
    clock: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` and write a run folder.

    Args:
        config: the resolved run configuration.
        out_dir: the run folder to create (must not hold a run unless ``resume``).
        resume: continue an interrupted run in ``out_dir`` from its last completed epoch (from epoch 1
            when it was interrupted before its first epoch ended).
        continue_from: a finished run folder to train further, up to ``train.epochs`` (more than it
            ran), into the new ``out_dir``; its history, checkpoints and optimiser state are copied, the
            best checkpoint stays best until an epoch beats it, early-stopping patience starts afresh
            and the learning rate follows the schedule over the new ``train.epochs`` (for a cosine that
            had ended, a warm restart). The finished run is not touched.
        progress: show tqdm progress bars (on stderr).
        log: called with one human-readable line per event (the CLI passes ``print``).
        readers: ``(train_reader, valid_reader)`` to use instead of opening ``config.data``'s splits
            (cross-validation folds, train+valid for a final fit). ``valid_reader`` may be None: no
            validation, every epoch's weights are "best" and the run trains ``train.epochs`` epochs.
        on_epoch: called as ``on_epoch(epoch, row)`` after each epoch is logged and checkpointed (``row``
            is that epoch's ``history.csv`` row, ``val_auc`` a float). An exception it raises stops
            training and propagates (``pcamlab tune`` prunes a trial this way); the run folder then
            holds the epochs so far and no ``summary.json``.
        on_step: called after every optimiser step with the model that validation scores (the EMA
            model when ``train.ema_decay`` > 0) and the epochs done (fractional); returning True stops
            training like the time budget does (the partial epoch is validated and checkpointed).
            ``pcamlab.train.time_to_auc`` snapshots weights through it.
        clock: the clock the run reads, ``() -> seconds`` (default ``time.perf_counter``): the time budget,
            the budget schedule, the crop switch and the seconds logged. ``pcamlab.train.clock.scaled_clock(1/3)``
            simulates a machine 3x faster than this one.

    Returns:
        The run summary (also written to ``summary.json``); ``stopped_by`` is ``epochs``, ``early_stop``,
        ``time_budget`` or ``caller``, with ``stop_reason`` in words; with ``train.swa_lr_fraction``, ``swa``
        (epochs averaged, validation scores) and ``best_is_swa``.

    Raises:
        RunError: the output folder holds a run, training diverged, nothing to resume, or
            ``continue_from`` is not a finished run.
        DataError / ConfigError: bad data or configuration (one line with the fix), a batch size the
            model's batch-norm cannot train on, or a ``continue_from`` whose model differs from
            ``config.model`` or that ran ``train.epochs`` already.
        pcamlab.stopping.Stopped: SIGINT/SIGTERM (or ``stopping.request``) stopped the run between steps.
    """
    from pcamlab.config_ranges import check_combinations, check_ranges
    from pcamlab.models import build_model, check_model_memory, model_summary
    from pcamlab.runtime.device import resolve_precision
    from pcamlab.runtime.memory import reuse_freed_memory
    from pcamlab.train import checkpointing, distributed
    from pcamlab.train.clock import RunClock
    from pcamlab.train.crops import CropSchedule
    from pcamlab.train.early_stopping import EarlyStopping
    from pcamlab.train.ema import ModelEma
    from pcamlab.train.epoch import TrainingStep, check_stop, train_one_epoch, validate
    from pcamlab.train.inputs import open_training_data
    from pcamlab.train.model_setup import (
        check_batch_size, check_crop, load_pretrained_weights, make_optimizer, with_resolved_options,
    )
    from pcamlab.train.schedule import LearningRate, Plateau
    from pcamlab.train.swa import TailAverage

    run_clock = RunClock(config.train.time_budget_minutes, clock)
    out_dir = Path(out_dir)
    train_config = config.train
    check_ranges(config)  # configs built in code skip load_config's checks
    check_combinations(config)
    config = with_resolved_options(config)
    source_run = checkpointing.check_continue(config, Path(continue_from)) if continue_from is not None else None
    world = distributed.setup(train_config.device)
    run_clock.follow(world.broadcast)
    distributed.check_processes(config, world.size)
    main_process = world.rank == 0
    say = (log or (lambda line: None)) if main_process else (lambda line: None)
    progress = progress and main_process
    if main_process:
        prepare_run_dir(out_dir, resume, create=False)  # config.yaml, written once the data is read, creates it
        if resume:
            checkpointing.refuse_finished_or_kfold(out_dir)
    world.barrier()
    restore_from = source_run if source_run is not None else out_dir if (resume and RunFolder(out_dir).resume_state.is_file()) else None
    if resume and restore_from is None:
        say(f"{out_dir}: interrupted before its first epoch ended; nothing to keep, training again from epoch 1")
    if train_config.deterministic and train_config.time_budget_minutes > 0:
        say("note: train.time_budget_minutes follows the wall clock, so the last (partial) epoch of "
            "deterministic runs can end at different steps; every epoch before it repeats bit for bit")
    check_model_memory(config.model)  # before any weight: a width of 100,000 is one line, not an allocation
    torch.manual_seed(train_config.seed)
    model = build_model(config.model)  # built once: checks model.options; its weights come from the seed
    device = world.device
    precision = resolve_precision(train_config.precision, device)
    # 1.6x the training patches/s on a 2-core CPU: see pcamlab.runtime.memory
    memory_reused = reuse_freed_memory() if device.type == "cpu" else False

    # -- data, model, optimiser ------------------------------------------------------------------
    data = open_training_data(config, readers, say, progress)
    contract = data.contract
    model = model.to(device)
    size = model_summary(model, input_size=contract.patch_size,  # a model the patches are too small for: one line
                         described=f"model.name {config.model.name!r} with model.options {dict(config.model.options)}")
    transfer, loaded = load_pretrained_weights(model, config, say)
    if config.augment.crop_size:
        check_crop(model, config, contract.patch_size, device)
    if train_config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config, loaded)
    ema = ModelEma(model, train_config.ema_decay) if train_config.ema_decay > 0 else None
    tail = TailAverage(ema.model if ema is not None else model, train_config.swa_lr_fraction) if train_config.swa_lr_fraction > 0 else None
    trained = world.wrap(model)  # DistributedDataParallel when several processes, else the model itself
    steps_per_epoch = len(data.train_source)
    if train_config.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, train_config.max_steps_per_epoch)
    step = TrainingStep(
        config, model, trained, torch.compile(trained) if train_config.compile else trained, optimizer, ema,
        contract, device, precision, world, data.train_source, data.train_reader, steps_per_epoch,
        {id(p) for p in split_pretrained(model, loaded)[0]},
        tuple(side for side in (config.augment.crop_size, contract.patch_size) if side),
    )
    if step.local_batch < 2:  # one patch per process: can its batch-norm layers train on it?
        check_batch_size(config, world.size, step.smallest_batch)
    say(
        f"model: {config.model.name}, {size['parameters']:,} parameters, {size['flops'] / 1e6:.0f} MFLOPs/patch; "
        f"device {device}, precision {precision}, channels_last {train_config.channels_last}"
        + (f", {world.size} processes" if world.size > 1 else "")
        + (", malloc keeps freed memory" if memory_reused else "")
    )
    crops = CropSchedule(config)
    for note in crops.plan_notes(fresh=not resume and continue_from is None):
        say(note)

    # -- state, fresh or resumed -----------------------------------------------------------------
    early = EarlyStopping.from_config(config, data.monitor, data.validated)
    plateau = Plateau(config)
    learning_rate = LearningRate(config, run_clock.fraction, plateau)
    first_epoch, history = 1, []
    if restore_from is not None:
        state = checkpointing.read_resume_state(restore_from, data.validated)
        first_epoch = checkpointing.restore(state, restore_from, model=model, optimizer=optimizer, ema=ema, crops=crops,
                                            early=early, plateau=plateau, device=device,
                                            swa=tail if source_run is None else None)
        contract = contract.replace(threshold=float(state["threshold"]), threshold_source=config.evaluate.threshold_method)
        history = checkpointing.read_history(restore_from, first_epoch)
        if source_run is not None:
            early.restart_patience()  # the continuation gets its own early-stopping patience
            plateau.restart_patience()
            say(f"continuing {source_run} (finished after epoch {first_epoch - 1}) into {out_dir}, "
                f"up to epoch {train_config.epochs}; {source_run} is left as it is")
        else:
            run_clock.continue_after(float(state.get("elapsed_seconds", 0.0)))  # resume.pt files before it: 0
            say(f"resuming {out_dir} at epoch {first_epoch}"
                + (f" ({run_clock.earlier_seconds / 60:.1f} of {train_config.time_budget_minutes} budget minutes used)"
                   if run_clock.has_budget else ""))
    epoch_log = None
    if main_process:
        checkpointing.start_folder(out_dir, config, fresh_config=restore_from is None or source_run is not None,
                                   source_run=source_run)
        picture_samples = None  # fixed validation patches drawn in TensorBoard every epoch (RAM-cached data only)
        if data.validated and data.valid_source.kind == "ram":
            from pcamlab.explain.tensorboard import picture_samples as picture_samples_of
            from pcamlab.explain.tensorboard import pictures_unavailable

            picture_samples = picture_samples_of(data.valid_source.images.numpy(), data.valid_source.labels.numpy())
            missing = pictures_unavailable(model, picture_samples, contract) if len(picture_samples) else None
            if missing is not None:  # known before the first step, not after the first epoch
                say(f"note: no filter or Grad-CAM pictures in TensorBoard for this model ({missing})")
                picture_samples = None
        epoch_log = checkpointing.EpochLog(out_dir, history, first_epoch, picture_samples)
    # where a chosen threshold comes from, so threshold-dependent numbers can say so (and when they are optimistic)
    threshold_chosen_on = None
    if data.valid_reader is not None and config.evaluate.threshold_method != "fixed":
        threshold_chosen_on = {"data": str(data.valid_reader.root), "split": data.valid_reader.split,
                               "method": config.evaluate.threshold_method}
    stop_reason, stopped_by, epoch, skipped_steps = "all epochs done", "epochs", first_epoch - 1, 0
    saved_epoch = first_epoch - 1  # the epoch whose resume state is on disk (0: none)

    # -- epochs ----------------------------------------------------------------------------------
    try:
        with stopping.safe_points():
            for epoch in range(first_epoch, train_config.epochs + 1):
                epoch_start = run_clock.local()
                result = train_one_epoch(step, epoch, learning_rate=learning_rate, crops=crops, clock=run_clock,
                                         say=say, progress=progress, on_step=on_step)
                skipped_steps += result.skipped_steps
                scored = step.scored
                if tail is not None and not result.stopped_by_caller:
                    tail.after_epoch(scored, epoch=epoch, learning_rate_factor=learning_rate.factor,
                                     whole_epoch=not crops.cropping)
                if data.validated:
                    scores = validate(scored, data.valid_source, contract, device, lambda: check_stop(world))
                else:
                    scores = {"val_loss": float("nan"), "val_auc": float("nan"), "val_accuracy": float("nan")}
                row = {
                    "epoch": epoch,
                    "train_loss": round(result.train_loss, 6),
                    "val_loss": round(scores["val_loss"], 6),
                    "val_auc": round(scores["val_auc"], 6),
                    "val_accuracy": round(scores["val_accuracy"], 6),
                    "learning_rate": f"{learning_rate.value:.6g}",
                    "seconds": round(run_clock.local() - epoch_start, 3),
                    "images_per_second": round(result.seen / result.seconds, 1),
                }
                history.append(row)

                value = scores[data.monitor]
                # an epoch cut short (the budget ran out, the caller stopped it) is scored and may be best, but is
                # not a whole epoch without improvement: it never counts for patience
                counts = crops.counts_for_patience() and not (result.out_of_time or result.stopped_by_caller)
                improved = early.update(epoch, value, counts, learning_rate.factor)
                plateau.update(improved, counts)
                if improved and data.validated:
                    contract = _threshold_chosen(config, data, scores, contract)
                if main_process:
                    epoch_log.write(row, learning_rate.value, scores if data.validated else None)
                    metadata = {"epoch": epoch, data.monitor: value, "val_auc": scores["val_auc"], "val_loss": scores["val_loss"]}
                    if threshold_chosen_on is not None:
                        metadata["threshold_chosen_on"] = threshold_chosen_on
                    resume_state = checkpointing.resume_state(
                        epoch, model=model, optimizer=optimizer, ema=ema, crops=crops, early=early, plateau=plateau,
                        threshold=contract.threshold, validated=data.validated, elapsed_seconds=run_clock.run_seconds(),
                        swa=tail)
                    checkpointing.save_epoch(out_dir, scored, config, contract, metadata, improved, resume_state)
                    epoch_log.pictures(scored, epoch, contract)
                world.barrier()
                saved_epoch = epoch
                validation = (
                    f"val_loss {scores['val_loss']:.4f}  val_auc {scores['val_auc']:.4f}  val_acc@0.5 {scores['val_accuracy']:.4f}"
                    if data.validated else "no validation split (a final fit trains on all of it)"
                )
                say(f"epoch {epoch:>3}  train_loss {result.train_loss:.4f}  {validation}  "
                    f"{row['images_per_second']:.0f} img/s  {row['seconds']:.1f}s" + ("  *best" if improved and data.validated else ""))
                if on_epoch is not None:
                    on_epoch(epoch, row)
                if result.stopped_by_caller:  # what cut the epoch short ended the run, not patience
                    stop_reason, stopped_by = f"stopped by the caller during epoch {epoch}", "caller"
                    break
                if result.out_of_time:
                    stop_reason, stopped_by = (f"time budget of {train_config.time_budget_minutes} minutes reached "
                                               f"during epoch {epoch}"), "time_budget"
                    break
                reason = early.reason(crops.progressive)
                if reason is not None:
                    stop_reason, stopped_by = reason, "early_stop"
                    break
                check_stop(world)
    except KeyboardInterrupt as interrupt:  # Ctrl+C, or SIGTERM/SIGINT answered at a safe point (stopping.Stopped)
        say(_stopped_message(interrupt, out_dir, epoch, saved_epoch))
        raise
    finally:
        if epoch_log is not None:
            epoch_log.close()

    swa_result = None
    if tail is not None:
        swa_result, contract = _finish_tail_average(tail, config, out_dir, data, contract, early, device, world, say,
                                                     threshold_chosen_on)
    summary = _summary(config, out_dir, data, contract, early, history, size=size, device=device, world=world,
                       precision=precision, stop=(stop_reason, stopped_by, epoch), clock=run_clock,
                       learning_rate_factor=learning_rate.factor, skipped_steps=skipped_steps, source_run=source_run,
                       threshold_chosen_on=threshold_chosen_on, transfer=transfer, swa=swa_result)
    stop_reason = summary["stop_reason"]
    if main_process:
        write_json_atomic(RunFolder(out_dir).summary, summary)
    world.close()
    if not data.validated:
        say(f"done: {stop_reason}; no validation split, so the model is the last epoch's (epoch {epoch})")
    else:
        best_value = early.best_value
        best_text = "n/a" if best_value is None or (isinstance(best_value, float) and math.isnan(best_value)) else f"{best_value:.4f}"
        if swa_result is not None and swa_result["chosen"]:
            epochs = swa_result["epochs"]
            say(f"done: {stop_reason}; best {data.monitor} {swa_result['scores'][data.monitor]:.4f} from the average of "
                f"epochs {epochs[0]}-{epochs[-1]} (best.safetensors; the best single epoch: {best_text} at epoch {early.best_epoch})")
        else:
            say(f"done: {stop_reason}; best {data.monitor} {best_text} at epoch {early.best_epoch}")
    return summary


def _stopped_message(interrupt: KeyboardInterrupt, out_dir: Path, epoch: int, saved: int) -> str:
    """Where a stopped run left its resume state (of epoch ``saved``, 0 = none), and how to go on."""
    what = f"stopped by {interrupt.name}" if isinstance(interrupt, stopping.Stopped) else "interrupted"
    if saved <= 0:
        return (f"{what} during epoch {max(epoch, 1)}: no epoch finished, so there is no resume state; "
                f"`pcamlab train --resume --out {shlex.quote(str(out_dir))}` (resume=True from Python) starts it again from epoch 1")
    return (f"{what} in epoch {epoch}: the resume state of epoch {saved} is {RunFolder(out_dir).resume_state}; "
            f"`pcamlab train --resume --out {shlex.quote(str(out_dir))}` (resume=True from Python) continues from epoch {saved + 1}")


def _summary(config: RunConfig, out_dir: Path, data, contract, early, history: list[dict[str, Any]], *, size, device,
             world, precision: str, stop: tuple[str, str, int], clock, learning_rate_factor: float, skipped_steps: int,
             source_run: Path | None, threshold_chosen_on: dict | None, transfer: dict | None,
             swa: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run summary written to ``summary.json``; ``stop`` is ``(reason, stopped_by, last epoch)``."""
    train_config = config.train
    stop_reason, stopped_by, epoch = stop
    budget = None
    if clock.has_budget:  # where training stopped in the budget, and the whole run with its last validation
        before, stopped = clock.checks
        budget = {"minutes": train_config.time_budget_minutes, "used_at_previous_step": round(before, 4),
                  "used_when_training_stopped": round(stopped, 4), "used_at_end": round(clock.fraction(), 4)}
        stop_reason += f" ({stopped:.0%} of the budget used, learning rate at {learning_rate_factor:.1%} of its peak)"
    speeds = [float(row["images_per_second"]) for row in history]
    best_row = next((row for row in history if int(row["epoch"]) == early.best_epoch), history[-1])
    if swa is not None and swa["chosen"]:
        best_row = swa["scores"]
    summary = {
        "finished": True,
        "stop_reason": stop_reason,
        "stopped_by": stopped_by,  # epochs | early_stop | time_budget | caller
        "budget": budget,  # shares of train.time_budget_minutes (None: no budget)
        "final_learning_rate_factor": learning_rate_factor,  # of train.learning_rate, at the last step
        "epochs_run": epoch,
        "best_epoch": early.best_epoch,
        "monitor": data.monitor,
        "validated": data.validated,  # False: a final fit, whose "best" is its last epoch
        "best": {key: float(best_row[key]) if data.validated else None
                 for key in ("val_auc", "val_loss", "val_accuracy")},
        "threshold": contract.threshold,
        "threshold_method": config.evaluate.threshold_method,
        "threshold_chosen_on": threshold_chosen_on,
        "val_accuracy_threshold": 0.5,  # history.csv's val_accuracy and best.val_accuracy are at 0.5
        "model": config.model.name,
        "parameters": size["parameters"],
        "flops_per_patch": size["flops"],
        "device": str(device),
        "processes": world.size,
        "precision": precision,
        "channels_last": train_config.channels_last,
        "threads": torch.get_num_threads(),  # float sums depend on it: runs repeat bit for bit at the same count
        "deterministic": train_config.deterministic,
        "continued_from": str(source_run) if source_run is not None else None,
        "train_images_per_second_median": float(np.median(speeds)) if speeds else None,
        "wall_seconds": round(clock.run_seconds(), 2),  # a resumed run's earlier processes included
        "skipped_steps": skipped_steps,  # batches a process could not train on (unreadable files left out)
        "data": data.facts(),
        "contract": contract.to_dict(),
        "checkpoints": {name: str(path) if path.is_file() else None
                        for name, path in (("best", RunFolder(out_dir).best), ("last", RunFolder(out_dir).last))},
        "warnings": data.warnings,
    }
    if transfer is not None:
        summary["pretrained"] = transfer
    if swa is not None:  # best_epoch stays the best single epoch; "best" is the average's when it is best.safetensors
        summary["swa"] = {key: value for key, value in swa.items() if key != "scores"}
        summary["best_is_swa"] = swa["chosen"]
    return summary


def _threshold_chosen(config: RunConfig, data, scores: dict[str, Any], contract):
    """``contract`` with the threshold ``evaluate.threshold_method`` chooses on these validation scores; unchanged
    for ``fixed`` or a one-class validation split (nothing to choose on)."""
    if config.evaluate.threshold_method == "fixed" or data.one_class_valid:
        return contract
    from pcamlab.evaluate.thresholds import choose_threshold

    chosen = float(choose_threshold(scores["labels"], scores["probabilities"], config.evaluate.threshold_method,
                                    config.evaluate.target_sensitivity))
    return contract.replace(threshold=chosen, threshold_source=config.evaluate.threshold_method)


def _finish_tail_average(tail, config: RunConfig, out_dir: Path, data, contract, early, device, world,
                         say: Callable[[str], None], threshold_chosen_on: dict | None = None,
                         ) -> tuple[dict[str, Any] | None, Any]:
    """Batch-norm statistics, validation and ``swa.safetensors`` for the tail average (``train.swa_lr_fraction``).

    Returns ``(result, contract)``: ``result`` None when fewer than 2 epochs were averaged (the average of one
    epoch is that epoch), else the epochs averaged, the patches its batch-norm statistics came from, its
    validation scores and whether it became ``best.safetensors``; ``contract`` carries the threshold
    chosen on the average's validation scores when it became best. ``swa.safetensors`` always carries a
    threshold chosen on the average's own scores (and ``threshold_chosen_on``, so evaluate can say where).
    """
    from pcamlab.runtime.checkpoint import save_checkpoint
    from pcamlab.train.early_stopping import is_better
    from pcamlab.train.epoch import check_stop, validate

    averaged = len(tail.epochs)
    if averaged < 2:
        crops = len(tail.crop_epochs_in_tail)
        fraction = config.train.swa_lr_fraction
        say(f"note: train.swa_lr_fraction {fraction}: {averaged} full-patch epoch"
            f"{'' if averaged == 1 else 's'} ended with the learning rate at or below that fraction of its peak"
            + (f" ({crops} crop epoch{'' if crops == 1 else 's'} also did; crop epochs, augment.crop_epochs, are never averaged)"
               if crops else "")
            + ", so there is no average of weights (it needs 2); "
            + (("every epoch trains on crops (augment.crop_epochs 0); set augment.crop_size=0 for full patches"
                if config.augment.crop_size and not config.augment.crop_epochs else
                "train more epochs on full patches (fewer augment.crop_epochs, or more train.epochs)")
               if crops or fraction >= 1 else "raise the fraction or train longer"))
        return {"epochs": list(tail.epochs), "lr_fraction": fraction, "crop_epochs_in_tail": list(tail.crop_epochs_in_tail),
                "averaged": False, "chosen": False}, contract
    batches = (contract.to_model_input(images.to(device, non_blocking=True))
               for images, labels, _ in data.train_source.epoch(seed=config.train.seed * 7919)
               if len(labels))
    patches = tail.recompute_batch_norm(batches)
    check_stop(world)
    of_ema = config.train.ema_decay > 0  # with train.ema_decay the tail averages the EMA's weights, not the raw ones
    result: dict[str, Any] = {"epochs": list(tail.epochs), "lr_fraction": config.train.swa_lr_fraction,
                              "batch_norm_patches": patches, "averaged": True, "chosen": False,
                              "weights": "ema" if of_ema else "model"}
    text = (f"swa: the average of epochs {tail.epochs[0]}-{tail.epochs[-1]} ({averaged} epochs"
            + (f" of the EMA's weights, train.ema_decay {config.train.ema_decay}" if of_ema else "")
            + (f"; batch-norm statistics from {patches:,} training patches)" if patches else ")"))
    if not data.validated:  # a final fit: no way to compare, the average is kept beside the last epoch
        say(f"{text} written to {RunFolder(out_dir).swa}")
        if world.rank == 0:
            save_checkpoint(RunFolder(out_dir).swa, tail.model, config, contract,
                            {"epoch": tail.epochs[-1], "swa_epochs": tail.epochs})
        return result, contract
    scores = validate(tail.model, data.valid_source, contract, device, lambda: check_stop(world))
    value = scores[data.monitor]
    chosen = is_better(value, early.best_value, data.monitor, 0.0)
    result.update(chosen=chosen, val_auc=round(scores["val_auc"], 6), val_loss=round(scores["val_loss"], 6),
                  scores={key: float(scores[key]) for key in ("val_auc", "val_loss", "val_accuracy")})
    average_contract = _threshold_chosen(config, data, scores, contract)  # the average's own, not the best epoch's
    if chosen:
        contract = average_contract
    if world.rank == 0:
        metadata = {"epoch": tail.epochs[-1], "swa_epochs": tail.epochs, data.monitor: value, "val_auc": scores["val_auc"],
                    "val_loss": scores["val_loss"]}
        if threshold_chosen_on is not None:
            metadata["threshold_chosen_on"] = threshold_chosen_on
        save_checkpoint(RunFolder(out_dir).swa, tail.model, config, average_contract, metadata)
        if chosen:
            save_checkpoint(RunFolder(out_dir).best, tail.model, config, average_contract, metadata)
    best_text = f"{early.best_value:.4f} at epoch {early.best_epoch}" if early.best_value is not None else "none"
    say(f"{text}: {data.monitor} {value:.4f} (best epoch: {best_text})"
        + (f" -> best.safetensors and {RunFolder(out_dir).SWA}" if chosen else f"; kept as {RunFolder(out_dir).SWA} only"))
    return result, contract

