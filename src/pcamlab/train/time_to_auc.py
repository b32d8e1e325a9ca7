"""Time-to-AUC: how much wall time a recipe needs to reach a validation AUC, from the command's start.

:func:`run_time_to_auc` trains each recipe (a run config) from scratch once per seed, each run in a
fresh Python process (``multiprocessing`` *spawn*), so a run's clock counts what a user waits for:
interpreter start, imports, decoding the data, training, the loop's own per-epoch validation and
checkpoints. The clock starts in the parent just before the process starts.

While a run trains, the weights of the model the loop validates (the EMA model when
``train.ema_decay`` > 0) are copied at fixed wall times (:func:`snapshot_times`; copying takes
milliseconds, the only cost the benchmark adds to a run). After training, the same process scores every
copy and the recipe's final ``best.safetensors`` (the tail average when ``train.swa_lr_fraction`` made one
that validated best) on the validation split in **fp32** (whatever the training precision), without
test-time augmentation (a recipe whose ``evaluate.tta`` is on is scored with it by ``pcamlab evaluate``). Scoring happens after the clock stops: a point's
time is when its weights existed, not when they were scored. ``valid_subset`` scores a fixed, seeded
subset of the validation split instead of all of it (faster, noisier); the report says which.

From those points: the wall time to reach each AUC of :data:`MILESTONE_AUCS` (the first point at or
above it, so resolution = the snapshot spacing) and the AUC at each time of :data:`MILESTONE_SECONDS`
(the last point at or before it; a run that finished earlier keeps its final model), median over seeds.
Each point also records the run process's CPU seconds (``time.process_time``, all threads, from the
process's start): on a shared machine wall time grows with the load, CPU time much less, so compare
recipes measured under load by CPU seconds (and repeat on a quiet machine for wall-time claims).
A milestone a seed never reaches counts as infinitely late, so the median is "not reached" when more
than half the seeds miss it.

Example:
    >>> from pcamlab.config import load_config
    >>> result = run_time_to_auc({"speedrun": load_config("configs/speedrun.yaml")},
    ...                          "../shared/data/pcam-jpg", "runs/tta", seeds=3, minutes=2)
    >>> print(result["markdown"])
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcamlab.config import RunConfig, config_from_dict, config_to_dict
from pcamlab.errors import ConfigError, RunError
from pcamlab.fileio import save_png, write_text_atomic

__all__ = [
    "MILESTONE_AUCS",
    "MILESTONE_SECONDS",
    "cpu_description",
    "format_markdown",
    "plot_curves",
    "run_time_to_auc",
    "snapshot_times",
    "summarise_runs",
]

MILESTONE_AUCS = (0.85, 0.90, 0.92, 0.94)  # validation AUCs whose wall time is reported
MILESTONE_SECONDS = (60.0, 120.0, 300.0, 900.0)  # wall times (1, 2, 5, 15 min) whose AUC is reported
RESULT_FILES = ("time_to_auc.json", "time_to_auc.md", "time_to_auc.png")


def snapshot_times(horizon_seconds: float, interval: float = 0.0) -> list[float]:
    """Wall times (seconds from the run's start) at which the weights are copied.

    With ``interval`` > 0: every ``interval`` seconds up to the horizon. Otherwise a spacing that grows
    with time (every 5 s to 1 min, 10 s to 2 min, 20 s to 5 min, 60 s after), which resolves the
    first minute finely and keeps a 15-minute run to ~50 copies.
    """
    if horizon_seconds <= 0:
        raise ConfigError(f"the time-to-AUC horizon must be > 0 seconds; got {horizon_seconds}")
    if interval < 0:
        raise ConfigError(f"the snapshot interval must be >= 0 seconds; got {interval}")
    times, now = [], 0.0
    while True:
        step = interval if interval > 0 else (5.0 if now < 60 else 10.0 if now < 120 else 20.0 if now < 300 else 60.0)
        now = round(now + step, 6)
        if now > horizon_seconds + 1e-9:
            return times
        times.append(now)


def cpu_description() -> dict[str, Any]:
    """The CPU model, its vector/matrix extensions, native bf16 and the 1-minute load average."""
    import torch

    from pcamlab.runtime import cpu_has_native_bf16
    from pcamlab.runtime.device import cpu_model

    name, extensions = cpu_model()
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {"model": name, "extensions": extensions, "native_bf16": cpu_has_native_bf16(),
            "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": load}


def _one_run(values: dict[str, Any], out_dir: str, times: list[float], horizon: float, clock_zero: float,
             valid_subset: int, result_path: str) -> None:
    """Child process: train one recipe with weight copies at ``times``, then score them (fp32)."""
    try:
        result = _train_and_score(values, out_dir, times, horizon, clock_zero, valid_subset)
    except BaseException as error:  # reported to the parent, which raises a RunError naming the run
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    write_text_atomic(result_path, json.dumps(result))


def _train_and_score(values, out_dir, times, horizon, clock_zero, valid_subset) -> dict[str, Any]:
    import numpy as np
    import torch

    from pcamlab.train.loop import train

    config = config_from_dict(values)
    pending = list(times)
    snapshots: list[dict[str, Any]] = []
    progress = {"epochs": 0.0}

    def on_step(model: torch.nn.Module, epochs: float) -> bool:
        progress["epochs"] = epochs
        now = time.time() - clock_zero
        if pending and now >= pending[0]:
            while pending and pending[0] <= now:
                pending.pop(0)
            state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
            snapshots.append({"seconds": now, "cpu_seconds": time.process_time(), "epochs": epochs, "state": state})
        return now >= horizon

    summary = train(config, out_dir, progress=False, on_step=on_step)
    finished_seconds = time.time() - clock_zero
    finished_cpu_seconds = time.process_time()
    threads = torch.get_num_threads()

    # -- scoring, after the clock stopped ------------------------------------------------------
    from safetensors.torch import load_file

    from pcamlab.data import load_split_arrays, open_split
    from pcamlab.evaluate.metrics import roc_auc
    from pcamlab.models import build_model
    from pcamlab.runtime import TorchPredictor

    data = config.data
    reader = open_split(data.path, data.valid_split, format=data.format, valid_fraction=data.valid_fraction, seed=data.seed)
    images, labels, _ = load_split_arrays(reader, skip_bad=data.skip_bad)
    if 0 < valid_subset < len(labels):
        picks = np.sort(np.random.default_rng(0).choice(len(labels), size=valid_subset, replace=False))
        images, labels = images[picks], labels[picks]
    model = build_model(config_from_dict(values).model).eval()
    predictor = TorchPredictor(model, summary["contract"], precision="fp32")
    final_state = load_file(summary["checkpoints"]["best"])
    points = [*snapshots, {"seconds": finished_seconds, "cpu_seconds": finished_cpu_seconds,
                           "epochs": progress["epochs"], "state": final_state, "final": True}]
    curve = []
    for point in points:
        model.load_state_dict(point["state"])
        probabilities = predictor.predict_proba(images, batch_size=512)
        auc = roc_auc(np.asarray(labels, dtype=np.int64), probabilities)
        curve.append({"seconds": round(point["seconds"], 3), "cpu_seconds": round(point["cpu_seconds"], 2),
                      "epochs": round(point["epochs"], 3),
                      "auc": None if auc is None else round(float(auc), 5), "final": bool(point.get("final"))})
    return {
        "curve": curve, "finished_seconds": round(finished_seconds, 3), "stop_reason": summary["stop_reason"],
        "stopped_at_horizon": summary["stop_reason"].startswith("stopped by the caller"),
        "precision": summary["precision"], "channels_last": summary["channels_last"], "threads": threads,
        "epochs_run": summary["epochs_run"], "train_patches": summary["data"]["train_patches"],
        "scored_patches": int(len(labels)), "train_images_per_second_median": summary["train_images_per_second_median"],
        "model": summary["model"], "flops_per_patch": summary["flops_per_patch"],
    }


def _time_to(curve: list[dict[str, Any]], target: float) -> float:
    for point in curve:
        if point["auc"] is not None and point["auc"] >= target:
            return point["seconds"]
    return math.inf


def _auc_at(run: dict[str, Any], seconds: float) -> float | None:
    """AUC of the last point at or before ``seconds``; None when nothing was scored yet or never measured."""
    curve = run["curve"]
    if seconds > curve[-1]["seconds"] and run["stopped_at_horizon"]:
        return None  # the benchmark stopped this run before that time
    before = [point["auc"] for point in curve if point["seconds"] <= seconds and point["auc"] is not None]
    return before[-1] if before else None


def _median(values: list[float]) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def summarise_runs(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per recipe: median over seeds of the time to each milestone AUC and the AUC at each milestone time.

    Args:
        runs: recipe name -> one result per seed (``curve`` of ``{seconds, auc}`` points, ...).

    Returns:
        recipe -> ``{"seconds_to_auc": {"0.90": s or None}, "reached": {"0.90": k}, "auc_at_seconds":
        {"60": auc or None}, "final_auc", "finished_seconds", "seeds", ...}``; None = not reached by
        the median seed / not measured.
    """
    table = {}
    for name, seeds in runs.items():
        seconds_to = {}
        reached = {}
        for target in MILESTONE_AUCS:
            times = [_time_to(run["curve"], target) for run in seeds]
            middle = statistics.median(times)
            seconds_to[f"{target:.2f}"] = None if math.isinf(middle) else round(middle, 1)
            reached[f"{target:.2f}"] = sum(not math.isinf(value) for value in times)
        auc_at = {}
        for seconds in MILESTONE_SECONDS:
            values = [_auc_at(run, seconds) for run in seeds]
            auc_at[f"{seconds:g}"] = None if any(value is None for value in values) else round(statistics.median(values), 4)
        first = seeds[0]
        table[name] = {
            "seeds": len(seeds),
            "seconds_to_auc": seconds_to,
            "reached": reached,
            "auc_at_seconds": auc_at,
            "final_auc": round(_median([run["curve"][-1]["auc"] for run in seeds]), 4),
            "finished_seconds": round(statistics.median(run["finished_seconds"] for run in seeds), 1),
            "epochs_run": statistics.median(run["epochs_run"] for run in seeds),
            "model": first["model"], "precision": first["precision"], "threads": first["threads"],
            "scored_patches": first["scored_patches"],
        }
    return table


def _seconds_text(value: float | None) -> str:
    # rounded up: a copy taken at 120.4 s is after the "AUC @ 2 min" column's last copy at or before 120 s
    return "not reached" if value is None else f"{math.ceil(value)} s"


def format_markdown(result: dict[str, Any]) -> str:
    """The Markdown table of a :func:`run_time_to_auc` result, with the machine and the method below it."""
    aucs = [f"{target:.2f}" for target in MILESTONE_AUCS]
    times = [f"{seconds:g}" for seconds in MILESTONE_SECONDS]
    header = (["recipe"] + [f"time to {auc}" for auc in aucs] + [f"AUC @ {float(t) / 60:g} min" for t in times]
              + ["final AUC", "finished", "precision"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in result["summary"].items():
        cells = [name]
        cells += [_seconds_text(row["seconds_to_auc"][auc]) + (f" ({row['reached'][auc]}/{row['seeds']})"
                  if 0 < row["reached"][auc] < row["seeds"] else "") for auc in aucs]
        cells += ["-" if row["auc_at_seconds"][t] is None else f"{row['auc_at_seconds'][t]:.3f}" for t in times]
        cells += [f"{row['final_auc']:.3f}", f"{row['finished_seconds']:.0f} s", row["precision"]]
        lines.append("| " + " | ".join(cells) + " |")
    cpu = result["cpu"]
    scored = next(iter(result["summary"].values()))["scored_patches"] if result["summary"] else 0
    lines += [
        "",
        (f"Median of {result['seeds']} seeds" if result["seeds"] > 1 else "One seed") + f"; wall time from the command's start (imports, decoding, training, the "
        f"loop's validation and checkpoints). CPU: {cpu['model']} ({', '.join(cpu['extensions']) or 'no AVX2'}, "
        f"native bf16 {'yes' if cpu['native_bf16'] else 'no'}), {result['threads']} torch threads, 1-minute load "
        f"average {result['load_average']['before']} before / {result['load_average']['after']} after. AUC in fp32 "
        f"on {scored} validation patches{' (a fixed subset)' if result['valid_subset'] else ''} of {result['data']}, "
        f"weights copied every {result['interval_text']}; '-' = not measured (horizon {result['minutes']:g} min). "
        "Time to X: when the first copy scoring X or more was taken (rounded up); AUC @ T: the last copy taken at "
        "or before T; each is a median over seeds on its own, so a time to 0.94 under 5 min beside an AUC @ 5 min "
        "under 0.94 means the seeds differ (or the curve fell back), not an error.",
    ]
    return "\n".join(lines) + "\n"


def plot_curves(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """AUC against wall time, one colour per recipe, one line per seed; dashed lines at the milestones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (name, seeds) in enumerate(result["runs"].items()):
        colour = f"C{index}"
        for number, run in enumerate(seeds):
            points = [(p["seconds"], p["auc"]) for p in run["curve"] if p["auc"] is not None]
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, color=colour, alpha=0.8, linewidth=1.2, marker=".", markersize=3,
                          label=name if number == 0 else None)
    for target in MILESTONE_AUCS:
        axis.axhline(target, color="grey", linestyle="--", linewidth=0.6)
    axis.set_xscale("log")
    axis.set_xlabel("wall time from the command's start (s, log scale)")
    axis.set_ylabel("validation AUC (fp32)")
    axis.set_ylim(0.5, 1.0)
    cpu = result["cpu"]
    load = result["load_average"]
    axis.set_title(f"Time to AUC, {cpu['model']}, {result['threads']} threads, "
                   f"load {load['before']} before / {load['after']} after", fontsize=9)
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return save_png(figure, path)


def run_time_to_auc(
    recipes: dict[str, RunConfig],
    data: str,
    out_dir: str | os.PathLike,
    *,
    seeds: int = 3,
    first_seed: int = 0,
    minutes: float = 15.0,
    interval: float = 0.0,
    valid_subset: int = 0,
    threads: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every recipe ``seeds`` times from scratch and measure its validation AUC against wall time.

    Args:
        recipes: name -> run config; ``data.path`` is replaced by ``data``, ``train.seed`` by
            first_seed..first_seed+seeds-1.
        data: dataset root with train and valid splits (e.g. ``../shared/data/pcam-jpg``).
        out_dir: new folder for ``time_to_auc.{json,md,png}`` and the run folders (``runs/NAME-seedK``).
        seeds: runs per recipe (the table reports medians).
        first_seed: the first seed (e.g. 1 to add seeds 1 and 2 to a benchmark that ran seed 0).
        minutes: horizon: a run still training then is stopped (its partial epoch is validated and
            checkpointed like a time budget's); its recipe is otherwise unchanged.
        interval: seconds between weight copies (0 = the growing spacing of :func:`snapshot_times`).
        valid_subset: score this many validation patches (a fixed seeded subset; 0 = all).
        threads: torch threads in each run (sets ``train.threads``; 0 = the recipe's own / torch's).
        log: called with one line per finished run, and with a note for each recipe whose time budget
            is longer than ``minutes`` (its schedule is cut off before it decays).

    Returns:
        ``{"summary": summarise_runs(...), "runs": {name: [per-seed result]}, "cpu", "markdown", ...}``,
        also written to ``out_dir/time_to_auc.json`` (with the Markdown in ``time_to_auc.md`` and the
        curves in ``time_to_auc.png``).

    Raises:
        ConfigError: no recipe, seeds < 1, first_seed < 0, minutes <= 0, or a negative interval / subset.
        RunError: ``out_dir`` already holds results, or a run failed (its error is quoted).
    """
    if not recipes:
        raise ConfigError("time-to-AUC needs at least one recipe (a run config)")
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1; got {seeds}")
    if first_seed < 0:
        raise ConfigError(f"first_seed must be >= 0; got {first_seed}")
    if valid_subset < 0:
        raise ConfigError(f"valid_subset must be >= 0 patches (0 = the whole validation split); got {valid_subset}")
    horizon = 60.0 * minutes
    times = snapshot_times(horizon, interval)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(f"output folder {str(out_dir)!r} already holds results; choose another one")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda line: None)
    for name, config in recipes.items():  # a horizon inside the budget measures a schedule that never decays
        budget = config.train.time_budget_minutes
        if budget and minutes < budget:
            say(f"note: --minutes {minutes:g} ends {name} before its {budget:g}-minute budget: "
                f"its schedule{' (schedule_over: budget)' if config.train.schedule_over == 'budget' else ''} "
                f"is cut off, not decayed; pass --minutes {budget:g} or --set train.time_budget_minutes={minutes:g}")
    load_before = cpu_description()["load_average"]
    context = multiprocessing.get_context("spawn")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, config in recipes.items():
        runs[name] = []
        for seed in range(first_seed, first_seed + seeds):
            values = config_to_dict(config)
            values["data"]["path"] = str(data)
            values["train"]["seed"] = seed
            if threads:
                values["train"]["threads"] = threads
            run_dir = out_dir / "runs" / f"{name}-seed{seed}"
            result_path = out_dir / "runs" / f"{name}-seed{seed}.json"
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            clock_zero = time.time()
            process = context.Process(
                target=_one_run,
                args=(values, str(run_dir), times, horizon, clock_zero, valid_subset, str(result_path)),
            )
            process.start()
            process.join()
            if not result_path.is_file():
                raise RunError(f"time-to-AUC run {name} seed {seed} died (exit code {process.exitcode}) without a result")
            result = json.loads(result_path.read_text())
            if "error" in result:
                raise RunError(f"time-to-AUC run {name} seed {seed} failed: {result['error']}")
            result["seed"] = seed
            runs[name].append(result)
            final = result["curve"][-1]
            say(f"{name} seed {seed}: final AUC {final['auc']} at {result['finished_seconds']:.1f} s "
                f"({result['stop_reason']}; {len(result['curve'])} points scored on {result['scored_patches']} patches)")
    cpu = cpu_description()
    result = {
        "data": str(data), "seeds": seeds, "minutes": minutes, "interval": interval,
        "interval_text": f"{interval:g} s" if interval else "5 s to 1 min, 10 s to 2 min, 20 s to 5 min, 60 s after",
        "valid_subset": valid_subset, "threads": next(iter(runs.values()))[0]["threads"],
        "cpu": cpu, "load_average": {"before": load_before, "after": cpu["load_average"]},
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "summary": summarise_runs(runs), "runs": runs,
    }
    result["markdown"] = format_markdown(result)
    write_text_atomic(out_dir / "time_to_auc.json", json.dumps(result, indent=2))
    write_text_atomic(out_dir / "time_to_auc.md", result["markdown"])
    plot_curves(result, out_dir / "time_to_auc.png")
    return result
