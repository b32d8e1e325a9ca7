"""Progress bars for long loops, as ``progress(done, total)`` callables (tqdm on stderr).

Library functions take an optional ``progress(done, total)`` callable and never draw anything
themselves; this module makes such callables for the training loop and the command line.

Example:
    >>> update, close = progress_bar("decoding train")
    >>> update(128, 1000); close()
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["progress_bar"]


def progress_bar(description: str, enabled: bool = True, *, unit: str = "patch",
                 total: int | None = None) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` callable drawing a tqdm bar on stderr, and a function closing the bar.

    Args:
        description: the bar's label.
        enabled: False draws nothing (the callable still accepts calls).
        unit: what is counted (``patch``, ``step``, ``img``).
        total: accepted for callers that know it; the bar appears at the first ``progress`` call, with its total.
    """
    from tqdm.auto import tqdm

    bars = []  # made at the first update, so a command that fails its checks prints its error alone

    def update(done: int, total: int, **postfix: str) -> None:
        """Show ``done`` of ``total``; keyword values (e.g. ``loss="0.412"``) are shown beside the bar."""
        if not bars:
            bars.append(tqdm(total=total, desc=description, unit=unit, disable=not enabled, leave=False,
                             file=sys.stderr))
        bar = bars[0]
        bar.total = total
        bar.n = done
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    def close() -> None:
        for bar in bars:
            bar.close()

    del total  # the first update gives it
    return update, close
