"""Training and inference throughput of the model presets, fp32 vs bf16 autocast + channels_last.

Modes: ``fp32`` (contiguous NCHW), ``fp32-cl`` (fp32, channels_last model and input), ``bf16``
(``torch.autocast(dtype=torch.bfloat16)`` + channels_last). On CPUs without native bf16
(AVX512-BF16/AMX) bf16 is emulated and slower than fp32.

Training step = forward + BCE-with-logits loss + backward + AdamW step on a batch of random
96x96 patches; inference = forward under ``torch.inference_mode`` in eval mode. Each figure is the
median images/s over ``--repeats`` timed steps after ``--warmup`` untimed ones. On a shared machine
the numbers are noisy: compare rows taken in the same run, and read the load average printed first.

Usage:
    .venv/bin/python scripts/bench_models.py --models baseline simple-cnn --repeats 3
    .venv/bin/python scripts/bench_models.py --set resnet18.width=32   # override an option
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from pcamlab.config import ModelConfig, _parse_value
from pcamlab.models import build_model, list_models, model_summary


def time_steps(step, warmup: int, repeats: int) -> float:
    """Median seconds of ``step()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def bench(name: str, options: dict, mode: str, batch_size: int, size: int, warmup: int,
          repeats: int, device: str) -> tuple[float, float]:
    """(training images/s, inference images/s) of one model in one precision mode."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, options=options)).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
    labels = (torch.arange(batch_size) % 2).float().unsqueeze(1).to(device)
    low_precision = mode == "bf16"
    if mode in ("bf16", "fp32-cl"):
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    device_type = torch.device(device).type
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_function = nn.BCEWithLogitsLoss()

    def synchronise() -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=low_precision):
            logits = model(images)  # (B, 1)
        loss = loss_function(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronise()

    def inference_step() -> None:
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=low_precision):
            model(images)
        synchronise()

    model.train()
    train_seconds = time_steps(train_step, warmup, repeats)
    model.eval()
    inference_seconds = time_steps(inference_step, warmup, repeats)
    return batch_size / train_seconds, batch_size / inference_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models(), help="presets to time (default: all)")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "fp32-cl", "bf16"],
                        help="fp32-cl = fp32 + channels_last; bf16 = bf16 autocast + channels_last model and input")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=96, help="patch side in pixels")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="MODEL.OPTION=VALUE",
                        help="override a model option, e.g. resnet18.width=32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options: dict[str, dict] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        model_name, option = key.rsplit(".", 1)
        options.setdefault(model_name, {})[option] = _parse_value(value)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, load average {load:.1f}, "
          f"batch {args.batch_size}, {args.size}px, median of {args.repeats}")
    header = f"{'model':16s} {'params':>9s} {'MFLOPs':>8s}"
    for mode in args.modes:
        header += f" {mode + ' train/s':>14s} {mode + ' infer/s':>14s}"
    print(header)
    for name in args.models:
        summary = model_summary(build_model(ModelConfig(name=name, options=options.get(name, {}))), args.size)
        row = f"{name:16s} {summary['parameters']:9d} {summary['flops'] / 1e6:8.0f}"
        for mode in args.modes:
            train_rate, inference_rate = bench(name, options.get(name, {}), mode, args.batch_size,
                                               args.size, args.warmup, args.repeats, args.device)
            row += f" {train_rate:14.1f} {inference_rate:14.1f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
