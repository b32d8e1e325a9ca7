"""Stopping on SIGINT (Ctrl+C) and SIGTERM (``timeout``, Slurm, ``docker stop``) as a flag, not an exception.

A long loop (the training steps, a study's trials, a cohort's slides, a conversion's chunks) runs inside
:func:`safe_points` and calls :func:`check` between units of work. While such a loop runs, the first signal
only sets a flag; the next :func:`check` raises :class:`Stopped` there, where every ``finally`` can clean up
(temporary files removed, a resume state written, a trial marked failed). A signal never lands in arbitrary
code, e.g. a garbage-collection callback that would print "Exception ignored" and lose it. A second signal
raises at once (the user insists); outside :func:`safe_points` a signal raises at once, as Python's default
Ctrl+C does, so a command without a loop still stops.

The CLI calls :func:`install` once and turns :class:`Stopped` into exit code 130 (SIGINT) or 143 (SIGTERM):
128 + the signal number, what a shell reports for a process the signal ended.

Example:
    >>> from pcamlab import stopping
    >>> with stopping.safe_points():
    ...     for step in range(3):
    ...         stopping.check()  # raises Stopped here after a signal
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["Stopped", "install", "safe_points", "check", "requested", "request", "clear", "children_ignore_interrupt"]

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_requested: int | None = None  # the signal number of the first unanswered stop request
_depth = 0  # how many safe_points() regions are open in this process


class Stopped(KeyboardInterrupt):
    """Raised at a safe point (or at once, outside one) after SIGINT or SIGTERM.

    A ``KeyboardInterrupt`` subclass, so code that cleans up on Ctrl+C cleans up on SIGTERM the same way.

    Attributes:
        signum: the signal number (``signal.SIGINT`` = 2 or ``signal.SIGTERM`` = 15).
        exit_code: 128 + ``signum`` (130 or 143), the exit status a shell shows for that signal.
    """

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _handler(signum: int, frame) -> None:
    global _requested
    if _depth > 0 and _requested is None:
        _requested = signum  # answered by the next check()
        return
    _requested = _requested or signum
    raise Stopped(signum)  # outside a loop with safe points, or a second signal: at once


def install() -> Callable[[], None]:
    """Handle SIGINT and SIGTERM with the flag; returns a function that puts the previous handlers back.

    Off the main thread (where Python cannot handle signals) it changes nothing and returns a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.signal(signum, _handler) for signum in _HANDLED}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        clear()

    return restore


@contextlib.contextmanager
def safe_points() -> Iterator[None]:
    """A region whose code calls :func:`check` often (every second or so): signals inside it set a flag."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


def request(signum: int = signal.SIGTERM) -> None:
    """Ask the running loop to stop at its next safe point, as the signal ``signum`` would (tests, services)."""
    global _requested
    _requested = int(signum)


def check() -> None:
    """Raise :class:`Stopped` when a stop was requested; call it between units of work.

    The request stays pending (every enclosing loop stops too) until :func:`clear`.

    Raises:
        Stopped: after SIGINT/SIGTERM (or :func:`request`).
    """
    if _requested is not None:
        raise Stopped(_requested)


def clear() -> None:
    """Forget a pending request (a test, or a worker that starts fresh)."""
    global _requested
    _requested = None


@contextlib.contextmanager
def children_ignore_interrupt() -> Iterator[None]:
    """Start child processes inside this block: they begin with SIGINT ignored until they :func:`install`.

    A spawned Python child (``multiprocessing`` "spawn") resets handlers to the default on exec, so a Ctrl+C
    sent to the process group while it still imports raises KeyboardInterrupt inside an import (printed as
    "Exception ignored", the child half-started). An ignored signal stays ignored across exec: the child
    installs pcamlab's handling once it is ready, and the parent, which got the same Ctrl+C, passes the stop
    on. The parent ignores SIGINT only while the children start (milliseconds).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
