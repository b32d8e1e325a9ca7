"""Benchmark the batch sources with augmentation, and the memory of streamed training at full scale.

Part 1, loader speed (patches per second delivered as AUGMENTED float batches: uint8 batch from the
source -> float [0, 1] -> ``augment_batch`` with dihedral + colour + HED jitter), for each on-disk
format on the shared real data (``--data``):

- ``h5``: ``pcam-h5`` train (2,000 patches, gzip-9 chunks);
- ``folders``: ``pcam-jpg`` train (a seeded subset of ``--limit`` JPEG files);
- ``kaggle``: the ``pcam-h5`` train split converted with ``pcamlab.data.convert`` into TIFFs in a
  temporary folder (its ``train`` part: 90% of them).

and for each source: ``ram cold`` (decode the split into RAM, then one augmented epoch: what the first
epoch of a RAM-cached run costs), ``ram warm`` (one augmented epoch from the RAM cache, every later
epoch), and ``stream`` with 0, 1 and 2 DataLoader workers (decoding every epoch; worker start-up
included, as the loader starts them per epoch). Each figure is the median of ``--repeats`` runs; the
spread (min-max) is reported because the machine is shared. The OS file cache is warm after the
first repeat (this script does not drop it), so ``cold`` means "not yet decoded", not "not yet read
from disk".

Part 2, model speed: optimiser steps per second of the default model (``simple-cnn``) on a fixed
batch already in memory (forward, backward, AdamW step; no data loading), as patches per second, so
the report can state loader speed / training speed.

Part 3, memory at full scale: ``pcamlab.train.loop.train`` with ``data.cache=stream`` for
``--train-steps`` steps on a synthetic official-size training file (262,144 x 96 x 96 x 3, written
by ``scripts/make_synthetic_pcam.py`` under ``/tmp`` unless ``--synthetic`` names an existing one,
and deleted afterwards unless ``--keep-synthetic``). Training runs in a fresh process; this script
samples the summed PSS and RSS of that process and its DataLoader workers every 0.2 s and also
reads ``getrusage`` ``ru_maxrss`` of the process and of its largest child. Target: under 2 GB.

Usage:
    python scripts/bench_loader.py                                  # everything (~5-10 min on 2 cores)
    python scripts/bench_loader.py --skip-memory --repeats 3        # loader and model speed only
    python scripts/bench_loader.py --only-memory --synthetic /tmp/pcamlab-scale/full --keep-synthetic
    python scripts/bench_loader.py --json bench.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from pcamlab.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from pcamlab.data import load_split_arrays, open_split
from pcamlab.data.augment import augment_batch
from pcamlab.data.loader import InMemoryBatches, StreamingBatches
from pcamlab.runtime.contract import InputContract

__all__ = [
    "BENCH_AUGMENT",
    "SubsetReader",
    "consume",
    "bench_source_kinds",
    "bench_model_training",
    "bench_streaming_training_memory",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PCAMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
MEMORY_TARGET_BYTES = 2 * 1024**3
SPEED_RATIO_TARGET = 5.0

# dihedral + colour + HED, the augmentation a real run would use
BENCH_AUGMENT = AugmentConfig(dihedral=True, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.04, hed=0.05)


class SubsetReader:
    """A fixed subset of a reader's items, with the reader contract the batch sources use.

    Picklable and fork-safe as long as the wrapped reader is (the HDF5 reader re-opens per process).
    """

    def __init__(self, reader, indices: np.ndarray):
        self.reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        self.root, self.split, self.format = reader.root, reader.split, reader.format
        self.skip_bad = getattr(reader, "skip_bad", False)
        self.labels = np.asarray(reader.labels)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.reader[int(self.indices[index])]

    def name(self, index: int) -> str:
        return self.reader.name(int(self.indices[index]))


def consume(source, seed: int, augment: AugmentConfig | None = BENCH_AUGMENT) -> tuple[int, float]:
    """One epoch of ``source`` as float batches, augmented unless ``augment`` is None; (patches, seconds)."""
    generator = torch.Generator().manual_seed(seed)
    patches = 0
    started = time.perf_counter()
    for images, labels, _ in source.epoch(seed=seed):
        x = InputContract.to_unit(images)  # (B, 3, 96, 96) float in [0, 1], channels_last strides
        if augment is not None:
            x = augment_batch(x, augment, generator)
        patches += len(labels)
    return patches, time.perf_counter() - started


def _summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": rates}


def bench_source_kinds(
    reader, *, repeats: int = 3, batch_size: int = 64, workers: tuple[int, ...] = (0, 1, 2),
    augment: AugmentConfig | None = BENCH_AUGMENT,
) -> dict[str, dict]:
    """Patches/s of one split for ram cold, ram warm and stream with each worker count (augmented unless None)."""
    results: dict[str, dict] = {}
    cold, decode_only, warm = [], [], []
    source = None
    for repeat in range(repeats):
        started = time.perf_counter()
        images, labels, skipped = load_split_arrays(reader)
        decoded = time.perf_counter() - started
        source = InMemoryBatches(images, labels, batch_size, shuffle=True, drop_last=False, skipped=skipped)
        patches, seconds = consume(source, seed=repeat, augment=augment)
        cold.append(patches / (decoded + seconds))
        decode_only.append(len(labels) / decoded)
    for repeat in range(repeats):
        patches, seconds = consume(source, seed=100 + repeat, augment=augment)
        warm.append(patches / seconds)
    results["ram cold"] = _summary(cold)
    results["decode only"] = _summary(decode_only)
    results["ram warm"] = _summary(warm)
    for count in workers:
        stream = StreamingBatches(reader, batch_size, shuffle=True, num_workers=count)
        rates = []
        for repeat in range(repeats):
            patches, seconds = consume(stream, seed=200 + repeat, augment=augment)
            rates.append(patches / seconds)
        results[f"stream w{count}"] = _summary(rates)
    return results


def bench_model_training(
    *, batch_size: int = 64, steps: int = 20, warmup: int = 3, device: str = "cpu", repeats: int = 3
) -> dict:
    """Patches/s the default model consumes in training: forward, backward and AdamW step on a fixed batch."""
    from pcamlab.models import build_model
    from pcamlab.runtime.device import autocast, resolve_device, resolve_precision

    torch_device = resolve_device(device)
    precision = resolve_precision("auto", torch_device)
    model = build_model(ModelConfig()).to(torch_device).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 96, 96, generator=generator).to(torch_device)  # (B, 3, 96, 96)
    x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).float().to(torch_device)

    def step() -> None:
        with autocast(torch_device, precision):
            logits = model(x)  # (B, 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float().reshape(-1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize() -> None:
        if torch_device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize()
        rates.append(steps * batch_size / (time.perf_counter() - started))
    return {
        "device": str(torch_device), "precision": precision, "threads": torch.get_num_threads(),
        "batch_size": batch_size, "steps": steps, **_summary(rates),
    }


# ------------------------------------------------------------------------------------------------
# Memory of streamed training at full scale.


def _process_tree(root_pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(parents.get(pid, []))
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) when it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class _TreeSampler(threading.Thread):
    """Samples the summed PSS/RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss_kib = self.peak_rss_kib = self.peak_processes = self.samples = 0
        self.timeline: list[tuple[float, int]] = []  # (seconds since start, summed PSS KiB)
        self._halt = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self._halt.is_set():
            tree = _process_tree(self.pid)
            usage = [_memory_kib(pid) for pid in tree]
            self.peak_pss_kib = max(self.peak_pss_kib, sum(pss for pss, _ in usage))
            self.timeline.append((time.perf_counter() - started, sum(pss for pss, _ in usage)))
            self.peak_rss_kib = max(self.peak_rss_kib, sum(rss for _, rss in usage))
            self.peak_processes = max(self.peak_processes, len(tree))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _quartile_peaks(timeline: list[tuple[float, int]]) -> list[int]:
    """Peak summed PSS (bytes) in each quarter of the run: growth from one to the next would be a leak."""
    if not timeline:
        return []
    end = timeline[-1][0] or 1.0
    peaks = [0, 0, 0, 0]
    for seconds, pss in timeline:
        quarter = min(int(4 * seconds / end), 3)
        peaks[quarter] = max(peaks[quarter], pss * 1024)
    return peaks


