"""Opening HDF5 files with one line that says why one cannot be opened and what to do.

"Truncated or not HDF5; download it again" is the wrong advice for a file that is only locked by another
process (the official train_x file is a 7 GB download). :func:`open_hdf5` tells apart: a lock held by a
running program, the "open for write" mark a crashed writer leaves, a file still gzip-compressed, a web
page saved in place of the file, a truncated file, an empty file, a file that is not HDF5 at all, and a
permission problem.

Example:
    >>> with open_hdf5(Path("camelyonpatch_level_2_split_valid_x.h5"), "images") as file:
    ...     file["x"].shape
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from pcamlab.errors import DataError, PcamlabError, plain_line
from pcamlab.fileio import printable

__all__ = ["open_hdf5", "diagnose_hdf5", "looks_like_web_page", "damaged_structure"]


def looks_like_web_page(head: bytes) -> bool:
    """Whether the first bytes of a file are an HTML page (a server's error, login or quota page)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text[:512]


def diagnose_hdf5(path: Path, error: BaseException) -> str:
    """What is wrong with an HDF5 file h5py could not open, and what to do, as one sentence.

    Args:
        path: the file.
        error: what ``h5py.File(path, "r")`` raised.
    """
    name = repr(printable(path))
    reason = " ".join(str(error).split())
    if isinstance(error, PermissionError) or "Permission denied" in reason:
        return f"cannot read {name}: permission denied; give your user read access (e.g. chmod a+r) or copy the file"
    if "unable to lock file" in reason:
        return (
            f"{name} is locked by another process (HDF5 file locking: a program has it open for writing, e.g. a "
            "download, conversion or notebook that is still running); close that program or wait for it to "
            "finish, then run the command again (if nothing has it open, e.g. on a network file system without "
            "locks, run with the environment variable HDF5_USE_FILE_LOCKING=FALSE)"
        )
    if "already open for write" in reason or "consistency flags" in reason:
        return (
            f"{name} is still marked open for writing by a program that did not close it (it crashed or was "
            f"killed); if no program has it open, clear the mark with: h5clear -s {printable(path)} (HDF5 tools), "
            "then check the file, or copy it again"
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            head = stream.read(1024)
    except OSError:
        size, head = -1, b""
    if size == 0:
        return f"{name} is empty (0 bytes): an interrupted copy or download; copy or download it again"
    if head.startswith(b"\x1f\x8b"):
        shown = printable(path)
        return (
            f"{name} holds gzip-compressed data (the official PCam files come as .h5.gz): decompress it first, "
            f"e.g. mv {shown} {shown}.gz && gunzip {shown}.gz"
        )
    if looks_like_web_page(head):
        return (
            f"{name} is a web page, not HDF5: the server sent an HTML page (an error, login or quota page) that "
            "was saved as the file; download it from the official source (pcamlab data download pcam) or "
            "another mirror"
        )
    truncated = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", reason)
    if truncated:
        have, need = int(truncated.group(1)), int(truncated.group(2))
        return (
            f"{name} is truncated ({have:,} of its {need:,} bytes): an interrupted copy or download; copy or "
            "download it again"
        )
    if "file signature not found" in reason:
        return f"{name} is not an HDF5 file (it starts with {head[:8]!r}); pass the PCam .h5 file itself"
    return f"cannot open {name} as HDF5 ({reason}); check that it is a complete PCam .h5 file, or copy it again"


def open_hdf5(path: str | os.PathLike, what: str = ""):
    """``h5py.File(path, "r")``, or a one-line :class:`DataError` from :func:`diagnose_hdf5`.

    Args:
        path: the HDF5 file.
        what: how the caller names the file, prefixed to the message (e.g. ``"input"``).

    Raises:
        DataError: the file cannot be opened (locked, marked open by a crashed writer, compressed, a web
            page, truncated, empty, not HDF5, unreadable).
    """
    import h5py

    path = Path(path)
    try:
        return h5py.File(path, "r")
    except OSError as error:
        message = diagnose_hdf5(path, error)
        raise DataError(f"{what} {message}" if what else message) from None


@contextlib.contextmanager
def damaged_structure(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turn h5py's errors while reading a file's structure (groups, datasets, shapes) into one line.

    An HDF5 file opens from its first bytes; damage further in (a flipped byte in a B-tree or an object
    header) only shows when a dataset is looked up, as ``RuntimeError``, ``KeyError``, ``OSError`` or
    ``ValueError`` from h5py. pcamlab's own errors pass through unchanged.

    Raises:
        DataError: the structure cannot be read.
    """
    try:
        yield
    except PcamlabError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
        prefix = f"{what} " if what else ""
        raise DataError(
            f"{prefix}{printable(path)!r} is damaged: its HDF5 structure cannot be read ({plain_line(error, 100)}); "
            "copy or download it again"
        ) from None
