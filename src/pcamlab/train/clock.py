"""The run's clock: seconds since training started, one clock for every process, and the time budget.

A resumed run goes on with the seconds its earlier processes used (stored in ``resume.pt`` at the end of
each epoch, :meth:`RunClock.continue_after`): its budget, the schedule over the budget and the seconds in
``summary.json`` count the whole run, not only the part after the resume.

Every time the loop reads (the budget, the budget schedule, the crop switch at half the budget, the
seconds in ``history.csv`` and ``summary.json``) comes from one :class:`RunClock`. Under ``torchrun``
every process reads rank 0's elapsed seconds, so all of them see the same learning rate and stop after
the same step.

The clock reads a plain ``() -> seconds`` function, ``time.perf_counter`` unless ``train(clock=...)``
says otherwise. :func:`scaled_clock` is the honest simulation of another machine: a clock running at
1/3 of real speed is a machine 3x faster (every step, every validation and every start-up second counts
a third), a clock at 3x speed a machine 3x slower.

Example:
    >>> clock = RunClock(budget_minutes=15, read=scaled_clock(1 / 3))  # a machine 3x faster than this one
    >>> clock.fraction() < 0.01
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RunClock", "scaled_clock"]


def scaled_clock(speed: float, read: Callable[[], float] = time.perf_counter) -> Callable[[], float]:
    """A clock that runs ``speed`` times as fast as ``read``: 1/3 simulates a machine 3x faster, 3 one 3x slower."""
    if not speed > 0:
        raise ValueError(f"speed must be > 0; got {speed!r}")
    return lambda: read() * speed


class RunClock:
    """Seconds since the run started by rank 0's clock, and the share of ``train.time_budget_minutes`` used.

    Args:
        budget_minutes: ``train.time_budget_minutes`` (0 = no budget).
        read: the clock, ``() -> seconds`` (default ``time.perf_counter``).
    """

    def __init__(self, budget_minutes: float = 0.0, read: Callable[[], float] | None = None):
        self.read = read or time.perf_counter
        self.started = self.read()
        self.budget_seconds = 60.0 * budget_minutes
        #: seconds the run had used in earlier processes (a resumed run: from ``resume.pt``), by rank 0's clock
        self.earlier_seconds = 0.0
        self._broadcast: Callable[[float], float] = lambda value: value
        # the budget share at the last two budget checks (after each step of a budget run): a run stopped by its
        # budget stopped at the first check past it, previous <= 1 < last
        self.checks: tuple[float, float] = (0.0, 0.0)

    def follow(self, broadcast: Callable[[float], float]) -> None:
        """Read elapsed seconds through ``broadcast`` (``World.broadcast``: rank 0's value for every process)."""
        self._broadcast = broadcast

    def continue_after(self, seconds: float) -> None:
        """A resumed run: ``seconds`` were used before (up to the end of its last saved epoch); the budget,
        the schedule over it and the run's seconds go on from there instead of starting again at 0."""
        self.earlier_seconds = float(seconds)

    def local(self) -> float:
        """Seconds since this process started by its own clock (durations it reports, not decisions)."""
        return self.read() - self.started

    def run_seconds(self) -> float:
        """Seconds of the whole run by this process's clock: the earlier processes' (resume) and this one's."""
        return self.earlier_seconds + self.local()

    def elapsed(self) -> float:
        """Seconds of the whole run by rank 0's clock (earlier processes included): every process decides on it."""
        return self._broadcast(self.earlier_seconds + self.read() - self.started)

    @property
    def has_budget(self) -> bool:
        return self.budget_seconds > 0

    def check_budget(self) -> float:
        """After a step of a budget run: the share of the budget used (rank 0's clock), remembered in :attr:`checks`."""
        fraction = self.elapsed() / self.budget_seconds
        self.checks = (self.checks[1], fraction)
        return fraction

    def fraction(self) -> float | None:
        """The share of the budget used (rank 0's clock), or None without a budget."""
        return self.elapsed() / self.budget_seconds if self.has_budget else None
