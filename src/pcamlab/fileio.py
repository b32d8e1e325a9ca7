"""Atomic file writes: a finished file appears whole or not at all, with normal permissions.

Every file pcamlab writes (checkpoints, metrics, CSVs, exported models) is written to a temporary file
beside its target and renamed into place, so an interrupted run never leaves a half-written file where
a good one is expected.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic", "publish", "save_png"]


def publish(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename ``temporary`` onto ``target`` after giving it the mode a plain ``open()`` would.

    ``tempfile.mkstemp`` creates files readable by the owner only (0600); results are meant to be
    shared, so they get ``0666`` minus the process umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Example:
        >>> with atomic_path("runs/a/model.onnx") as temporary:
        ...     export_to(temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield temporary
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as file:
        file.write(text)
    return Path(path)


def save_png(figure, path: str | os.PathLike, *, dpi: int = 120, **savefig_options) -> Path:
    """Write a matplotlib Figure as PNG atomically (creating the folder) and return the path.

    Raises:
        ConfigError: the path does not end in ``.png``.
    """
    from pcamlab.errors import ConfigError

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"picture path must end in .png; got {str(path)!r}; e.g. {str(path.with_suffix('.png'))!r}")
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        figure.savefig(stream, format="png", dpi=dpi, **savefig_options)
    return path
