"""The training loop: one file to read top to bottom.

``train(config, out_dir)`` opens the data, builds the model, and for each epoch: shuffles (seeded by
epoch, so a resumed run sees the same order), augments each batch as tensor operations on the training
device, steps the optimiser and the per-step learning-rate schedule, evaluates on the validation split,
logs a row to ``history.csv`` and TensorBoard, and saves ``last.safetensors`` (every epoch) and
``best.safetensors`` (when the monitored value improves). ``resume.pt`` holds what a resumed run needs
(optimiser and schedule state, the epoch, the best value); it is loaded with ``weights_only=True``.

A finished run folder is never overwritten: a new run needs a new ``out_dir``; ``resume=True``
continues an interrupted one from its last completed epoch.

Example:
    >>> from pcamlab.config import load_config
    >>> result = train(load_config("configs/default.yaml"), "runs/first")
    >>> result["best"]["val_auc"]
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from pcamlab.config import RunConfig, config_to_dict
from pcamlab.errors import ConfigError, RunError

__all__ = ["train", "HISTORY_COLUMNS", "learning_rate_factor"]

HISTORY_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_auc", "val_accuracy", "learning_rate", "seconds",
    "images_per_second",
]


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def _prepare_out_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run; on resume, require one to continue."""
    summary = out_dir / "summary.json"
    if resume:
        if not (out_dir / "resume.pt").is_file():
            raise RunError(f"nothing to resume in {str(out_dir)!r}: it has no resume.pt; start a new run instead")
        if summary.is_file() and json.loads(summary.read_text()).get("finished"):
            raise RunError(f"run {str(out_dir)!r} already finished; start a new run with another --out")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(
            f"output folder {str(out_dir)!r} already holds a run; choose another --out "
            "(or pass --resume to continue an interrupted run)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def learning_rate_factor(config: RunConfig, progress: float) -> float:
    """Multiplier of the peak learning rate at ``progress`` epochs (fractional) into training."""
    train = config.train
    warmup = min(train.warmup_epochs, train.epochs)
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / warmup
    if train.scheduler == "none":
        return 1.0
    if train.scheduler == "step":
        return train.gamma ** math.floor(progress / max(train.step_size, 1))
    if train.scheduler == "exponential":
        return train.gamma**progress
    # cosine from the end of warm-up to the last epoch, down to 1% of the peak
    span = max(train.epochs - warmup, 1e-9)
    fraction = min(max((progress - warmup) / span, 0.0), 1.0)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * fraction))


def _make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    train = config.train
    # no weight decay on biases and batch-norm parameters (they are not weights in the L2 sense)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=train.learning_rate, momentum=train.momentum, nesterov=train.nesterov and train.momentum > 0
        )
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.learning_rate)
    return torch.optim.AdamW(groups, lr=train.learning_rate)


def _evaluate(model, source, contract, device, precision) -> dict[str, float]:
    """Validation loss, AUC and accuracy at 0.5 over a batch source."""
    from pcamlab.evaluate.metrics import roc_auc
    from pcamlab.evaluate.predict import to_model_input
    from pcamlab.train.device import autocast

    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for images, batch_labels, _ in source.epoch(seed=0):
            if len(batch_labels) == 0:
                continue
            x = to_model_input(images.to(device, non_blocking=True), contract)  # (B, 3, H, W)
            with autocast(device, precision):
                output = model(x)  # (B, 1)
            logits.append(output.float().reshape(-1).cpu())
            labels.append(batch_labels)
    logit = torch.cat(logits)
    label = torch.cat(labels).float()
    loss = F.binary_cross_entropy_with_logits(logit, label).item()
    probability = torch.sigmoid(logit).numpy()
    auc = roc_auc(label.numpy().astype(np.int64), probability)
    accuracy = float(((probability >= 0.5) == (label.numpy() == 1)).mean())
    return {"val_loss": loss, "val_auc": float("nan") if auc is None else auc, "val_accuracy": accuracy}


