"""A bounded pool of inference threads: at most ``workers`` jobs run, at most ``max_queue`` wait.

Inference (decode, forward pass, Grad-CAM) runs in worker threads so the event loop keeps answering
health checks and uploads while a batch is scored. A job beyond ``workers + max_queue`` is refused at
once with :class:`PoolBusy` (HTTP 503 with ``Retry-After``) instead of queueing without bound: under
overload, callers learn it in milliseconds rather than timing out.

Example:
    >>> pool = WorkerPool(workers=2, max_queue=16)
    >>> probabilities = await pool.run(model.predict, images)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pcamlab.errors import RunError

__all__ = ["PoolBusy", "WorkerPool"]

T = TypeVar("T")


class PoolBusy(RunError):
    """Every worker is busy and the queue is full (HTTP 503)."""


class WorkerPool:
    """Threads running blocking jobs for async handlers, with a bounded queue.

    Args:
        workers: jobs running at once (threads).
        max_queue: jobs allowed to wait for a thread; more are refused with :class:`PoolBusy`.

    Attributes:
        running: jobs running or waiting now.
        completed: jobs finished since start.
    """

    def __init__(self, workers: int, max_queue: int):
        self.workers = int(workers)
        self.max_queue = int(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pcamlab-serve")
        self._lock = threading.Lock()
        self.running = 0
        self.completed = 0

    def _release(self, _future: Any) -> None:
        with self._lock:
            self.running -= 1
            self.completed += 1

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function(*args, **kwargs)`` in a worker thread and return its result.

        Raises:
            PoolBusy: ``workers + max_queue`` jobs are already running or waiting.
        """
        with self._lock:
            if self.running >= self.workers + self.max_queue:
                raise PoolBusy(
                    f"the server is busy: {self.running} inference jobs are running or queued (limit "
                    f"{self.workers} running + {self.max_queue} waiting); retry in a moment"
                )
            self.running += 1
        try:
            future = self._executor.submit(lambda: function(*args, **kwargs))
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)  # also when the client gave up: the thread still finishes
        return await asyncio.wrap_future(future)

    def stats(self) -> dict[str, int]:
        """``workers``, ``max_queue``, ``busy`` (running or waiting now) and ``completed`` jobs."""
        with self._lock:
            return {"workers": self.workers, "max_queue": self.max_queue, "busy": self.running,
                    "completed": self.completed}

    def shutdown(self) -> None:
        """Stop accepting jobs and wait for the running ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
