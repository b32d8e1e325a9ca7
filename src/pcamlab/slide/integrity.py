"""Is a slide file whole? What tifffile knows of it before any backend opens it, and how reads fail.

The reader (:mod:`pcamlab.slide.reader`) asks this module twice:

- when a slide opens, :func:`inspect_tiff` lists with tifffile where every tile or strip of every page
  and SubIFD lies (``dataoffsets``/``databytecounts``, tifffile's knowledge of every TIFF-based format:
  SVS, NDPI, OME-TIFF, generic TIFF, ...) and compares it with the file size. Data past the end, a chain
  of image directories leading past it (tifffile only logs that), or a TIFF header whose structure does
  not parse is damage: the file was cut short. No pixel is decoded, so this costs milliseconds.
- when a region is read, :func:`decode_errors` names what each backend raises for image data that does
  not decode; the reader turns it into :class:`DamagedSlideError`.

:func:`verify_slide` decodes every tile of every level (``pcamlab slide info --verify``), for damage
that only decoding finds.

Example:
    >>> facts = inspect_tiff(Path("slide.tif"))
    >>> facts.damage  # None for a whole file
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.errors import DataError, plain_line

__all__ = ["DamagedSlideError", "TIFFFILE_VENDORS", "TiffFacts", "damaged", "decode_errors", "inspect_tiff",
           "short_reason", "tifffile_log", "verify_slide"]

_TIFF_HEADERS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# What tifffile says (only in its log) when the chain of image directories leads past the end of the file.
_TIFFFILE_CHAIN_ERRORS = ("invalid page offset", "invalid offset to page", "corrupted tag list")
# tifffile's series kinds -> the vendor name pcamlab reports when the backend names none (tiffslide).
TIFFFILE_VENDORS = {"ome": "ome-tiff", "generic": "generic-tiff", "shaped": "generic-tiff", "svs": "aperio",
                    "ndpi": "hamamatsu", "scn": "leica", "bif": "ventana", "philips": "philips"}


class DamagedSlideError(DataError):
    """The slide file is cut short, or holds image data that does not decode: it must be copied again."""


def damaged(path: Path, what: str) -> DamagedSlideError:
    """The one message of a damaged slide: names it, says what is wrong, and to copy it again."""
    return DamagedSlideError(f"slide {str(path)!r} is damaged ({what}): copy it again from its source")


@contextlib.contextmanager
def tifffile_log() -> Iterator[list[str]]:
    """Collect what tifffile logs in this thread (a broken IFD chain is only logged) instead of printing it."""
    import tifffile

    messages: list[str] = []
    thread = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:
                messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    log = tifffile.logger()
    log.addHandler(handler)  # a handler on the logger: Python's last-resort printing to stderr is not used
    try:
        yield messages
    finally:
        log.removeHandler(handler)


@dataclass(frozen=True)
class TiffFacts:
    """What tifffile knows of a file before any backend opens it."""

    kind: str | None = None  # tifffile's series kind of the first series ("svs", "ome", "generic", ...), None if not TIFF
    levels: int = 0  # pyramid levels of the first series (SubIFDs included)
    damage: str | None = None  # why the file is damaged, or None


def inspect_tiff(path: Path) -> TiffFacts:
    """Where tifffile says the image data lies, checked against the file size (cheap: no pixel is decoded).

    A TIFF (classic or BigTIFF, NDPI, SVS, OME-TIFF, ...) whose tiles or strips end past the end of the
    file, whose chain of image directories leads past it, or whose structure tifffile cannot parse
    despite a TIFF header, is damaged. Other files (MRXS, DICOM, ...) are not TIFF: nothing to check here.
    """
    import tifffile

    size = path.stat().st_size
    with tifffile_log() as logged:
        try:
            tiff = tifffile.TiffFile(path)
        except Exception as error:
            with open(path, "rb") as stream:
                header = stream.read(4)
            if header in _TIFF_HEADERS:
                return TiffFacts(damage=f"its TIFF structure does not parse: {short_reason(error)}")
            return TiffFacts()
        with tiff:
            try:
                damage = _data_past_end(tiff.pages, size, "page")
                series = tiff.series
                kind = series[0].kind if series else None
                levels = len(series[0].levels) if series else 0
            except Exception as error:  # a tag or directory tifffile cannot parse
                return TiffFacts(damage=f"its TIFF structure does not parse: {short_reason(error)}")
    chain = [message for message in logged if any(words in message for words in _TIFFFILE_CHAIN_ERRORS)]
    if damage is None and chain:
        damage = f"cut short: its chain of image directories leads past the end of its {size:,} bytes"
    return TiffFacts(kind=kind, levels=levels, damage=damage)


def _data_past_end(pages: Any, size: int, name: str) -> str | None:
    """Why the image data of ``pages`` (and their SubIFDs) does not fit in ``size`` bytes, or None."""
    for index, page in enumerate(pages):
        offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.int64)
        counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.int64)
        if len(offsets) and len(counts) == len(offsets):
            ends = np.where(counts > 0, offsets + counts, 0)
            end = int(ends.max())
            if end > size:
                missing = int(np.sum(ends > size))
                return (f"cut short: {missing} of the {len(offsets)} tiles or strips of TIFF {name} {index} lie past "
                        f"the end of the {size:,}-byte file, up to byte {end:,}")
        subpages = getattr(page, "pages", None)
        if subpages is not None:
            damage = _data_past_end(subpages, size, f"{name} {index} SubIFD")
            if damage:
                return damage
    return None


def short_reason(error: BaseException) -> str:
    """A library's error as a short plain line (its first line, at most 160 characters)."""
    return plain_line((str(error).splitlines() or [type(error).__name__])[0] or type(error).__name__, 160)


