"""Data-parallel training across processes (``torchrun``), and a no-op stand-in for one process.

``torchrun --nproc-per-node N -m pcamlab train ...`` (or ``--nnodes``/``--rdzv-endpoint`` for several
machines) sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``setup`` then joins the process group (NCCL
on GPUs, gloo on CPUs), picks ``cuda:LOCAL_RANK`` when GPUs are used, and wraps the model in
DistributedDataParallel. Every process sees the same shuffled order and takes its slice of each
global batch, so N processes take the same optimiser steps as one process with the same global batch
(exactly so for models without batch-norm; batch-norm statistics are per process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["World", "check_processes", "setup"]


@dataclass
class World:
    rank: int
    size: int
    device: torch.device
    initialised: bool = False

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of ``value`` over all processes (itself for one process)."""
        if self.size == 1:
            return value
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
        return value

    def broadcast(self, value: float) -> float:
        """``value`` as rank 0 has it (itself for one process), so every process decides on one number.

        The training loop sends rank 0's elapsed seconds through here: all processes then follow one
        clock for a budget schedule and stop at the same step when the time budget ends.
        """
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(tensor, src=0)
        return float(tensor.item())

    def stop_requested(self) -> int | None:
        """The signal number of a stop request made to any process (:mod:`pcamlab.stopping`), or None.

        Every process gets the same answer, so all of them stop after the same step (a process that
        stopped alone would leave the others waiting in their next gradient all-reduce).
        """
        from pcamlab import stopping

        mine = stopping.requested() or 0
        if self.size == 1:
            return mine or None
        tensor = torch.tensor([mine], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item()) or None

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.initialised and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.initialised = False


def check_processes(config, processes: int) -> None:
    """The config checks that depend on the number of training processes (``torchrun``).

    Raises:
        ConfigError: ``train.batch_size`` is not divisible by ``processes``.
    """
    from pcamlab.errors import ConfigError

    if processes > 1 and config.train.batch_size % processes:
        raise ConfigError(
            f"train.batch_size {config.train.batch_size} must be divisible by the {processes} processes; "
            f"use e.g. {config.train.batch_size // processes * processes or processes}"
        )


def setup(device_name: str = "auto") -> World:
    """Join the process group when launched by torchrun; otherwise one process on ``device_name``."""
    from pcamlab.runtime.device import resolve_device

    size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if size == 1:
        return World(0, 1, device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    initialised = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=size)
        initialised = True
    return World(rank, size, device, initialised)