def _train_child(config_values: dict, out_dir: str, queue) -> None:
    """Runs in a fresh (spawned) process: train, then report the summary and getrusage peaks."""
    from pcamlab.config import config_from_dict
    from pcamlab.train.loop import train

    lines: list[str] = []
    started = time.perf_counter()
    try:
        summary = train(config_from_dict(config_values), out_dir, progress=False, log=lines.append)
        error = None
    except Exception as exception:  # reported to the parent, which prints it
        summary, error = None, f"{type(exception).__name__}: {exception}"
    queue.put({
        "summary": summary,
        "error": error,
        "log": lines,
        "seconds": time.perf_counter() - started,
        "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_largest_child_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    })


def bench_streaming_training_memory(
    data_root: Path, *, steps: int = 200, num_workers: int = 2, batch_size: int = 64, device: str = "cpu",
    threads: int = 0,
) -> dict:
    """Peak memory and speed of ``train`` with ``data.cache=stream`` on ``data_root`` (h5 train + valid)."""
    config = {
        "data": {"path": str(data_root), "format": "h5", "cache": "stream", "num_workers": num_workers},
        "augment": {
            key: getattr(BENCH_AUGMENT, key) for key in ("dihedral", "brightness", "contrast", "saturation", "hue", "hed")
        },
        "model": {"name": ModelConfig().name},
        "train": {"epochs": 1, "max_steps_per_epoch": steps, "batch_size": batch_size, "device": device, "patience": 0,
                  "threads": threads},
    }
    out_dir = tempfile.mkdtemp(prefix="pcamlab-bench-run-")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_train_child, args=(config, out_dir, queue))
    child.start()
    sampler = _TreeSampler(child.pid)
    sampler.start()
    result = queue.get()  # before join: a full queue would block the child's exit
    child.join()
    sampler.stop()
    shutil.rmtree(out_dir, ignore_errors=True)
    summary = result["summary"] or {}
    return {
        "config": config,
        "error": result["error"],
        "log": result["log"],
        "seconds": round(result["seconds"], 1),
        "train_images_per_second": summary.get("train_images_per_second_median"),
        "train_patches": summary.get("data", {}).get("train_patches"),
        "loading": summary.get("data", {}).get("loading"),
        "peak_pss_bytes": sampler.peak_pss_kib * 1024,
        "peak_rss_sum_bytes": sampler.peak_rss_kib * 1024,
        "maxrss_self_bytes": result["maxrss_self_kib"] * 1024,
        "maxrss_largest_child_bytes": result["maxrss_largest_child_kib"] * 1024,
        "peak_processes": sampler.peak_processes,
        "pss_quartile_peaks_bytes": _quartile_peaks(sampler.timeline),
        "samples": sampler.samples,
        "under_target": sampler.peak_pss_kib * 1024 < MEMORY_TARGET_BYTES,
    }


# ------------------------------------------------------------------------------------------------
# Command line.


def _readers(data: Path, limit: int, scratch: Path) -> dict:
    from pcamlab.data.convert import convert

    readers = {}
    generator = np.random.default_rng(0)
    h5 = open_split(data / "pcam-h5", "train")
    readers["h5"] = SubsetReader(h5, np.sort(generator.permutation(len(h5))[:limit]))
    folders = open_split(data / "pcam-jpg", "train")
    readers["folders"] = SubsetReader(folders, np.sort(generator.permutation(len(folders))[:limit]))
    kaggle_root = scratch / "kaggle"
    convert(data / "pcam-h5", kaggle_root, to="kaggle", splits=["train"])
    kaggle = open_split(kaggle_root, "train")
    readers["kaggle"] = SubsetReader(kaggle, np.sort(generator.permutation(len(kaggle))[:limit]))
    return readers


def _gb(value: float) -> str:
    return f"{value / 1024**3:.2f} GiB"


def _rate(summary: dict) -> str:
    return f"{summary['median']:,.0f} ({summary['min']:,.0f}-{summary['max']:,.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=2000, help="patches per format (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure, median reported (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2", help="streaming worker counts (default: %(default)s)")
    parser.add_argument("--formats", default="h5,folders,kaggle")
    parser.add_argument("--model-steps", type=int, default=10, help="timed steps per model-speed repeat")
    parser.add_argument("--device", default="cpu", help="device of the model-speed and memory runs")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads, also train.threads of the memory run (0 = torch's default; 1 is faster on a "
        "busy 2-core machine, where two threads stall each other)",
    )
    parser.add_argument("--raw", action="store_true", help="measure the loader without augmentation (float only)")
    parser.add_argument("--train-steps", type=int, default=200, help="steps of the memory run (default: %(default)s)")
    parser.add_argument("--train-batch-size", type=int, default=64, help="batch of the memory run (default: %(default)s)")
    parser.add_argument("--train-workers", type=int, default=2, help="workers of the memory run (default: %(default)s)")
    parser.add_argument("--synthetic", type=Path, help="folder with the full-size synthetic h5 train (+ valid) files")
    parser.add_argument("--keep-synthetic", action="store_true", help="do not delete the synthetic files")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 3 (the full-size streaming run)")
    parser.add_argument("--only-memory", action="store_true", help="run part 3 only")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    arguments = parser.parse_args(argv)

    if arguments.threads > 0:
        torch.set_num_threads(arguments.threads)
    augment = None if arguments.raw else BENCH_AUGMENT
    report: dict = {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
        "augment": None if augment is None else augment.__dict__,
    }
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, load average {report['loadavg_start']}")

    if not arguments.only_memory:
        workers = tuple(int(count) for count in arguments.workers.split(","))
        with tempfile.TemporaryDirectory(prefix="pcamlab-bench-") as scratch:
            readers = _readers(arguments.data, arguments.limit, Path(scratch))
            report["loader"] = {}
            for name in arguments.formats.split(","):
                reader = readers[name]
                print(f"benchmarking {name} ({len(reader)} patches from {reader.root}) ...", flush=True)
                report["loader"][name] = {
                    "patches": len(reader),
                    **bench_source_kinds(
                        reader, repeats=arguments.repeats, batch_size=arguments.batch_size, workers=workers,
                        augment=augment,
                    ),
                }
        report["model"] = bench_model_training(
            batch_size=arguments.batch_size, steps=arguments.model_steps, device=arguments.device,
            repeats=arguments.repeats,
        )
        columns = ["decode only", "ram cold", "ram warm"] + [f"stream w{count}" for count in workers]
        what = "raw (no augmentation)" if augment is None else "augmented"
        print(f"\n{what} patches/s, median (min-max) of {arguments.repeats} runs; batch {arguments.batch_size}")
        print("| format | patches | " + " | ".join(columns) + " |")
        print("|---" * (len(columns) + 2) + "|")
        for name, row in report["loader"].items():
            print(f"| {name} | {row['patches']} | " + " | ".join(_rate(row[column]) for column in columns) + " |")
        model = report["model"]
        print(
            f"\ntraining {ModelConfig().name} (fwd+bwd+AdamW, no data): {_rate(model)} patches/s on {model['device']} "
            f"({model['precision']}, {model['threads']} threads, batch {model['batch_size']})"
        )
        for name, row in report["loader"].items():
            ratios = {column: row[column]["median"] / model["median"] for column in columns[1:]}
            text = ", ".join(f"{column} {ratio:.1f}x" for column, ratio in ratios.items())
            print(f"loader / training speed, {name}: {text} (target >= {SPEED_RATIO_TARGET:.0f}x)")

    if not arguments.skip_memory:
        created = arguments.synthetic is None
        root = arguments.synthetic or Path(tempfile.mkdtemp(prefix="pcamlab-synthetic-", dir="/tmp"))
        try:
            if created:
                print(f"\nwriting the synthetic full-size train split into {root} (~7 GB, about 1-3 min) ...", flush=True)
                script = Path(__file__).resolve().parent / "make_synthetic_pcam.py"
                subprocess.run([sys.executable, str(script), str(root)], check=True, stderr=subprocess.DEVNULL)
                subprocess.run(
                    [sys.executable, str(script), str(root), "--split", "valid", "--n", "1024", "--seed", "1"],
                    check=True, stderr=subprocess.DEVNULL,
                )
            print(f"training {arguments.train_steps} steps streaming from {root} ...", flush=True)
            memory = bench_streaming_training_memory(
                root, steps=arguments.train_steps, num_workers=arguments.train_workers,
                batch_size=arguments.train_batch_size, device=arguments.device, threads=arguments.threads,
            )
        finally:
            if created and not arguments.keep_synthetic:
                shutil.rmtree(root, ignore_errors=True)
        report["memory"] = memory
        if memory["error"]:
            print(f"training failed: {memory['error']}")
        else:
            print(
                f"streamed training: {memory['train_patches']:,} train patches ({memory['loading']}), "
                f"{arguments.train_steps} steps of {arguments.train_batch_size}, {arguments.train_workers} workers, {memory['seconds']} s, "
                f"{memory['train_images_per_second']} patches/s end to end"
            )
            print(
                f"peak memory: PSS sum {_gb(memory['peak_pss_bytes'])} (RSS sum {_gb(memory['peak_rss_sum_bytes'])}) over "
                f"{memory['peak_processes']} processes, {memory['samples']} samples; maxrss main "
                f"{_gb(memory['maxrss_self_bytes'])}, largest worker {_gb(memory['maxrss_largest_child_bytes'])}; "
                f"{'under' if memory['under_target'] else 'OVER'} the 2 GiB target"
            )
            quarters = ", ".join(_gb(value) for value in memory["pss_quartile_peaks_bytes"])
            print(f"peak PSS sum per quarter of the run (a leak would grow): {quarters}")

    report["loadavg_end"] = os.getloadavg()
    print(f"load average at the end {report['loadavg_end']}")
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if not report.get("memory", {}).get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
