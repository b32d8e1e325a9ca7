"""pcamlab.stopping: the flag, and children that start while a Ctrl+C may arrive."""

from __future__ import annotations

import multiprocessing
import signal

from pcamlab import stopping


def _report_sigint(queue) -> None:
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_children_started_in_the_block_begin_with_sigint_ignored_and_the_parent_gets_its_handler_back():
    """A spawned worker imports for a second or more; a Ctrl+C to the group then must not land inside an import
    (tune's workers printed 'Exception ignored' and half-started): it starts ignoring SIGINT until it installs
    pcamlab's handling, and the parent, which got the same Ctrl+C, passes the stop on."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    before = signal.getsignal(signal.SIGINT)
    with stopping.children_ignore_interrupt():
        child = context.Process(target=_report_sigint, args=(queue,))
        child.start()
    assert signal.getsignal(signal.SIGINT) is before
    assert queue.get(timeout=60) is True
    child.join(timeout=60)
    outside = context.Process(target=_report_sigint, args=(queue,))
    outside.start()
    assert queue.get(timeout=60) is False  # started outside the block: the default handling
    outside.join(timeout=60)


def test_a_signal_inside_safe_points_is_a_flag_answered_at_the_next_check():
    restore = stopping.install()
    try:
        with stopping.safe_points():
            signal.raise_signal(signal.SIGTERM)  # sets the flag only
            assert stopping.requested() == signal.SIGTERM
            try:
                stopping.check()
            except stopping.Stopped as stop:
                assert stop.exit_code == 143
            else:
                raise AssertionError("check() did not raise after SIGTERM")
    finally:
        restore()
    assert stopping.requested() is None
