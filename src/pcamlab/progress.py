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
        total: the total when known in advance (``progress`` may change it).
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total or 0, desc=description, unit=unit, disable=not enabled, leave=False, file=sys.stderr)

    def update(done: int, total: int, **postfix: str) -> None:
        """Show ``done`` of ``total``; keyword values (e.g. ``loss="0.412"``) are shown beside the bar."""
        bar.total = total
        bar.n = done
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    return update, bar.close