def _is_better(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    if monitor == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


def _data_stats(images: torch.Tensor | None, reader) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units from the training images (a sample of them when streaming)."""
    from pcamlab.data.normalize import channel_stats

    if images is not None:
        return channel_stats(images.numpy())
    rng = np.random.default_rng(0)
    picks = rng.choice(len(reader), size=min(len(reader), 2048), replace=False)
    sample = np.stack([reader[int(i)][0] for i in sorted(picks)])
    return channel_stats(sample)


def train(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` and write a run folder.

    Args:
        config: the resolved run configuration.
        out_dir: the run folder to create (must not hold a run unless ``resume``).
        resume: continue an interrupted run in ``out_dir`` from its last completed epoch.
        progress: show tqdm progress bars (on stderr).
        log: called with one human-readable line per event (the CLI passes ``print``).

    Returns:
        The run summary (also written to ``summary.json``).

    Raises:
        RunError: the output folder holds a run, training diverged, or nothing to resume.
        DataError / ConfigError: bad data or configuration (one line with the fix).
    """
    from tqdm.auto import tqdm

    from pcamlab.data import open_split
    from pcamlab.data.augment import augment_batch, check_augment_config
    from pcamlab.data.loader import InMemoryBatches, make_batch_source
    from pcamlab.evaluate.predict import normalize_unit, to_unit
    from pcamlab.models import build_model, model_summary
    from pcamlab.train.checkpoint import make_contract, save_checkpoint
    from pcamlab.train.device import autocast, resolve_device, resolve_precision

    say = log or (lambda line: None)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    train_config, data_config = config.train, config.data
    if train_config.epochs < 1 or train_config.batch_size < 1:
        raise ConfigError(
            f"train.epochs and train.batch_size must be >= 1; got {train_config.epochs} and {train_config.batch_size}"
        )
    check_augment_config(config.augment)
    _prepare_out_dir(out_dir, resume)
    if train_config.threads > 0:
        torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    device = resolve_device(train_config.device)
    precision = resolve_precision(train_config.precision, device)

    # -- data ------------------------------------------------------------------------------------
    split_options = dict(format=data_config.format, valid_fraction=data_config.valid_fraction, seed=data_config.seed)
    train_reader = open_split(data_config.path, data_config.train_split, **split_options)
    valid_reader = open_split(data_config.path, data_config.valid_split, **split_options)
    say(f"data: {train_reader.root} ({train_reader.format}); train {len(train_reader)}, valid {len(valid_reader)} patches")

    def bar(description: str):
        handle = tqdm(total=0, desc=description, unit="patch", disable=not progress, leave=False)

        def update(done: int, total: int) -> None:
            handle.total = total
            handle.n = done
            handle.refresh()

        return update, handle

    update, handle = bar("decoding train")
    train_source = make_batch_source(
        train_reader, data_config, train_config.batch_size, shuffle=True, drop_last=True, progress=update
    )
    handle.close()
    update, handle = bar("decoding valid")
    valid_source = make_batch_source(valid_reader, data_config, 256, shuffle=False, progress=update)
    handle.close()
    if len(train_source) == 0:
        raise ConfigError(
            f"train.batch_size {train_config.batch_size} is larger than the {train_source.num_samples} "
            "training patches; lower it"
        )
    say(f"data: {train_source.kind} loading; {train_source.skipped + valid_source.skipped} unreadable files skipped")

    train_images = train_source.images if isinstance(train_source, InMemoryBatches) else None
    mean, std = _data_stats(train_images, train_reader)
    contract = make_contract(mean, std, patch_size=train_reader[0][0].shape[0], threshold=config.evaluate.threshold)

    # -- model and optimiser ---------------------------------------------------------------------
    model = build_model(config.model).to(device)
    size = model_summary(model, input_size=contract["patch_size"])
    if train_config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = len(train_source)
    if train_config.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, train_config.max_steps_per_epoch)
    peak_rates = [group["lr"] for group in optimizer.param_groups]
    say(
        f"model: {config.model.name}, {size['parameters']:,} parameters, {size['flops'] / 1e6:.0f} MFLOPs/patch; "
        f"device {device}, precision {precision}, channels_last {train_config.channels_last}"
    )

    # -- state, fresh or resumed -----------------------------------------------------------------
    first_epoch, best_value, best_epoch, stale_epochs = 1, None, 0, 0
    history: list[dict[str, Any]] = []
    if resume:
        from safetensors.torch import load_file

        state = torch.load(out_dir / "resume.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(load_file(str(out_dir / "last.safetensors"), device=str(device)))
        optimizer.load_state_dict(state["optimizer"])
        first_epoch = int(state["epoch"]) + 1
        best_value, best_epoch, stale_epochs = state["best_value"], int(state["best_epoch"]), int(state["stale_epochs"])
        with open(out_dir / "history.csv") as file:
            history = [row for row in csv.DictReader(file) if int(row["epoch"]) < first_epoch]
        say(f"resuming {out_dir} at epoch {first_epoch}")
    else:
        _write_atomic(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    _write_atomic(
        out_dir / "history.csv",
        ",".join(HISTORY_COLUMNS) + "\n" + "".join(",".join(str(row[c]) for c in HISTORY_COLUMNS) + "\n" for row in history),
    )

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=first_epoch)
    monitor = train_config.monitor
    stop_reason = "all epochs done"
    epoch = first_epoch - 1

    # -- epochs ----------------------------------------------------------------------------------
    for epoch in range(first_epoch, train_config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        torch.manual_seed(train_config.seed * 100_003 + epoch)  # dropout: same stream on resume
        augment_generator = torch.Generator(device=device).manual_seed(train_config.seed * 1_000_003 + epoch)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        bar_handle = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{train_config.epochs}", unit="step",
                          disable=not progress, leave=False)
        for step, (images, labels, _) in enumerate(train_source.epoch(seed=train_config.seed * 7919 + epoch)):
            if step >= steps_per_epoch:
                break
            if len(labels) == 0:
                continue
            progress_epochs = epoch - 1 + step / steps_per_epoch
            factor = learning_rate_factor(config, progress_epochs)
            for group, peak in zip(optimizer.param_groups, peak_rates):
                group["lr"] = peak * factor
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True).float()
            x = to_unit(images)  # (B, 3, H, W) in [0, 1], channels_last strides
            x = normalize_unit(augment_batch(x, config.augment, augment_generator), contract)
            with autocast(device, precision):
                logits = model(x)  # (B, 1)
            loss = F.binary_cross_entropy_with_logits(logits.float().reshape(-1), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            bar_handle.update(1)
            if step % 10 == 0:
                bar_handle.set_postfix(loss=f"{loss.item():.3f}", lr=f"{peak_rates[0] * factor:.1e}")
        bar_handle.close()
        train_seconds = time.perf_counter() - epoch_start
        train_loss = (loss_sum / max(seen, 1)).item()
        if not math.isfinite(train_loss):
            raise RunError(
                f"training diverged at epoch {epoch} (loss {train_loss}); lower train.learning_rate "
                f"(now {train_config.learning_rate}) or use train.precision=fp32"
            )
        scores = _evaluate(model, valid_source, contract, device, precision)
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(scores["val_loss"], 6),
            "val_auc": round(scores["val_auc"], 6),
            "val_accuracy": round(scores["val_accuracy"], 6),
            "learning_rate": f"{peak_rates[0] * factor:.6g}",
            "seconds": round(time.perf_counter() - epoch_start, 3),
            "images_per_second": round(seen / train_seconds, 1),
        }
        history.append(row)
        with open(out_dir / "history.csv", "a") as file:
            file.write(",".join(str(row[c]) for c in HISTORY_COLUMNS) + "\n")
        for key in ("train_loss", "val_loss", "val_auc", "val_accuracy", "images_per_second"):
            writer.add_scalar(key.replace("_", "/", 1) if key.startswith(("train", "val")) else key, float(row[key]), epoch)
        writer.add_scalar("learning_rate", peak_rates[0] * factor, epoch)
        writer.flush()

        value = scores[monitor]
        improved = _is_better(value, best_value, monitor, train_config.min_delta)
        metadata = {"epoch": epoch, monitor: value, "val_auc": scores["val_auc"], "val_loss": scores["val_loss"]}
        save_checkpoint(out_dir / "last.safetensors", model, config, contract, metadata)
        if improved:
            best_value, best_epoch, stale_epochs = value, epoch, 0
            save_checkpoint(out_dir / "best.safetensors", model, config, contract, metadata)
        else:
            stale_epochs += 1
        resume_state = {
            "optimizer": optimizer.state_dict(), "epoch": epoch, "best_value": best_value,
            "best_epoch": best_epoch, "stale_epochs": stale_epochs,
        }
        handle, temporary = tempfile.mkstemp(prefix=".resume.", suffix=".tmp", dir=out_dir)
        os.close(handle)
        torch.save(resume_state, temporary)
        os.replace(temporary, out_dir / "resume.pt")
        say(
            f"epoch {epoch:>3}  train_loss {train_loss:.4f}  val_loss {scores['val_loss']:.4f}  "
            f"val_auc {scores['val_auc']:.4f}  val_acc {scores['val_accuracy']:.4f}  "
            f"{row['images_per_second']:.0f} img/s  {row['seconds']:.1f}s" + ("  *best" if improved else "")
        )
        if train_config.patience > 0 and stale_epochs >= train_config.patience:
            stop_reason = f"early stop: {monitor} did not improve for {stale_epochs} epochs"
            break
        if train_config.time_budget_minutes > 0 and time.perf_counter() - started > 60 * train_config.time_budget_minutes:
            stop_reason = f"time budget of {train_config.time_budget_minutes} minutes reached"
            break
    writer.close()

    speeds = [float(row["images_per_second"]) for row in history]
    best_row = next((row for row in history if int(row["epoch"]) == best_epoch), history[-1])
    summary = {
        "finished": True,
        "stop_reason": stop_reason,
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "monitor": monitor,
        "best": {key: float(best_row[key]) for key in ("val_auc", "val_loss", "val_accuracy")},
        "model": config.model.name,
        "parameters": size["parameters"],
        "flops_per_patch": size["flops"],
        "device": str(device),
        "precision": precision,
        "channels_last": train_config.channels_last,
        "train_images_per_second_median": float(np.median(speeds)) if speeds else None,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "data": {
            "root": str(train_reader.root), "format": train_reader.format, "loading": train_source.kind,
            "train_patches": train_source.num_samples, "valid_patches": valid_source.num_samples,
            "train_class_counts": {str(k): int(v) for k, v in zip(*np.unique(train_source.labels.numpy(), return_counts=True))},
            "skipped_files": train_source.skipped + valid_source.skipped,
        },
        "contract": contract,
        "checkpoints": {"best": str(out_dir / "best.safetensors"), "last": str(out_dir / "last.safetensors")},
    }
    _write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    say(f"done: {stop_reason}; best {monitor} {best_value:.4f} at epoch {best_epoch}")
    return summary

