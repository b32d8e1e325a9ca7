"""Throughput benchmark: training and inference images/s against the machine's measured peak.

For every model, batch size, precision (``fp32``; ``bf16`` = ``torch.autocast`` to bfloat16) and
memory layout (channels_last on/off) :func:`run_bench` measures

- training images/s: forward + backward + AdamW step on synthetic normalised input (the data
  pipeline is NOT included), median over the timed steps after warm-up;
- inference images/s: forward under ``torch.inference_mode``, median likewise;
- with ``onnx=True``, inference images/s of the model exported to ONNX (float NCHW input) and run by
  onnxruntime (fp32, one row per model and batch size);
- with ``compile=True``, inference images/s after ``torch.compile`` (compilation time excluded).

FLOPs per patch come from :func:`pcamlab.models.model_summary` (2 x multiply-adds of the forward
pass). Peak FLOP/s is measured with a large square matmul in fp32 (always) and in bf16 (when asked),
best of a few repeats, at the start and again after each model, keeping the best (``matmul_flops``).
The ceiling a row is compared with (``peak_flops``) is its precision's matmul peak, and for bf16 the
larger of the bf16 and fp32 ones: on a CPU without bf16 units (AVX2-only) bf16 is emulated through the
fp32 units, and its matmul measured at only ~0.2-0.5 GFLOP/s here, below what bf16 convolutions reach.
The fraction of peak is ``images/s x FLOPs per image / peak_flops`` for inference and ``x 3``
(forward + backward = about three forwards) for training. Timings on a shared machine are noisy
(the 1-minute load average is recorded per row): repeat the run and compare.

Example:
    >>> rows = run_bench(["baseline"], precisions=["fp32"], batch_sizes=[32], steps=5)
    >>> print(format_table(rows))
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pcamlab.config import ModelConfig
from pcamlab.fileio import json_safe, publish, temporary_file
from pcamlab.errors import ConfigError, RunFolderError, did_you_mean

__all__ = [
    "COLUMNS",
    "PEAK_SIZES",
    "PRECISIONS",
    "bench_model_file",
    "format_model_table",
    "format_table",
    "measure_peak_flops",
    "model_label",
    "parse_model",
    "run_bench",
    "time_steps",
    "write_results",
]

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEAK_SIZES = {"fp32": 2048, "bf16": 1024}  # default side of the peak-FLOP/s matmul per precision

# Keys of every row, in table / CSV order.
COLUMNS = [
    "model", "runtime", "precision", "channels_last", "batch_size", "parameters", "flops_per_image",
    "train_images_per_second", "train_step_ms", "train_fraction_of_peak",
    "inference_images_per_second", "inference_batch_ms", "inference_fraction_of_peak",
    "matmul_flops", "peak_flops", "threads", "device", "steps", "warmup", "load_average",
]


def _load_average() -> float | None:
    """The 1-minute load average (how busy the shared machine was), where the OS reports one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``step()`` over ``steps`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _synchronize(device)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def measure_peak_flops(
    precision: str = "fp32", *, size: int | None = None, repeats: int = 5, max_seconds: float = 2.0,
    device: str | torch.device = "cpu", seed: int = 0,
) -> float:
    """Best FLOP/s of a square matmul in ``precision`` (2 size^3 FLOPs per product).

    Args:
        precision: ``fp32`` or ``bf16``.
        size: side of the matrices; default :data:`PEAK_SIZES` (2048 fp32; 1024 bf16, because bf16
            matmul is emulated on AVX2-only CPUs and measured at ~0.5 GFLOP/s, seconds per product).
        repeats: at most this many timed products after one warm-up; the fastest counts.
        max_seconds: stop repeating once the timed products took this long (at least one runs).
        device: where to run.
        seed: seed of the random matrices.
    """
    device = torch.device(device)
    size = size or PEAK_SIZES[precision]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    left = torch.randn(size, size, generator=generator).to(device, _DTYPES[precision])
    right = torch.randn(size, size, generator=generator).to(device, _DTYPES[precision])
    torch.matmul(left, right)
    _synchronize(device)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(left, right)
        _synchronize(device)
        duration = time.perf_counter() - start
        best, spent = min(best, duration), spent + duration
        if spent > max_seconds:
            break
    return 2.0 * size**3 / best


def _check_list(name: str, values: Sequence[Any], allowed: Sequence[Any] | None = None) -> list[Any]:
    values = list(values)
    if not values:
        raise ConfigError(f"{name} needs at least one value; got an empty list", parameters=(name,))
    for value in values:
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{name} must be among {list(allowed)}; got {value!r}{did_you_mean(value, allowed)}",
                              parameters=(name,))
    return values


def parse_model(model: str | ModelConfig) -> ModelConfig:
    """A model to bench: ``NAME`` (the builder's defaults) or ``NAME:OPTION=VALUE[:OPTION=VALUE...]``.

    Values are read as YAML scalars (``simple-cnn:width=16:dropout=0.1``); :func:`model_label` writes
    the same form back, so a row's label is what to pass again.

    Raises:
        ConfigError: an unknown model name (with a suggestion) or an option without ``=VALUE``.
    """
    import yaml

    from pcamlab.models import list_models

    if isinstance(model, ModelConfig):
        config = ModelConfig(name=model.name, options=dict(model.options))
    else:
        name, *options = str(model).split(":")
        values = {}
        for option in options:
            key, equals, value = option.partition("=")
            if not equals or not key.strip():
                raise ConfigError(f"models: {model!r} has option {option!r} without a value; write NAME:OPTION=VALUE, "
                                  "e.g. simple-cnn:width=16", parameters=("models",))
            values[key.strip()] = yaml.safe_load(value)
        config = ModelConfig(name=name.strip(), options=values)
    names = list_models()
    if config.name not in names:
        raise ConfigError(f"models must be among {names}; got {config.name!r}{did_you_mean(config.name, names)}",
                          parameters=("models",))
    return config


def model_label(model: ModelConfig) -> str:
    """``simple-cnn:width=16``: the model's name and options in the form :func:`parse_model` reads."""
    return ":".join([model.name, *(f"{key}={value}" for key, value in model.options.items())])


def _build(model: ModelConfig, seed: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    from pcamlab.models import build_model

    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's global stream
        torch.manual_seed(seed)
        model = build_model(model)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _inputs(batch_size: int, input_size: int, seed: int, device: torch.device, channels_last: bool):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch_size, 3, input_size, input_size, generator=generator)  # (B, 3, H, W) normalised
    labels = torch.randint(0, 2, (batch_size,), generator=generator).float()
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(device)


def _fraction(images_per_second: float | None, flops: int, factor: int, peak: float) -> float | None:
    if images_per_second is None:
        return None
    return images_per_second * flops * factor / peak


def _torch_rows(config, summary, precision, channels_last, batch_size, *, steps, warmup, input_size, seed,
                device, compile) -> list[dict[str, Any]]:
    from pcamlab.runtime.device import autocast

    x, labels = _inputs(batch_size, input_size, seed, device, channels_last)
    model = _build(config, seed, device, channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def train_step() -> None:
        with autocast(device, precision):
            logits = model(x)  # (B, 1)
        loss = F.binary_cross_entropy_with_logits(logits.float().reshape(-1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_seconds = time_steps(train_step, steps, warmup, device)
    model.eval()

    def inference(module: torch.nn.Module) -> float:
        def step() -> None:
            with torch.inference_mode(), autocast(device, precision):
                module(x)

        return time_steps(step, steps, warmup, device)

    runs = [("torch", inference(model), train_seconds)]
    if compile:
        compiled = torch.compile(model)
        with torch.inference_mode(), autocast(device, precision):
            compiled(x)  # compile outside the timing
        runs.append(("torch.compile", inference(compiled), None))
    rows = []
    for runtime, inference_seconds, training_seconds in runs:
        train_rate = batch_size / training_seconds if training_seconds else None
        inference_rate = batch_size / inference_seconds
        rows.append({
            "model": model_label(config), "runtime": runtime, "precision": precision, "channels_last": channels_last,
            "batch_size": batch_size, **summary,
            "train_images_per_second": train_rate,
            "train_step_ms": training_seconds * 1e3 if training_seconds else None,
            "inference_images_per_second": inference_rate,
            "inference_batch_ms": inference_seconds * 1e3,
        })
    return rows


def _onnx_row(config, summary, batch_size, *, steps, warmup, input_size, seed, threads) -> dict[str, Any]:
    import onnxruntime

    from pcamlab.deploy.export import NormalisedInputModel, export_onnx

    model = _build(config, seed, torch.device("cpu"), channels_last=False).eval()
    x, _ = _inputs(batch_size, input_size, seed, torch.device("cpu"), channels_last=False)
    with tempfile.TemporaryDirectory(prefix="pcamlab-bench-") as folder:
        path = Path(folder) / f"{config.name}.onnx"
        wrapped = NormalisedInputModel(model).eval()
        try:  # the legacy exporter is the quicker one here ...
            export_onnx(wrapped, x[:2].contiguous(), path, exporter="legacy")
        except Exception:  # ... but lacks some ops (aten::rot90 in p4m-densenet), which dynamo has
            export_onnx(wrapped, x[:2].contiguous(), path, exporter="dynamo")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    seconds = time_steps(lambda: session.run(["probability"], feed), steps, warmup, torch.device("cpu"))
    rate = batch_size / seconds
    return {
        "model": model_label(config), "runtime": "onnxruntime", "precision": "fp32", "channels_last": None,
        "batch_size": batch_size, **summary,
        "train_images_per_second": None, "train_step_ms": None,
        "inference_images_per_second": rate, "inference_batch_ms": seconds * 1e3,
    }


def run_bench(
    models: Sequence[str | ModelConfig] | None = None,
    *,
    precisions: Sequence[str] = ("fp32",),
    batch_sizes: Sequence[int] = (64,),
    channels_last: Sequence[bool] = (True, False),
    steps: int = 10,
    warmup: int = 3,
    onnx: bool = False,
    compile: bool = False,
    device: str = "cpu",
    threads: int = 0,
    input_size: int = 96,
    seed: int = 0,
    peak_size: int | None = None,
    log: Callable[[str], object] | None = None,
) -> list[dict[str, Any]]:
    """Measure training and inference throughput per model, batch size, precision and layout.

    Args:
        models: models to time, each a registered name (built with its builder's defaults), a
            ``NAME:OPTION=VALUE[:...]`` string (see :func:`parse_model`) or a ``ModelConfig``; default the
            course ``baseline`` and the default model (``pcamlab.models.default_model()``: simple-cnn
            width 16, as in configs/default.yaml). Rows are labelled by :func:`model_label`.
        precisions: among ``fp32`` and ``bf16`` (autocast).
        batch_sizes: images per step.
        channels_last: layouts to try (True = NHWC memory format).
        steps: timed steps per measurement (the median counts).
        warmup: untimed steps before timing.
        onnx: also time onnxruntime inference (fp32, CPU).
        compile: also time ``torch.compile`` inference (needs a C++ compiler on CPU; slow to compile).
        device: ``cpu``, ``cuda`` or ``auto``.
        threads: torch (and onnxruntime) CPU threads for the run; 0 keeps torch's current setting.
        input_size: patch side in pixels.
        seed: seeds weights, inputs and the peak matrices.
        peak_size: side of the matmul that measures peak FLOP/s (default per precision, see
            :func:`measure_peak_flops`).
        log: optional callable receiving one line per finished measurement.

    Returns:
        One dict per measurement with the keys of :data:`COLUMNS` (``None`` where not applicable;
        fractions in [0, 1], rates in images/s, ``peak_flops`` in FLOP/s).

    Raises:
        ConfigError: an unknown model or precision, an empty list, or steps < 1.

    Example:
        >>> rows = run_bench(["baseline"], precisions=["fp32", "bf16"], batch_sizes=[32, 64], onnx=True)
    """
    from pcamlab.models import default_model, model_summary
    from pcamlab.runtime.device import resolve_device

    models = [parse_model(model) for model in _check_list("models", ["baseline", default_model()] if models is None
                                                              else models)]
    precisions = _check_list("precisions", precisions, PRECISIONS)
    batch_sizes = _check_list("batch_sizes", batch_sizes)
    layouts = _check_list("channels_last", channels_last, (True, False))
    if any(not isinstance(size, int) or size < 1 for size in batch_sizes):
        raise ConfigError(f"batch_sizes must be positive integers; got {batch_sizes}", parameters=("batch_sizes",))
    if steps < 1 or warmup < 0:
        raise ConfigError(f"steps must be >= 1 and warmup >= 0; got steps={steps}, warmup={warmup}",
                          parameters=("steps", "warmup"))
    if onnx:
        from pcamlab.runtime.predictor import require_onnx

        require_onnx()
    torch_device = resolve_device(device)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        # fp32 is always measured: it is also the ceiling of bf16 on CPUs without bf16 units.
        measured = ["fp32"] + [precision for precision in precisions if precision != "fp32"]
        peaks = {precision: measure_peak_flops(precision, size=peak_size, device=torch_device, seed=seed)
                 for precision in measured}
        if log is not None:
            log("peak " + ", ".join(f"{key} {value / 1e9:.1f} GFLOP/s" for key, value in peaks.items())
                + f" (square matmul, {used_threads} threads)")
        rows: list[dict[str, Any]] = []
        common = {"steps": steps, "warmup": warmup, "input_size": input_size, "seed": seed}
        for config in models:
            summary_values = model_summary(config, input_size)
            summary = {"parameters": summary_values["parameters"], "flops_per_image": summary_values["flops"]}
            for batch_size in batch_sizes:
                new_rows = []
                for precision in precisions:
                    for layout in layouts:
                        new_rows += _torch_rows(config, summary, precision, layout, batch_size, device=torch_device,
                                                compile=compile, **common)
                if onnx:
                    new_rows.append(_onnx_row(config, summary, batch_size, threads=used_threads, **common))
                for row in new_rows:
                    row.update({"threads": used_threads, "device": str(torch_device), "steps": steps,
                                "warmup": warmup, "load_average": _load_average()})
                    if log is not None:
                        log(_row_line(row))
                rows += new_rows
            # Measure the peak again after each model and keep the best: on a shared machine one
            # measurement can land in a busy moment and make every fraction too large.
            for precision, best in list(peaks.items()):
                again = measure_peak_flops(precision, size=peak_size, device=torch_device, seed=seed)
                peaks[precision] = max(best, again)
        for row in rows:
            row["matmul_flops"] = peaks[row["precision"]]
            peak = max(peaks[row["precision"]], peaks["fp32"])
            row["peak_flops"] = peak
            row["train_fraction_of_peak"] = _fraction(row["train_images_per_second"], row["flops_per_image"], 3, peak)
            row["inference_fraction_of_peak"] = _fraction(
                row["inference_images_per_second"], row["flops_per_image"], 1, peak)
        return [{key: row.get(key) for key in COLUMNS} for row in rows]
    finally:
        torch.set_num_threads(previous_threads)


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _layout(value: bool | None) -> str:
    return "-" if value is None else ("on" if value else "off")


def _row_line(row: dict[str, Any]) -> str:
    return (f"{row['model']} {row['runtime']} {row['precision']} channels_last={_layout(row['channels_last'])} "
            f"batch {row['batch_size']}: train {_number(row['train_images_per_second'])} img/s, "
            f"inference {_number(row['inference_images_per_second'])} img/s")


TABLE_HEADER = ["model", "runtime", "precision", "ch_last", "batch", "MFLOP/img",
                "train img/s", "train %peak", "infer img/s", "infer %peak"]


def bench_model_file(
    model: str | os.PathLike,
    *,
    batch_sizes: Sequence[int] = (64,),
    patches: int = 256,
    tta: bool = False,
    repeats: int = 3,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """End-to-end prediction speed of a model file through its Predictor (what predict, evaluate, slides pay).

    Unlike :func:`run_bench` (the network alone on synthetic normalised input), this times
    ``load_predictor(model).predict_proba(uint8 patches)``: the batch check, the contract's stain
    normaliser and transform to model input, the forward pass and, with ``tta``, the 8 dihedral views.
    The patches are real ones of the shipped sample's valid split (``patches`` of them, repeated as
    needed). The median of ``repeats`` timed passes after one untimed pass is reported.

    Args:
        model: a ``.safetensors`` checkpoint, an ``.onnx`` or TorchScript ``.pt`` file.
        batch_sizes: patches per forward pass to time.
        patches: patches per timed pass.
        tta: time test-time augmentation (8 forward passes per patch).
        repeats: timed passes per batch size.
        device: where torch runtimes run.

    Returns:
        One dict per batch size: ``model, runtime, batch_size, tta, patches, images_per_second,
        ms_per_patch, load_average``; ``runtime`` is ``torch``, ``onnx``, ``int8`` (an export quantised by
        ``pcamlab export --quantize int8``) or ``torchscript``, the names ``--runtime`` takes.

    Raises:
        ConfigError: an empty or non-positive batch size list, patches or repeats < 1.
        CheckpointError: the file cannot be loaded.
    """
    from pcamlab.data import open_split
    from pcamlab.runtime.fastest import runtime_of
    from pcamlab.runtime.predictor import load_predictor

    batch_sizes = _check_list("batch_sizes", batch_sizes)
    if any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in batch_sizes):
        raise ConfigError(f"batch_sizes must be positive integers; got {batch_sizes}", parameters=("batch_sizes",))
    if patches < 1 or repeats < 1:
        raise ConfigError(f"patches and repeats must be >= 1; got patches={patches}, repeats={repeats}",
                          parameters=("patches", "repeats"))
    predictor = load_predictor(model, device=device)
    runtime = runtime_of(predictor)  # torch | onnx | int8 | torchscript
    reader = open_split("sample", "valid")
    sample = np.stack([reader[index % len(reader)][0] for index in range(min(patches, len(reader)))])
    images = np.resize(sample, (patches, *sample.shape[1:]))  # (patches, 96, 96, 3) uint8, real pixels
    rows = []
    for batch_size in batch_sizes:
        predictor.predict_proba(images[: max(batch_size, 1)], batch_size=batch_size, tta=tta)  # warm-up
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict_proba(images, batch_size=batch_size, tta=tta)
            timings.append(time.perf_counter() - start)
        seconds = statistics.median(timings)
        rows.append({
            "model": str(model), "runtime": runtime, "batch_size": batch_size, "tta": tta, "patches": patches,
            "images_per_second": patches / seconds, "ms_per_patch": 1e3 * seconds / patches,
            "load_average": _load_average(),
        })
    return rows


def format_model_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`bench_model_file` as an aligned text table."""
    header = ["model", "runtime", "batch", "tta", "patches/s", "ms/patch"]
    lines = [[Path(row["model"]).name, row["runtime"], str(row["batch_size"]), "on" if row["tta"] else "off",
              f"{row['images_per_second']:,.0f}", f"{row['ms_per_patch']:.3f}"] for row in rows]
    widths = [max(len(line[column]) for line in [header, *lines]) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) if column >= 2 else cell.ljust(width)
                                for column, (cell, width) in enumerate(zip(line, widths)))
                      for line in [header, *lines])


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`run_bench` rows, with the measured peaks underneath."""
    cells = [TABLE_HEADER] + [
        [
            str(row["model"]), str(row["runtime"]), str(row["precision"]), _layout(row["channels_last"]),
            str(row["batch_size"]), _number(row["flops_per_image"] / 1e6, 1),
            _number(row["train_images_per_second"]), _percent(row["train_fraction_of_peak"]),
            _number(row["inference_images_per_second"]), _percent(row["inference_fraction_of_peak"]),
        ]
        for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(TABLE_HEADER))]
    text_columns = 4  # left-align the names, right-align the numbers
    lines = [
        "  ".join(cell.ljust(width) if column < text_columns else cell.rjust(width)
                  for column, (cell, width) in enumerate(zip(line, widths))).rstrip()
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    peaks: dict[str, str] = {}
    for row in rows:
        text = f"{row['precision']} {row['matmul_flops'] / 1e9:.1f} GFLOP/s"
        if row["peak_flops"] != row["matmul_flops"]:
            text += f" (rows compared with the fp32 peak, {row['peak_flops'] / 1e9:.1f})"
        peaks.setdefault(row["precision"], text)
    if rows:
        first = rows[0]
        lines.append(
            "peak (matmul): " + ", ".join(peaks.values())
            + f"; {first['threads']} threads on {first['device']}; median of {first['steps']} steps after "
            f"{first['warmup']} warm-up; training %peak counts 3x forward FLOPs"
        )
        loads = [row["load_average"] for row in rows if row.get("load_average") is not None]
        if loads:
            lines.append(f"1-minute load average during the run: {min(loads):.1f} to {max(loads):.1f} "
                         f"(above the thread count means other work shared the CPU: numbers are noisy)")
    return "\n".join(lines)


def write_results(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write rows as ``.json`` (a list of objects) or ``.csv`` (columns :data:`COLUMNS`), atomically.

    Raises:
        ConfigError: the suffix is neither ``.json`` nor ``.csv``.
        RunFolderError: the file exists and ``force`` is off.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ConfigError(f"the results file must end in .json or .csv; got {str(path)!r}")
    if path.exists() and not force:
        raise RunFolderError(f"{str(path)!r} already exists; choose another path or pass force=True to replace it",
                       parameters=("force",))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_file(path)  # pid in the name: a killed writer's file is removed by the next one
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as file:
            if suffix == ".json":
                json.dump(json_safe(list(rows)), file, indent=2, allow_nan=False)
            else:
                kernel_rows = all(set(row) <= set(COLUMNS) for row in rows)  # else bench_model_file rows
                writer = csv.DictWriter(file, fieldnames=COLUMNS if kernel_rows else list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        publish(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path
