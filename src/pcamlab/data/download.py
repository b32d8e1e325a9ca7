"""Verified, resumable download of the official PatchCamelyon release (Zenodo record 2546921).

The release holds six gzipped HDF5 files
(``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5.gz``) and three meta CSVs.
:func:`download_pcam` fetches any subset of them with ``urllib`` only and leaves ``dest`` in
the layout :func:`pcamlab.data.open_split` reads as the ``"h5"`` format.

What happens to one file, and what a re-run does at each step:

1. ``NAME`` (the ``.h5`` or ``.csv``) exists and its sidecar ``NAME.md5`` records the expected md5
   of the archive and the file's current size: skipped without reading it.
2. Otherwise the archive is fetched into ``NAME.gz.part``. A re-run after an interruption continues
   it with an HTTP ``Range: bytes=N-`` request; a server that answers ``200`` instead of ``206``
   makes it start over from byte 0. Network errors are retried ``retries`` times in all.
3. The md5 of the whole archive is checked against the table below. On a mismatch the bytes are
   moved aside to ``NAME.gz.corrupt`` and a :class:`~pcamlab.errors.DataError` says so; on a match
   ``NAME.gz.part`` is renamed ``NAME.gz``.
4. ``NAME.gz`` is decompressed as a stream into ``NAME.tmp``, checked to hold its HDF5 dataset
   with the expected shape, and moved to ``NAME`` with ``os.replace``; then the sidecar is written
   and ``NAME.gz`` deleted. A half-written file therefore never sits where a good one is expected.

Example:
    >>> from pcamlab.data.download import download_pcam
    >>> paths = download_pcam("data/pcam", files=["valid"])  # doctest: +SKIP
    >>> [path.name for path in paths]  # doctest: +SKIP
    ['camelyonpatch_level_2_split_valid_x.h5', 'camelyonpatch_level_2_split_valid_y.h5']
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pcamlab.errors import ConfigError, DataError, RunError, did_you_mean

__all__ = [
    "PcamFile",
    "PCAM_FILES",
    "FILE_GROUPS",
    "ZENODO_RECORD_URL",
    "download_pcam",
    "resolve_files",
]

ZENODO_RECORD_URL = "https://zenodo.org/records/2546921/files"
"""Folder of the official files on Zenodo; ``base_url`` replaces it for mirrors and tests."""

USER_AGENT = "pcamlab-download/0.1 (+python urllib)"

RETRY_WAIT_SECONDS = 2.0
"""Pause before try k+1 is ``RETRY_WAIT_SECONDS * k`` (tests set it to 0)."""

_SIDECAR_SUFFIX = ".md5"


@dataclass(frozen=True)
class PcamFile:
    """One file of the official PCam release.

    Attributes:
        short_name: Name used in ``files=[...]``, e.g. ``"valid_x"``.
        remote_name: File name on the server, e.g. ``camelyonpatch_level_2_split_valid_x.h5.gz``.
        md5: md5 of the file as served (of the ``.gz`` for compressed files).
        size: Size in bytes as served, or ``None`` where no source states it.
        shape: Shape of the HDF5 dataset inside (checked after decompression), or ``None``.
        dataset: Name of that HDF5 dataset (``"x"`` or ``"y"``), or ``None`` for a CSV.
    """

    short_name: str
    remote_name: str
    md5: str
    size: int | None = None
    shape: tuple[int, ...] | None = None
    dataset: str | None = None

    @property
    def compressed(self) -> bool:
        """Whether the served file is gzipped (and is decompressed after download)."""
        return self.remote_name.endswith(".gz")

    @property
    def local_name(self) -> str:
        """Name of the final file in ``dest`` (``.gz`` stripped)."""
        return self.remote_name[: -len(".gz")] if self.compressed else self.remote_name

    def url(self, base_url: str | None = None) -> str:
        """Address to fetch: the Zenodo file link, or ``base_url + "/" + remote_name``."""
        if base_url is None:
            return f"{ZENODO_RECORD_URL}/{self.remote_name}?download=1"
        return f"{base_url.rstrip('/')}/{self.remote_name}"


def _entry(
    short_name: str, md5: str, size: int | None, rows: int | None, dataset: str | None
) -> PcamFile:
    if dataset == "x":
        remote_name, shape = f"camelyonpatch_level_2_split_{short_name}.h5.gz", (rows, 96, 96, 3)
    elif dataset == "y":
        remote_name, shape = f"camelyonpatch_level_2_split_{short_name}.h5.gz", (rows, 1, 1, 1)
    else:
        remote_name, shape = f"camelyonpatch_level_2_split_{short_name}.csv", None
    return PcamFile(short_name, remote_name, md5, size, shape, dataset)


# Checksums and sizes of the files as served by Zenodo record 2546921.
#
# md5: train_* from the table in https://github.com/basveeling/pcam (README). That table swaps the
#   valid and test rows (author: "probably a copy/paste mismatch on my part", basveeling/pcam issue
#   #1; confirmed by md5sum of downloaded files in issues #1 and #4), so valid_* and test_* are the
#   values users measured there, which also agree with:
#   - the md5 Zenodo's own record page shows, as quoted in tensorflow/datasets issue #1551
#     (test_x d8c2d60d..., test_meta 3455fd69...);
#   - torchvision.datasets.PCAM after pytorch/vision PR #6644 "swap MD5 checksums of PCAM val and
#     test split" (val: valid_x d5b63470..., valid_y 2b85f58b...; test: d8c2d60d..., 60a70357...);
#   - tand826/PatchCamelyon_h5ToImage sums.txt (all nine files, incl. the swapped meta CSVs).
# size (bytes of the .gz): tensorflow/datasets url_checksums/patch_camelyon.txt (no source states
#   the CSV sizes). Rows: 2**18 train, 2**15 valid and test (basveeling/pcam README "Numbers").
PCAM_FILES: dict[str, PcamFile] = {
    entry.short_name: entry
    for entry in (
        _entry("train_x", "1571f514728f59376b705fc836ff4b63", 6_421_353_462, 262_144, "x"),
        _entry("train_y", "35c2d7259d906cfc8143347bb8e05be7", 21_378, 262_144, "y"),
        _entry("valid_x", "d5b63470df7cfa627aeec8b9dc0c066e", 805_965_320, 32_768, "x"),
        _entry("valid_y", "2b85f58b927af9964a4c15b8f7e8f179", 3_038, 32_768, "y"),
        _entry("test_x", "d8c2d60d490dbd479f8199bdfa0cf6ec", 800_875_929, 32_768, "x"),
        _entry("test_y", "60a7035772fbdb7f34eb86d4420cf66a", 3_040, 32_768, "y"),
        _entry("train_meta", "5a3dd671e465cfd74b5b822125e65b0a", None, None, None),
        _entry("valid_meta", "67589e00a4a37ec317f2d1932c7502ca", None, None, None),
        _entry("test_meta", "3455fd69135b66734e1008f3af684566", None, None, None),
    )
}
"""The official files by short name (``"train_x"``, ..., ``"test_meta"``)."""

FILE_GROUPS: dict[str, tuple[str, ...]] = {
    "train": ("train_x", "train_y"),
    "valid": ("valid_x", "valid_y"),
    "test": ("test_x", "test_y"),
    "meta": ("train_meta", "valid_meta", "test_meta"),
}
"""Names that stand for several files in ``files=[...]``; ``"all"`` means every file."""

DEFAULT_FILES = ("train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y")

# Errors worth another try: the network or the server, not the local disk.
_TRANSIENT_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


class _IncompleteTransfer(ConnectionError):
    """The connection closed before the announced number of bytes arrived."""


def resolve_files(
    files: str | Iterable[str] | None, table: dict[str, PcamFile] | None = None
) -> list[PcamFile]:
    """Turn ``files`` (short names or group names) into table entries, in table order.

    Args:
        files: ``None`` for the six x/y files; otherwise names such as ``"valid_x"``, a group from
            :data:`FILE_GROUPS` (``"valid"``, ``"meta"``) or ``"all"``.
        table: Entries to choose from (default :data:`PCAM_FILES`).

    Returns:
        The chosen entries, each once.

    Raises:
        ConfigError: For an unknown name, with the closest valid one.
    """
    table = PCAM_FILES if table is None else table
    if files is None:
        wanted = [name for name in DEFAULT_FILES if name in table] or list(table)
    else:
        if isinstance(files, str):
            files = [files]
        wanted = []
        choices = [*table, *FILE_GROUPS, "all"]
        for name in files:
            if name == "all":
                wanted.extend(table)
            elif name in FILE_GROUPS:
                wanted.extend(FILE_GROUPS[name])
            elif name in table:
                wanted.append(name)
            else:
                raise ConfigError(
                    f"download files: unknown file {name!r}{did_you_mean(name, choices)}; "
                    f"allowed: {sorted(choices)}"
                )
    order = list(table)
    return [table[name] for name in sorted(set(wanted), key=order.index)]


def download_pcam(
    dest: str | os.PathLike,
    *,
    base_url: str | None = None,
    files: str | Iterable[str] | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
) -> list[Path]:
    """Download, verify and decompress official PCam files into ``dest``; safe to re-run.

    Args:
        dest: Folder to fill (created if missing). Needs about 16 GB free for everything
            (7.3 GB train_x.h5 plus its 6.4 GB archive while it is decompressed).
        base_url: Folder URL of a mirror; each file is fetched from ``base_url + "/" + name.gz``.
            ``None`` uses Zenodo record 2546921.
        files: Short names (``"valid_x"``), groups (``"valid"``, ``"meta"``) or ``"all"``;
            ``None`` means the six x/y files of train, valid and test.
        progress: Show tqdm progress bars on stderr.
        chunk_size: Bytes read from the network and from the archive at a time.
        timeout: Seconds a connection may stall before the try counts as failed.
        retries: Tries per file before giving up (the ``.part`` file is kept for the next run).

    Returns:
        Paths of the final ``.h5`` / ``.csv`` files, in table order.

    Raises:
        ConfigError: Unknown file name or invalid argument.
        DataError: A downloaded file does not match its md5, or decompresses to the wrong shape.
        RunError: The network failed ``retries`` times, the server refused, or the disk failed.

    Example:
        >>> paths = download_pcam("data/pcam", files=["valid_x", "valid_y"])  # doctest: +SKIP
    """
    if int(retries) < 1:
        raise ConfigError(f"download retries must be at least 1; got {retries!r}; pass retries=3")
    if int(chunk_size) < 1:
        raise ConfigError(
            f"download chunk_size must be a positive number of bytes; got {chunk_size!r}; "
            f"pass chunk_size=1 << 20"
        )
    entries = resolve_files(files)
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise ConfigError(
            f"download dest {str(dest)!r} is a file, not a folder; pass a folder path"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(
            f"cannot create download folder {str(dest)!r}: {error}; pass a writable folder"
        ) from error
    options = dict(
        chunk_size=int(chunk_size), timeout=timeout, retries=int(retries), progress=progress
    )
    return [_download_one(entry, dest, entry.url(base_url), **options) for entry in entries]


def _download_one(entry: PcamFile, dest: Path, url: str, **options) -> Path:
    """Bring one file to its verified final state in ``dest`` (see the module docstring)."""
    final = dest / entry.local_name
    if _sidecar_matches(entry, final):
        return final
    archive = dest / entry.remote_name  # verified copy of the served file (compressed only)
    part = dest / (entry.remote_name + ".part")
    try:
        if entry.compressed and archive.is_file():
            got = _md5_of(archive, options["chunk_size"], options["progress"], entry.remote_name)
            if got != entry.md5:  # not the file we vouched for (or put there by hand): fetch again
                archive.replace(archive.with_name(archive.name + ".corrupt"))
        if not (entry.compressed and archive.is_file()):
            _fetch(entry, url, part, **options)
            _verify(entry, part, url, options["chunk_size"], options["progress"])
            if not entry.compressed:
                part.replace(final)
                _write_sidecar(entry, final)
                return final
            part.replace(archive)
        _decompress(entry, archive, final, options["chunk_size"], options["progress"])
        _write_sidecar(entry, final)
        archive.unlink()
    except OSError as error:  # the local disk, not the network (those become RunError in _fetch)
        raise RunError(
            f"writing {entry.local_name} into {str(dest)!r} failed: {error}; free disk space or "
            f"pick another folder, then run the same command again to resume"
        ) from error
    return final


def _fetch(entry: PcamFile, url: str, part: Path, *, chunk_size: int, timeout: float, retries: int,
           progress: bool) -> None:
    """Fill ``part`` with the whole served file, resuming it and retrying network errors."""
    reason = "unknown error"
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(entry, url, part, chunk_size=chunk_size, timeout=timeout, progress=progress)
            return
        except urllib.error.HTTPError as error:
            if not _worth_retrying(error.code):
                raise RunError(
                    f"download of {entry.remote_name} failed: the server answered HTTP "
                    f"{error.code} {error.reason} for {url}; check base_url (or the network) and "
                    f"run the command again"
                ) from error
            reason = f"HTTP {error.code} {error.reason}"
        except _TRANSIENT_ERRORS as error:
            reason = _describe(error)
        if attempt < retries:
            time.sleep(RETRY_WAIT_SECONDS * attempt)
    kept = part.stat().st_size if part.exists() else 0
    raise RunError(
        f"download of {entry.remote_name} failed after {retries} tries: {reason}; run the same "
        f"command again to resume ({kept} bytes are kept in {part.name})"
    )


def _fetch_once(entry: PcamFile, url: str, part: Path, *, chunk_size: int, timeout: float,
                progress: bool) -> None:
    """One HTTP request: continue ``part`` from its current size, or restart it on a ``200``."""
    offset = part.stat().st_size if part.exists() else 0
    if entry.size is not None:
        if offset == entry.size:
            return  # already complete: the md5 check decides
        if offset > entry.size:
            part.unlink()
            offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # asked past the end: the .part already holds everything
            error.close()
            return
        raise
    with response:
        if response.headers.get_content_type() == "text/html":  # a page about the file, not the file
            raise DataError(_web_page_message(entry, url, response.status))
        total = entry.size
        if response.status == 206:
            start, announced_total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:  # the server resumed from somewhere else: trust nothing, start over
                part.unlink()
                raise _IncompleteTransfer(f"server resumed at byte {start} instead of {offset}")
            total = total or announced_total
            mode = "ab"
        else:  # 200: the whole file, whether or not we asked for a range
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = total or (int(length) if length and length.isdigit() else None)
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected and expected.isdigit() else None
        received = 0
        with open(part, mode) as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=entry.remote_name, disable=not progress, leave=False,
        ) as bar:
            while True:
                chunk = response.read(chunk_size)
                if not chunk:
                    break
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        # http.client returns b"" rather than raising when a connection closes early.
        if expected is not None and received < expected:
            raise _IncompleteTransfer(f"connection closed after {received} of {expected} bytes")


def _verify(entry: PcamFile, part: Path, url: str, chunk_size: int, progress: bool) -> None:
    """Check the md5 of the whole downloaded file; move it aside and raise when it differs."""
    got = _md5_of(part, chunk_size, progress, entry.remote_name)
    if got == entry.md5:
        return
    from pcamlab.hdf5 import looks_like_web_page

    with open(part, "rb") as stream:
        head = stream.read(1024)
    if looks_like_web_page(head):  # served as a file, but it is a page: fetching again brings the same page
        part.unlink()
        raise DataError(_web_page_message(entry, url, None))
    corrupt = part.with_name(entry.remote_name + ".corrupt")
    part.replace(corrupt)
    raise DataError(
        f"downloaded {entry.remote_name} from {url} is corrupt: md5 {got}, expected {entry.md5}; "
        f"it was moved to {corrupt.name}; run the same command again to download it afresh"
    )


def _web_page_message(entry: PcamFile, url: str, status: int | None) -> str:
    answered = f" (HTTP {status})" if status else ""
    return (
        f"the server sent a web page instead of {entry.remote_name}{answered} from {url}: the URL is wrong, the "
        "file moved, or the server wants a login, a confirmation or shows a quota/maintenance page; open the URL "
        "in a browser to see it, then fix base_url (or try later with the default Zenodo URL); nothing was kept"
    )


def _decompress(
    entry: PcamFile, archive: Path, final: Path, chunk_size: int, progress: bool
) -> None:
    """Stream-decompress ``archive`` into ``final.tmp``, check it, then move it into place."""
    temporary = final.with_name(final.name + ".tmp")
    try:
        # The bar counts compressed bytes consumed: the gzip trailer holds the unpacked size only
        # modulo 4 GiB, which train_x (7.3 GB) exceeds.
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as source, open(
            temporary, "wb"
        ) as target, tqdm(
            total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"unpacking {final.name}", disable=not progress, leave=False,
        ) as bar:
            while True:
                chunk = source.read(chunk_size)
                if not chunk:
                    break
                target.write(chunk)
                bar.update(raw.tell() - bar.n)
        _check_shape(entry, temporary)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        temporary.unlink(missing_ok=True)
        archive.replace(archive.with_name(archive.name + ".corrupt"))
        raise DataError(
            f"{archive.name} matches its md5 but is not a valid gzip file ({error}); it was "
            f"moved to {archive.name}.corrupt; report this, or run the command again with "
            f"another base_url"
        ) from error
    except DataError:
        temporary.unlink(missing_ok=True)
        archive.replace(archive.with_name(archive.name + ".corrupt"))
        raise
    os.replace(temporary, final)


def _check_shape(entry: PcamFile, path: Path) -> None:
    """Raise DataError when the HDF5 file lacks the expected dataset shape."""
    if entry.dataset is None or entry.shape is None:
        return
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            shape = tuple(handle[entry.dataset].shape) if entry.dataset in handle else None
    except OSError as error:
        raise DataError(f"{entry.local_name} decompressed to a file HDF5 cannot open ({error}); "
                        f"run the command again with another base_url") from error
    if shape != tuple(entry.shape):
        raise DataError(
            f"{entry.local_name}: dataset {entry.dataset!r} has shape {shape}, expected "
            f"{entry.shape}; the archive does not hold the official PCam file; run the command "
            f"again with another base_url"
        )


def _sidecar_matches(entry: PcamFile, final: Path) -> bool:
    """True when ``final`` exists and its sidecar vouches for it (same source md5, same size)."""
    sidecar = final.with_name(final.name + _SIDECAR_SUFFIX)
    if not (final.is_file() and sidecar.is_file()):
        return False
    try:
        record = json.loads(sidecar.read_text())
        return record.get("source_md5") == entry.md5 and record.get("size") == final.stat().st_size
    except (OSError, ValueError, AttributeError):
        return False


def _write_sidecar(entry: PcamFile, final: Path) -> None:
    """Record what ``final`` was verified against, written atomically."""
    sidecar = final.with_name(final.name + _SIDECAR_SUFFIX)
    record = {
        "file": final.name,
        "source": entry.remote_name,
        "source_md5": entry.md5,
        "size": final.stat().st_size,
    }
    temporary = sidecar.with_name(sidecar.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, sidecar)


def _md5_of(path: Path, chunk_size: int, progress: bool, label: str) -> str:
    """md5 hex digest of a file, read ``chunk_size`` bytes at a time."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"checking {label}", disable=not progress, leave=False,
    ) as bar:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/200"`` -> ``(100, 200)``; unknown parts are ``None``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    total = match.group(2)
    return int(match.group(1)), (int(total) if total.isdigit() else None)


def _worth_retrying(status: int) -> bool:
    """Server-side and rate-limit answers may pass; 'not found' or 'forbidden' will not."""
    return status >= 500 or status in (408, 425, 429)


def _describe(error: BaseException) -> str:
    """One-line reason for a network error."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    text = str(error) or type(error).__name__
    return " ".join(text.split())
