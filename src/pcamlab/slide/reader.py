"""Reading whole-slide images: OpenSlide first, tiffslide as the fallback, one small interface over both.

:func:`open_slide` returns a :class:`Slide` whatever the backend: level dimensions and downsamples,
the microns per pixel (mpp) of level 0 and where they came from, ``read_region`` returning uint8 RGB
arrays, and a thumbnail. OpenSlide comes from the ``openslide-bin`` wheel, so no system library is
needed; formats OpenSlide does not know (or a missing wheel) fall back to ``tiffslide``, which reads
TIFF-based slides (SVS, generic tiled TIFF, OME-TIFF) with tifffile. An OME-TIFF whose pyramid levels
are SubIFDs is read with tiffslide even though OpenSlide opens it: OpenSlide 4 sees only its level 0.

The reader trusts nothing blindly:

- **Resolution.** An ``mpp`` the caller gives wins over everything the file says (a scanner that wrote
  wrong resolution tags is common, and the person knows their scanner); the slide's own value, when it
  has one, is kept in ``recorded_mpp`` and a note says it was overridden. Without a given mpp: the
  slide's metadata (OpenSlide's ``openslide.mpp-x``, which for a generic TIFF OpenSlide derives from the
  resolution tags itself; tiffslide's ``tiffslide.mpp-x``), else the TIFF ``XResolution`` /
  ``YResolution`` / ``ResolutionUnit`` tags read with tifffile. When all are missing,
  :class:`MissingResolutionError` says so in one line. A level-0 mpp outside what slide scanners produce
  (:data:`PLAUSIBLE_MPP`) is a warning in ``Slide.warnings`` naming where it came from.
- **Damage** (:mod:`pcamlab.slide.integrity`). A file cut short (a copy that stopped) is found when it
  opens: tifffile lists where every tile of every page and SubIFD lies, and a tile ending past the end of
  the file, or an IFD chain leading past it, is damage. A tile that does not decode is found when it is read, by any backend. Either way
  :class:`DamagedSlideError` names the slide and says to copy it again; nothing is filled in with white
  or black, so nothing a reader could not decode is ever scored. (Damage that still decodes, e.g. bytes
  zeroed inside a JPEG tile's entropy-coded data, cannot be seen by any reader: TIFF has no checksums.)

Library code never prints: notes and warnings are returned in ``Slide.notes`` / ``Slide.warnings`` and
:class:`SlideInfo`; the CLI prints them.

Example:
    >>> with open_slide("slide.tif", mpp=0.25) as slide:
    ...     print(slide.vendor, slide.level_dimensions, slide.mpp, slide.mpp_source, slide.warnings)
    ...     region = slide.read_region((0, 0), 0, (96, 96))  # uint8 (96, 96, 3)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.errors import ConfigError, DataError
from pcamlab.fileio import printable
from pcamlab.slide.integrity import (
    TIFFFILE_VENDORS,
    DamagedSlideError,
    TiffFacts,
    damaged,
    decode_errors,
    inspect_tiff,
    short_reason,
    tifffile_log,
    verify_slide,
)

__all__ = [
    "BACKENDS",
    "PLAUSIBLE_MPP",
    "DamagedSlideError",
    "MissingResolutionError",
    "ResolutionError",
    "Slide",
    "SlideInfo",
    "describe_mpp_source",
    "name_mpp",
    "open_slide",
    "read_downsampled",
    "slide_info",
    "verify_slide",
]

BACKENDS = ("openslide", "tiffslide")  # tried in this order
BACKGROUND_RGB = (255, 255, 255)  # transparent slide pixels (outside scanned regions) become white glass
# Level-0 um/px that slide scanners produce: about 0.12 (80x) to 2 (5x); 0.25 at 40x, 0.5 at 20x (Camelyon16's
# scanners: 0.226-0.243 um/px at 40x). A value outside is more likely a wrong tag than a real scan.
PLAUSIBLE_MPP = (0.1, 2.0)
# x and y mpp closer than this share are one resolution (scanners round differently per axis); farther: not square
SQUARE_TOLERANCE = 0.05
THUMBNAIL_SIZES = (16, 16384)  # longer side of a thumbnail in pixels: enough to see, at most ~800 MB of RGB
_CENTIMETRE_UM = 1e4
_INCH_UM = 25400.0
class ResolutionError(DataError):
    """The slide's level-0 mpp is missing, not a positive number, or unusable; the remedy is the ``mpp`` given.

    Messages name the parameter as ``mpp`` (open_slide's and predict_slide's) and list it in ``parameters``;
    a caller whose own parameter has another name re-raises :meth:`naming` it (``data from-slides``'
    ``slide_mpp``, where ``mpp`` is the patches' resolution).
    """

    def __init__(self, *args: object, parameters: tuple[str, ...] = ("mpp",)):
        super().__init__(*args, parameters=parameters)

    def naming(self, parameter: str) -> ResolutionError:
        """The same error (same type) with the parameter ``mpp`` called ``parameter`` in its message."""
        return type(self)(name_mpp(str(self), parameter), parameters=(parameter,))


def name_mpp(text: str, parameter: str) -> str:
    """A message of the reader (an error, note or warning) with its parameter ``mpp`` called ``parameter``.

    Example:
        >>> name_mpp("give the level-0 resolution as mpp (um/px)", "slide_mpp")
        'give the level-0 resolution as slide_mpp (um/px)'
    """
    return re.sub(r"(?<![\w./'-])mpp(?![\w=/'-])", parameter, text)  # the word, not openslide.mpp-x or a path


class MissingResolutionError(ResolutionError):
    """The slide has no microns-per-pixel in its metadata or TIFF tags, and none was given."""


@dataclass(frozen=True)
class SlideInfo:
    """What ``pcamlab slide info`` prints: a plain summary of a slide (JSON-ready via ``to_dict``).

    Attributes:
        path: the slide file.
        backend: ``"openslide"`` or ``"tiffslide"``.
        vendor: the format as the backend names it (``generic-tiff``, ``aperio``, ``ome-tiff``, ...), or
            ``"unknown"``.
        level_dimensions: ``(width, height)`` in pixels per level, level 0 first.
        level_downsamples: downsample factor of each level relative to level 0.
        mpp: ``(x, y)`` microns per pixel of level 0 used, or ``None`` when unknown.
        mpp_source: ``"given"``, ``"metadata"``, ``"tiff-tags"`` or ``"missing"``.
        objective_power: the scanner's objective magnification when the metadata has it.
        recorded_mpp: ``(x, y)`` the file itself records (metadata or tags), whether used or overridden.
        recorded_mpp_source: ``"metadata"``, ``"tiff-tags"`` or ``"missing"``.
        notes: facts worth knowing (a given mpp overriding the file's, the backend chosen and why).
        warnings: what looks wrong (a level-0 mpp outside :data:`PLAUSIBLE_MPP`), each with its remedy.
    """

    path: str
    backend: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    mpp_source: str
    objective_power: float | None
    recorded_mpp: tuple[float, float] | None = None
    recorded_mpp_source: str = "missing"
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "backend": self.backend, "vendor": self.vendor,
            "level_dimensions": [list(size) for size in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": list(self.mpp) if self.mpp else None, "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "recorded_mpp": list(self.recorded_mpp) if self.recorded_mpp else None,
            "recorded_mpp_source": self.recorded_mpp_source,
            "notes": list(self.notes), "warnings": list(self.warnings),
        }


def describe_mpp_source(source: str, vendor: str = "unknown") -> str:
    """Where a level-0 mpp came from, in words: ``"the TIFF resolution tags"``, ``"the aperio metadata"``, ..."""
    if source == "metadata":
        return f"the {vendor} metadata" if vendor not in ("unknown", "") else "the slide's metadata"
    return {"tiff-tags": "the TIFF resolution tags", "given": "the mpp given",
            "missing": "nowhere (the slide records none)"}.get(source, source)


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _check_given_mpp(mpp: Any) -> float | None:
    """The given level-0 mpp as a float, or None; DataError when it is not a positive finite number."""
    if mpp is None:
        return None
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float, np.floating, np.integer)) or not (
            np.isfinite(mpp) and mpp > 0):
        raise ResolutionError(f"mpp must be a positive number of microns per pixel (e.g. 0.25 for a 40x scan); "
                              f"got {mpp!r}")
    return float(mpp)


def _mpp_from_tiff_tags(path: Path) -> tuple[float, float] | None:
    """Microns per pixel of the first page from the TIFF resolution tags, or None (no tags, no unit, not TIFF)."""
    import tifffile

    try:
        with tifffile_log(), tifffile.TiffFile(path) as tiff:
            tags = tiff.pages[0].tags
            x_resolution, y_resolution = tags.get("XResolution"), tags.get("YResolution")
            unit = tags.get("ResolutionUnit")
            if x_resolution is None or y_resolution is None or unit is None:
                return None
            unit_um = {2: _INCH_UM, 3: _CENTIMETRE_UM}.get(int(unit.value))  # 1 = no absolute unit
            if unit_um is None:
                return None
            x_pixels_per_unit = x_resolution.value[0] / x_resolution.value[1]
            y_pixels_per_unit = y_resolution.value[0] / y_resolution.value[1]
    except Exception:  # not a TIFF, or tags tifffile cannot parse: no resolution from tags
        return None
    if x_pixels_per_unit <= 0 or y_pixels_per_unit <= 0:
        return None
    return unit_um / x_pixels_per_unit, unit_um / y_pixels_per_unit


class Slide:
    """One open whole-slide image (use :func:`open_slide`; close it, or use it as a context manager).

    Attributes:
        path: the slide file.
        backend: ``"openslide"`` or ``"tiffslide"``.
        vendor: the backend's name for the format (or tifffile's when the backend names none).
        level_dimensions: ``(width, height)`` per level, level 0 first.
        level_downsamples: downsample of each level relative to level 0.
        mpp: ``(x, y)`` microns per pixel at level 0 used, or None when unknown and not given.
        mpp_source: ``"given"``, ``"metadata"``, ``"tiff-tags"`` or ``"missing"``.
        recorded_mpp, recorded_mpp_source: what the file itself records (kept when a given mpp overrides it).
        notes: facts worth knowing (an override, the backend chosen and why).
        warnings: what looks wrong (an implausible level-0 mpp), each with its remedy.
    """

    def __init__(self, handle: Any, backend: str, path: Path, mpp: float | None = None, *,
                 tiff_kind: str | None = None):
        self._handle = handle
        self._decode_errors = decode_errors(backend)
        self._damage: str | None = None
        self.backend = backend
        self.path = path
        properties = dict(handle.properties)
        self.properties = properties
        self.vendor = str(properties.get(f"{backend}.vendor") or TIFFFILE_VENDORS.get(tiff_kind or "", "unknown"))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)
        self.objective_power = _float_or_none(properties.get(f"{backend}.objective-power"))
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.recorded_mpp, self.recorded_mpp_source = self._recorded_mpp(properties)
        given = _check_given_mpp(mpp)
        if given is not None:
            self.mpp, self.mpp_source = (given, given), "given"
            if self.recorded_mpp is not None:
                x, y = self.recorded_mpp
                same = " (the same value)" if np.allclose((x, y), given, rtol=1e-3) else ""
                self.notes.append(f"the mpp given, {given:.4g} um/px, overrides the slide's own {x:.4g} x {y:.4g} "
                                  f"um/px from {describe_mpp_source(self.recorded_mpp_source, self.vendor)}{same}")
        else:
            self.mpp, self.mpp_source = self.recorded_mpp, self.recorded_mpp_source
        if self.mpp is not None and not self.square_pixels:
            x, y = self.mpp
            self.warnings.append(
                f"level-0 pixels are not square: {x:.4g} x {y:.4g} um/px from "
                f"{describe_mpp_source(self.mpp_source, self.vendor)}; pcamlab reads square tiles, so predicting "
                "or cutting patches from this slide is refused (tiles would be stretched and areas wrong); if the "
                "recorded values are wrong, give the right level-0 resolution as mpp (used for both axes)")
        if self.mpp is not None:
            value = (self.mpp[0] + self.mpp[1]) / 2
            low, high = PLAUSIBLE_MPP
            if not low <= value <= high:
                self.warnings.append(  # names the parameter once, as a word: the CLI shows it as its flag
                    f"level-0 resolution {value:.4g} um/px from {describe_mpp_source(self.mpp_source, self.vendor)} "
                    f"is outside what slide scanners produce (about {low:g}-{high:g} um/px; 0.25 at 40x, 0.5 at "
                    "20x), so the tiling and every area are likely wrong; if it is wrong, give the right level-0 "
                    "resolution as mpp (e.g. 0.25 for a 40x scan)"
                )

    def _recorded_mpp(self, properties: dict[str, Any]) -> tuple[tuple[float, float] | None, str]:
        """The level-0 mpp the file records and where: the backend's metadata, else the TIFF tags."""
        x = _float_or_none(properties.get(f"{self.backend}.mpp-x"))
        y = _float_or_none(properties.get(f"{self.backend}.mpp-y"))
        if x and y:
            # OpenSlide derives the generic-TIFF mpp from the tags itself; say so when it did.
            # (tiffslide does the same for a TIFF without a vendor format).
            tags = _mpp_from_tiff_tags(self.path) if self.vendor in ("generic-tiff", "unknown") else None
            from_tags = tags is not None and np.allclose(tags, (x, y), rtol=1e-6)
            return (x, y), "tiff-tags" if from_tags else "metadata"
        tags = _mpp_from_tiff_tags(self.path)
        if tags:
            return tags, "tiff-tags"
        return None, "missing"

    @property
    def square_pixels(self) -> bool:
        """True when level-0 pixels are square within :data:`SQUARE_TOLERANCE` (or the mpp is unknown)."""
        if self.mpp is None:
            return True
        x, y = self.mpp
        return abs(x - y) <= SQUARE_TOLERANCE * max(x, y)

    def require_mpp(self) -> float:
        """The level-0 microns per pixel (x and y agree within :data:`SQUARE_TOLERANCE`; their mean).

        Raises:
            MissingResolutionError: none in the metadata or TIFF tags, and no ``mpp`` given.
            ResolutionError: the pixels are not square (tiles are read square: they would be stretched).
        """
        if self.mpp is None:
            raise MissingResolutionError(
                f"slide {printable(self.path)!r} has no resolution (no microns-per-pixel in its metadata or TIFF "
                "resolution tags); give the level-0 resolution as mpp (um/px, e.g. 0.25 for a 40x scan)"
            )
        if not self.square_pixels:
            x, y = self.mpp
            raise ResolutionError(
                f"slide {printable(self.path)!r} has non-square level-0 pixels ({x:.4g} x {y:.4g} um/px from "
                f"{describe_mpp_source(self.mpp_source, self.vendor)}); pcamlab reads square tiles, which would be "
                "stretched; if the recorded values are wrong give the level-0 resolution as mpp (used for both "
                "axes), else resample the slide to square pixels"
            )
        return (self.mpp[0] + self.mpp[1]) / 2

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0 in pixels."""
        return self.level_dimensions[0]

    def info(self) -> SlideInfo:
        return SlideInfo(str(self.path), self.backend, self.vendor, self.level_dimensions, self.level_downsamples,
                         self.mpp, self.mpp_source, self.objective_power, self.recorded_mpp,
                         self.recorded_mpp_source, tuple(self.notes), tuple(self.warnings))

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels of ``level`` as uint8 RGB ``(height, width, 3)``.

        Args:
            location: ``(x, y)`` of the top-left corner in LEVEL-0 pixels (OpenSlide's convention).
            level: pyramid level to read.
            size: ``(width, height)`` in pixels of ``level``.

        Regions outside the slide, and transparent pixels, read as white (glass).

        Raises:
            DamagedSlideError: the region's image data does not decode (and every later read of this
                slide, as OpenSlide's handle is unusable after an error); nothing is filled in.
        """
        if self._damage is not None:
            raise DamagedSlideError(self._damage)
        x, y, width, height = int(location[0]), int(location[1]), int(size[0]), int(size[1])
        try:
            array = np.asarray(self._handle.read_region((x, y), int(level), (width, height)))
        except self._decode_errors as error:
            self._damage = str(damaged(self.path, f"a tile of level {level} in the {width} x {height} px region at "
                                                   f"level-0 x {x}, y {y} does not decode; {self.backend}: "
                                                   f"{short_reason(error)}"))
            raise DamagedSlideError(self._damage) from error
        if array.ndim == 3 and array.shape[2] == 4:  # OpenSlide: premultiplied RGBA, alpha 0 outside the scan
            alpha = array[..., 3:4]
            if alpha.min() == 255:
                return np.ascontiguousarray(array[..., :3])
            white = np.full_like(array[..., :3], 255)
            return np.where(alpha == 0, white, array[..., :3]).astype(np.uint8)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        return np.ascontiguousarray(array[..., :3], dtype=np.uint8)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """uint8 RGB ``(h, w, 3)`` of the whole slide, its longer side at most ``max_size`` pixels.

        Read from the coarsest level that is still at least ``max_size`` pixels on its longer side (or the
        coarsest level when none is), block by block, so memory stays small whatever the slide size.

        Raises:
            ConfigError: ``max_size`` is not an integer from 16 to 16384.
            DamagedSlideError: a block read does not decode.
        """
        if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or \
                not THUMBNAIL_SIZES[0] <= max_size <= THUMBNAIL_SIZES[1]:
            raise ConfigError(f"max_size (the thumbnail's longer side in pixels) must be an integer from "
                              f"{THUMBNAIL_SIZES[0]} to {THUMBNAIL_SIZES[1]}; got {max_size!r}; e.g. 1024",
                              parameters=("max_size",))
        return read_downsampled(self, max(self.dimensions) / max_size)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_downsampled(slide: Slide, downsample: float, block: int = 2048) -> np.ndarray:
    """The whole slide at ``downsample`` relative to level 0, uint8 RGB ``(h, w, 3)``, read in blocks.

    Reads the coarsest level whose downsample is at most ``downsample``, ``block`` x ``block`` pixels at a
    time, and shrinks each block with a box filter, so peak memory is one block plus the result.

    Raises:
        DamagedSlideError: a block read does not decode.
    """
    from PIL import Image

    downsample = max(float(downsample), 1.0)
    level = max((index for index, d in enumerate(slide.level_downsamples) if d <= downsample * 1.001), default=0)
    level_downsample = slide.level_downsamples[level]
    level_width, level_height = slide.level_dimensions[level]
    width0, height0 = slide.dimensions
    out_width = max(1, int(round(width0 / downsample)))
    out_height = max(1, int(round(height0 / downsample)))
    scale = level_downsample / downsample  # output pixels per level pixel (<= 1)
    output = np.empty((out_height, out_width, 3), dtype=np.uint8)
    for top in range(0, level_height, block):
        for left in range(0, level_width, block):
            width, height = min(block, level_width - left), min(block, level_height - top)
            out_left, out_top = int(round(left * scale)), int(round(top * scale))
            out_right = min(out_width, int(round((left + width) * scale)))
            out_bottom = min(out_height, int(round((top + height) * scale)))
            if out_right <= out_left or out_bottom <= out_top:
                continue
            pixels = slide.read_region((int(left * level_downsample), int(top * level_downsample)), level,
                                       (width, height))
            if (out_right - out_left, out_bottom - out_top) != (width, height):
                pixels = np.asarray(Image.fromarray(pixels).resize((out_right - out_left, out_bottom - out_top),
                                                                   Image.Resampling.BOX))
            output[out_top:out_bottom, out_left:out_right] = pixels
    return output


def _open_openslide(path: Path) -> Any:
    import openslide

    if openslide.OpenSlide.detect_format(str(path)) is None:
        raise ValueError("format not recognised by OpenSlide")
    return openslide.OpenSlide(str(path))


def _open_tiffslide(path: Path) -> Any:
    import tiffslide

    return tiffslide.TiffSlide(str(path))


_OPENERS = {"openslide": _open_openslide, "tiffslide": _open_tiffslide}


def _try_backend(name: str, path: Path, mpp: float | None, facts: TiffFacts) -> Slide | str:
    """The slide opened with backend ``name`` and one pixel decoded, or why that backend cannot read it.

    Raises:
        DamagedSlideError: it opens, but its first pixel of the coarsest level does not decode.
    """
    try:
        with tifffile_log():  # tiffslide's tifffile: nothing printed
            handle = _OPENERS[name](path)
    except Exception as error:  # each backend raises its own types for a file it cannot read
        return f"{name}: {short_reason(error)}"
    try:
        slide = Slide(handle, name, path, mpp, tiff_kind=facts.kind)
        if not slide.level_dimensions or min(slide.dimensions) < 1:
            raise ValueError("no image levels")
        slide.read_region((0, 0), slide.level_count - 1, (1, 1))  # decodes: a damaged tile fails here, not later
    except DataError:
        handle.close()
        raise
    except Exception as error:
        handle.close()
        return f"{name}: {short_reason(error)}"
    return slide


def open_slide(path: str | os.PathLike, *, mpp: float | None = None, backend: str | None = None) -> Slide:
    """Open a whole-slide image with OpenSlide, else tiffslide, after checking that the file is whole.

    Args:
        path: the slide file (any format OpenSlide reads; TIFF-based ones also through tiffslide).
        mpp: level-0 microns per pixel; when given it wins over the slide's metadata and TIFF tags (a note
            in ``Slide.notes`` says what it overrides).
        backend: force ``"openslide"`` or ``"tiffslide"`` (default: OpenSlide, unless it cannot read the file
            or sees fewer pyramid levels than tifffile does, as for an OME-TIFF's SubIFD levels).

    Returns:
        An open :class:`Slide`.

    Raises:
        DamagedSlideError: the file is cut short (tile data or image directories past its end), its TIFF
            structure does not parse, or its first tile does not decode.
        ResolutionError: ``mpp`` is not a positive number.
        DataError: the file is missing, is a folder, or no backend can read it (one line, naming the file
            and what each backend said).

    Example:
        >>> slide = open_slide("CMU-1.svs")
        >>> slide.level_dimensions[0], slide.mpp_source
        ((46000, 32914), 'metadata')
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"slide {str(path)!r} does not exist; check the path")
    if not path.is_file():
        raise DataError(f"slide {str(path)!r} is not a file; pass a slide file (e.g. .svs, .tif, .ndpi, .mrxs)")
    if backend is not None and backend not in BACKENDS:
        from pcamlab.errors import did_you_mean

        raise DataError(f"backend must be one of {list(BACKENDS)}; got {backend!r}{did_you_mean(backend, BACKENDS)}",
                        parameters=("backend",))
    _check_given_mpp(mpp)
    facts = inspect_tiff(path)
    if facts.damage is not None:
        raise damaged(path, facts.damage)
    failures = []
    for name in [backend] if backend else BACKENDS:
        opened = _try_backend(name, path, mpp, facts)
        if isinstance(opened, str):
            failures.append(opened)
            continue
        if backend is None and name == "openslide" and opened.level_count < facts.levels:
            better = _try_backend("tiffslide", path, mpp, facts)
            if isinstance(better, Slide) and better.level_count > opened.level_count:
                opened.close()
                better.notes.append(
                    f"read with tiffslide: OpenSlide sees {opened.level_count} pyramid level(s) of this "
                    f"{better.vendor} file, tiffslide all {better.level_count} (OpenSlide does not read SubIFD levels)")
                return better
            if isinstance(better, Slide):
                better.close()
        return opened
    raise DataError(
        f"cannot read slide {str(path)!r} ({'; '.join(failures)}); pass a whole-slide image OpenSlide or "
        "tiffslide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, OME-TIFF, DICOM-WSI, ...)"
    )


def slide_info(path: str | os.PathLike, *, mpp: float | None = None) -> SlideInfo:
    """The :class:`SlideInfo` of a slide file (opens and closes it). Raises like :func:`open_slide`."""
    with open_slide(path, mpp=mpp) as slide:
        return slide.info()
