"""Finishing an atomic write: give the temporary file normal permissions, then rename it into place."""

from __future__ import annotations

import os

__all__ = ["publish"]


def publish(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename ``temporary`` onto ``target`` after setting the mode a plain ``open()`` would give.

    ``tempfile.mkstemp`` creates files readable by the owner only (0600); an exported model or a
    predictions CSV is meant to be shared, so it gets ``0666`` minus the process umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)
