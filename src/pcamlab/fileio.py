"""Atomic file writes: a finished file appears whole or not at all, with normal permissions.

Every file pcamlab writes (checkpoints, metrics, CSVs, exported models) is written to a temporary file
beside its target and renamed into place, so an interrupted run never leaves a half-written file where
a good one is expected.

A temporary's name carries its writer's process id (``.<name>.<pid>-<random>.tmp`` beside a file,
``<name>.tmp-<pid>-<random>`` for a folder). A writer killed with ``kill -9`` (or by the out-of-memory
killer, or a power cut) cannot clean up; the next writer of the same output finds the temporaries whose
process is gone and removes them (:func:`remove_stale_temporaries`), saying so on the ``pcamlab.fileio``
logger (the CLI prints it as a ``note:`` line). A temporary of a process still running is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "refuse_existing", "write_text_atomic", "write_json_atomic", "json_safe", "printable", "publish",
           "save_png", "check_new_png", "save_image_png", "temporary_file", "temporary_folder_name",
           "remove_stale_temporaries", "staged_folder", "folder_in_progress", "process_running"]

#: Where fileio says what it cleaned up (stale temporaries); the CLI prints these as ``note:`` lines.
LOG = logging.getLogger("pcamlab.fileio")


def temporary_folder_name(path: str | os.PathLike) -> Path:
    """A temporary folder beside ``path`` named with this process's id: ``<name>.tmp-<pid>-<random>``."""
    path = Path(path)
    return path.parent / f"{path.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}"


