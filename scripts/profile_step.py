"""Where a training step's time goes: ``torch.profiler`` over a few steps of one model, by op.

Synthetic batches (no data loading), the course recipe's optimiser (Adam), fp32, channels_last. Prints a
Markdown table of each op's share of the self CPU time and the median step time, with the CPU named::

    python scripts/profile_step.py --model baseline --batch-size 32 --steps 20
    python scripts/profile_step.py --model baseline --batch-size 32 --steps 20 --malloc default

``--malloc reuse`` (the default) applies :func:`pcamlab.runtime.memory.reuse_freed_memory` first, as the
training loop does on a CPU; ``--malloc default`` keeps glibc's settings (each step's big blocks are
mapped and zero-filled by the kernel again: it shows up as ``fill_``/``empty`` time and kernel time).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from pcamlab.config import ModelConfig
from pcamlab.errors import ConfigError
from pcamlab.models import build_model
from pcamlab.runtime.memory import reuse_freed_memory
from pcamlab.train.time_to_auc import cpu_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="baseline")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (after 5 warm-up steps)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--malloc", choices=("reuse", "default"), default="reuse")
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    for name in ("batch_size", "steps", "rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0 = torch's default); got {args.threads}")
    if args.malloc == "reuse":
        reuse_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        model = build_model(ModelConfig(name=args.model)).to(memory_format=torch.channels_last).train()
    except ConfigError as error:
        parser.error(str(error))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(args.batch_size, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (args.batch_size,)).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(images).reshape(-1), labels)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    seconds = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    events = [event for event in profiler.key_averages() if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)
    events.sort(key=lambda event: event.self_cpu_time_total, reverse=True)
    median = statistics.median(seconds)
    cpu = cpu_description()
    print(f"{args.model}, batch {args.batch_size}, fp32, channels_last, Adam, {torch.get_num_threads()} threads, "
          f"malloc {args.malloc}; CPU {cpu['model']} ({', '.join(cpu['extensions'])}), load average "
          f"{cpu['load_average']}")
    print(f"median step {median * 1000:.1f} ms = {args.batch_size / median:.0f} training patches/s; "
          f"user {after.ru_utime - usage.ru_utime:.1f} s, kernel {after.ru_stime - usage.ru_stime:.1f} s over "
          f"{args.steps} steps (with the profiler's own cost)\n")
    print("| op | share of self CPU time | ms per step |")
    print("|---|---|---|")
    for event in events[: args.rows]:
        share = event.self_cpu_time_total / total
        print(f"| `{event.key}` | {share:.1%} | {event.self_cpu_time_total / 1000 / args.steps:.2f} |")


if __name__ == "__main__":
    main()