def decode_errors(backend: str) -> tuple[type[BaseException], ...]:
    """What a backend raises when image data it reads does not decode (a corrupt or missing tile)."""
    if backend == "openslide":
        import openslide

        return (openslide.OpenSlideError,)  # the handle stays unusable after one
    # tiffslide: tifffile (TiffFileError is a ValueError), the imagecodecs decoders (RuntimeError subclasses)
    # and numpy reshapes of short data (ValueError), through zarr.
    return (RuntimeError, ValueError)


def verify_slide(slide: Any, *, block: int = 2048, progress: Callable[[int, int], object] | None = None) -> int:
    """Decode every tile of every level once, so a damaged tile is found now rather than mid-prediction.

    Opening a slide finds a file cut short, but a tile whose bytes are there and wrong is only found by
    decoding it; prediction decodes only the tissue tiles of one level. This reads each level in
    ``block`` x ``block`` regions through the slide's backend (minutes for a 40x slide of 10^10 pixels).

    Args:
        slide: an open :class:`~pcamlab.slide.reader.Slide`.
        block: region edge in pixels of the level read (bounds memory: 16 MB of RGBA at 2048).
        progress: called as ``progress(regions_done, regions_total)`` after each region.

    Returns:
        The number of pixels decoded, all levels together.

    Raises:
        DamagedSlideError: a region does not decode (naming the level and where).
        pcamlab.stopping.Stopped: a stop was requested (checked between regions).
    """
    from pcamlab import stopping

    regions = [(level, left, top, min(block, width - left), min(block, height - top))
               for level, (width, height) in enumerate(slide.level_dimensions)
               for top in range(0, height, block) for left in range(0, width, block)]
    pixels = 0
    for done, (level, left, top, width, height) in enumerate(regions, start=1):
        stopping.check()
        downsample = slide.level_downsamples[level]
        slide.read_region((int(left * downsample), int(top * downsample)), level, (width, height))
        pixels += width * height
        if progress is not None:
            progress(done, len(regions))
    return pixels