def process_running(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (``kill(pid, 0)``); another user's process counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or not a pid we can ask about): not ours to judge
    return True


def remove_stale_temporaries(path: str | os.PathLike, *, every_name: bool = False) -> list[Path]:
    """Remove the temporaries of ``path`` whose writer is no longer running; returns what was removed.

    Matches this module's names only (``.<name>.<pid>-*.tmp`` files, ``<name>.tmp-<pid>-*`` folders), so
    nothing else beside ``path`` is touched. Each removal is said on :data:`LOG`.

    Args:
        every_name: ``path`` is a folder: remove the stale temporaries of every file in it (a resumed work
            folder, whose killed writer may have been writing a file the resumed run never writes again).
    """
    path = Path(path)
    folder, name = (path, r"[^/]+?") if every_name else (path.parent, re.escape(path.name))
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    patterns = (re.compile(rf"^\.{name}\.(\d+)-[^/]*\.tmp$"),
                re.compile(rf"^{name}\.tmp-(\d+)-[0-9a-f]+$"))
    removed = []
    for entry in entries:
        match = next((found for pattern in patterns if (found := pattern.match(entry.name))), None)
        if match is None or int(match.group(1)) == os.getpid() or process_running(int(match.group(1))):
            continue
        stale = Path(entry.path)
        try:
            size = sum(f.stat().st_size for f in stale.rglob("*") if f.is_file()) if entry.is_dir(follow_symlinks=False) \
                else entry.stat(follow_symlinks=False).st_size
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except OSError:
            continue
        removed.append(stale)
        LOG.warning("removed %s (%.1f MB), left by process %s that is no longer running (killed while writing %s)",
                    printable(stale), size / 1e6, match.group(1), printable(stale.name if every_name else path.name))
    return removed


def publish(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename ``temporary`` onto ``target`` after giving it the mode a plain ``open()`` would.

    ``tempfile.mkstemp`` creates files readable by the owner only (0600); results are meant to be
    shared, so they get ``0666`` minus the process umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)


def refuse_existing(path: str | os.PathLike, parameter: str, *, force: str | None = None) -> None:
    """Raise :class:`~pcamlab.errors.RunFolderError` when ``path`` exists (a file, a folder or a link).

    pcamlab never overwrites a file a person named: it may be a slide, an annotation file or an earlier
    result. The message names ``parameter`` (and ``force``, the parameter that allows replacing, when there is one).

    Example:
        >>> refuse_existing("tumor_001.png", "thumbnail")
    """
    from pcamlab.errors import RunFolderError

    path = Path(path)
    if os.path.lexists(path):
        what = "a folder" if path.is_dir() else "a file"
        fix = f"choose another {parameter}" + (f" or pass {force}=True to replace it" if force else "")
        raise RunFolderError(f"{printable(path)!r} already exists ({what}) and is never overwritten; {fix}",
                             parameters=(parameter, *((force,) if force else ())))


def temporary_file(path: str | os.PathLike) -> tuple[int, str]:
    """``tempfile.mkstemp`` beside ``path``, named ``.<name>.<pid>-<random>.tmp``, after removing the stale
    temporaries of ``path`` (:func:`remove_stale_temporaries`). For writers that stream into the file
    themselves; publish it with :func:`publish`. Most writers want :func:`atomic_path`.

    Returns:
        ``(open OS-level handle, temporary path)``, as ``mkstemp``.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool = True, parameter: str = "path") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it becomes ``path``, on error it is removed.

    Args:
        path: the file to write.
        replace: True replaces an existing ``path``; False refuses one (before and, atomically, when
            publishing: a hard link fails where a file appeared meanwhile, so nothing is ever overwritten).
        parameter: the caller's parameter that named ``path``, for the message of an existing file.

    Raises:
        RunFolderError: ``replace`` is False and ``path`` exists.

    Example:
        >>> with atomic_path("runs/a/model.onnx") as temporary:
        ...     export_to(temporary)
    """
    path = Path(path)
    if not replace:
        refuse_existing(path, parameter)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_file(path)
    os.close(handle)
    try:
        yield temporary
        if replace:
            publish(temporary, path)
        else:
            _publish_new(temporary, path, parameter)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _publish_new(temporary: str, target: Path, parameter: str) -> None:
    """Give ``temporary`` the name ``target`` only if no file has it (``link`` never replaces), then drop the temporary."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        os.link(temporary, target)
    except FileExistsError:
        refuse_existing(target, parameter)
        raise
    except OSError:  # a file system without hard links (some network and FAT mounts): check, then rename
        refuse_existing(target, parameter)
        os.replace(temporary, target)
        return
    os.unlink(temporary)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        file.write(printable(text))
    return Path(path)


def printable(text: object) -> str:
    """``str(text)`` that any UTF-8 file or terminal can hold, for paths written into CSV, JSON, HTML or logs.

    File names are bytes; Python reads the ones that are not UTF-8 (e.g. Latin-1 ``tumeur_\xe9t\xe9.jpg``
    from an archive made elsewhere) with lone surrogates, which no UTF-8 writer accepts. Those bytes
    become the visible escapes ``\xe9``, so the name still identifies the file; valid text is unchanged.

    Example:
        >>> printable(os.fsdecode(b"tumeur_\xe9t\xe9.jpg"))
        'tumeur_\\xe9t\\xe9.jpg'
    """
    text = str(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the file name's own bytes
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def json_safe(value: object) -> object:
    """``value`` with NaN/infinite floats as None, numpy scalars as Python numbers and strings printable.

    Python's ``json`` writes a bare ``NaN``, which is not JSON (RFC 8259): browsers, ``jq`` and most
    other languages refuse the whole file.
    """
    if isinstance(value, dict):
        return {printable(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, os.PathLike):
        return printable(os.fspath(value))
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike, values: object, *, indent: int = 2) -> Path:
    """Write ``values`` as valid JSON (see :func:`json_safe`) atomically and return the path."""
    import json

    return write_text_atomic(path, json.dumps(json_safe(values), indent=indent, allow_nan=False) + "\n")


def check_new_png(path: str | os.PathLike, parameter: str = "path") -> Path:
    """``path`` as a Path when it may become a new PNG file: it ends in ``.png`` and does not exist.

    Callers check this before long work, so a wrong name fails in a second, not after it.

    Raises:
        ConfigError: the path does not end in ``.png`` (PNG bytes under another suffix mislead every viewer).
        RunFolderError: ``path`` exists.
    """
    from pcamlab.errors import ConfigError

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{parameter} must end in .png (a PNG is written); got {printable(path)!r}; e.g. "
                          f"{printable(path.with_suffix('.png'))!r}", parameters=(parameter,))
    refuse_existing(path, parameter)
    return path


def save_image_png(image, path: str | os.PathLike, *, parameter: str = "path") -> Path:
    """Write a uint8 ``(h, w)`` or ``(h, w, 3|4)`` array as a new PNG file, atomically; never replace a file.

    Raises:
        ConfigError: the path does not end in ``.png`` (PNG bytes under another suffix mislead every viewer).
        RunFolderError: ``path`` exists.
    """
    from PIL import Image

    path = check_new_png(path, parameter)
    with atomic_path(path, replace=False, parameter=parameter) as temporary:
        Image.fromarray(image).save(temporary, format="PNG")
    return path


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


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]*)\.[A-Za-z0-9_]+\.partial$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])


def folder_in_progress(target: str | os.PathLike) -> str | None:
    """Who is building ``target`` in a :func:`staged_folder` now (``"pid 123 on node7"``), or None.

    Staging folders of processes of this host that have ended (killed runs) are removed on the way; one of
    another host counts as in progress (its liveness cannot be told from here).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return None
    for path in sorted(target.parent.glob(f".{glob.escape(target.name)}.*.partial")):
        match = _STAGING.match(path.name)
        if match is None or match["name"] != target.name:
            continue
        pid, host = int(match["pid"]), match["host"]
        if host == _host() and (pid == os.getpid() or not process_running(pid)):
            if pid != os.getpid():
                shutil.rmtree(path, ignore_errors=True)  # left by a killed run
            continue
        return f"pid {pid} on {host or 'another host'} (staging in {printable(path)!r})"
    return None


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Build the output folder ``target`` in a private hidden staging folder and rename it into place whole.

    The staging folder (``.NAME.<pid>@<host>.<random>.partial`` beside ``target``) is this process's own, so
    two processes asked for the same ``target`` never share or delete each other's files. On success it is
    renamed onto ``target`` (an empty ``target`` folder is replaced; a file or a folder with files is never
    touched); on error, or when ``target`` was finished by another process meanwhile, it is removed.

    Raises:
        RunFolderError: another live process is building ``target`` now (at entry), or ``target`` holds files
            (at entry or, written meanwhile by another process, at the end). Its ``parameters`` name ``out_dir``.

    Example:
        >>> with staged_folder("evaluation") as staging:
        ...     write_json_atomic(staging / "metrics.json", metrics)
    """
    from pcamlab.errors import RunFolderError

    target = Path(target)

    def refuse_finished() -> None:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise RunFolderError(f"{printable(target)!r} already exists and holds files (finished by another process "
                                 "meanwhile?); a finished output is never overwritten: choose another out_dir or "
                                 "delete it", parameters=("out_dir",))

    refuse_finished()
    holder = folder_in_progress(target)
    if holder is not None:
        raise RunFolderError(f"{printable(target)!r} is being written by {holder}; wait for it, or choose another "
                             "out_dir", parameters=("out_dir",))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}@{_host()}.", suffix=".partial",
                                    dir=target.parent))
    try:
        yield staging
        refuse_finished()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; a result folder is shared like any other
        try:
            os.rename(staging, target)  # atomic; replaces an empty folder, fails on one with files or a file
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            refuse_finished()
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
