"""Reading whole-slide images: OpenSlide first, tiffslide as the fallback, one small interface over both.

:func:`open_slide` returns a :class:`Slide` whatever the backend: level dimensions and downsamples,
the microns per pixel (mpp) of level 0 and where they came from, ``read_region`` returning uint8 RGB
arrays, and a thumbnail. OpenSlide comes from the ``openslide-bin`` wheel, so no system library is
needed; formats OpenSlide does not know (or a missing wheel) fall back to ``tiffslide``, which reads
TIFF-based slides (SVS, generic tiled TIFF, OME-TIFF) with tifffile.

Resolution, in this order: the slide's own metadata (OpenSlide's ``openslide.mpp-x``, which for a
generic TIFF OpenSlide derives from the resolution tags itself; tiffslide's ``tiffslide.mpp-x``), else
the TIFF ``XResolution``/``YResolution``/``ResolutionUnit`` tags read with tifffile, else the ``mpp``
the caller gives. When all are missing, :class:`MissingResolutionError` says so in one line.

Example:
    >>> with open_slide("slide.tif") as slide:
    ...     print(slide.vendor, slide.level_dimensions, slide.mpp, slide.mpp_source)
    ...     region = slide.read_region((0, 0), 0, (96, 96))  # uint8 (96, 96, 3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.errors import DataError

__all__ = ["Slide", "SlideInfo", "MissingResolutionError", "open_slide", "slide_info", "BACKENDS"]

BACKENDS = ("openslide", "tiffslide")  # tried in this order
BACKGROUND_RGB = (255, 255, 255)  # transparent slide pixels (outside scanned regions) become white glass
_CENTIMETRE_UM = 1e4
_INCH_UM = 25400.0


class MissingResolutionError(DataError):
    """The slide has no microns-per-pixel in its metadata or TIFF tags, and none was given."""


@dataclass(frozen=True)
class SlideInfo:
    """What ``pcamlab slide info`` prints: a plain summary of a slide (JSON-ready via ``to_dict``).

    Attributes:
        path: the slide file.
        backend: ``"openslide"`` or ``"tiffslide"``.
        vendor: the format as the backend names it (``generic-tiff``, ``aperio``, ...), or ``"unknown"``.
        level_dimensions: ``(width, height)`` in pixels per level, level 0 first.
        level_downsamples: downsample factor of each level relative to level 0.
        mpp: ``(x, y)`` microns per pixel of level 0, or ``None`` when unknown.
        mpp_source: ``"metadata"``, ``"tiff-tags"``, ``"given"`` or ``"missing"``.
        objective_power: the scanner's objective magnification when the metadata has it.
    """

    path: str
    backend: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    mpp_source: str
    objective_power: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "backend": self.backend, "vendor": self.vendor,
            "level_dimensions": [list(size) for size in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": list(self.mpp) if self.mpp else None, "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
        }


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _mpp_from_tiff_tags(path: Path) -> tuple[float, float] | None:
    """Microns per pixel of the first page from the TIFF resolution tags, or None (no tags, no unit, not TIFF)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
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
        vendor: the backend's name for the format.
        level_dimensions: ``(width, height)`` per level, level 0 first.
        level_downsamples: downsample of each level relative to level 0.
        mpp: ``(x, y)`` microns per pixel at level 0, or None when unknown and not given.
        mpp_source: ``"metadata"``, ``"tiff-tags"``, ``"given"`` or ``"missing"``.
    """

    def __init__(self, handle: Any, backend: str, path: Path, mpp: float | None = None):
        self._handle = handle
        self.backend = backend
        self.path = path
        properties = dict(handle.properties)
        self.properties = properties
        self.vendor = str(properties.get(f"{backend}.vendor") or "unknown")
        self.level_dimensions = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)
        self.objective_power = _float_or_none(properties.get(f"{backend}.objective-power"))
        self.mpp, self.mpp_source = self._resolve_mpp(properties, mpp)

    def _resolve_mpp(self, properties: dict[str, Any], given: float | None) -> tuple[tuple[float, float] | None, str]:
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
        if given is not None:
            if not (isinstance(given, (int, float)) and given > 0 and np.isfinite(given)):
                raise DataError(f"mpp must be a positive number of microns per pixel; got {given!r}")
            return (float(given), float(given)), "given"
        return None, "missing"

    def require_mpp(self) -> float:
        """The level-0 microns per pixel (mean of x and y).

        Raises:
            MissingResolutionError: none in the metadata or TIFF tags, and no ``mpp`` given.
        """
        if self.mpp is None:
            raise MissingResolutionError(
                f"slide {str(self.path)!r} has no resolution (no microns-per-pixel in its metadata or TIFF "
                "resolution tags); give the level-0 resolution as mpp (um/px, e.g. 0.25 for a 40x scan)"
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
                         self.mpp, self.mpp_source, self.objective_power)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels of ``level`` as uint8 RGB ``(height, width, 3)``.

        Args:
            location: ``(x, y)`` of the top-left corner in LEVEL-0 pixels (OpenSlide's convention).
            level: pyramid level to read.
            size: ``(width, height)`` in pixels of ``level``.

        Regions outside the slide, and transparent pixels, read as white (glass).
        """
        region = self._handle.read_region((int(location[0]), int(location[1])), int(level),
                                          (int(size[0]), int(size[1])))
        array = np.asarray(region)
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
        """
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


def open_slide(path: str | os.PathLike, *, mpp: float | None = None, backend: str | None = None) -> Slide:
    """Open a whole-slide image with OpenSlide, else tiffslide.

    Args:
        path: the slide file (any format OpenSlide reads; TIFF-based ones also through tiffslide).
        mpp: level-0 microns per pixel to use when neither the metadata nor the TIFF tags have it.
        backend: force ``"openslide"`` or ``"tiffslide"`` (default: the first that opens the file).

    Returns:
        An open :class:`Slide`.

    Raises:
        DataError: the file is missing, is a folder, or no backend can read it (one line, naming the file
            and what each backend said).

    Example:
        >>> slide = open_slide("CMU-1.svs")
        >>> slide.level_dimensions[0]
        (46000, 32914)
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"slide {str(path)!r} does not exist; check the path")
    if not path.is_file():
        raise DataError(f"slide {str(path)!r} is not a file; pass a slide file (e.g. .svs, .tif, .ndpi, .mrxs)")
    if backend is not None and backend not in BACKENDS:
        from pcamlab.errors import did_you_mean

        raise DataError(f"backend must be one of {list(BACKENDS)}; got {backend!r}{did_you_mean(backend, BACKENDS)}")
    openers = {"openslide": _open_openslide, "tiffslide": _open_tiffslide}
    failures = []
    for name in [backend] if backend else BACKENDS:
        try:
            handle = openers[name](path)
        except Exception as error:  # each backend raises its own types for an unreadable file
            reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
            failures.append(f"{name}: {reason}")
            continue
        try:
            slide = Slide(handle, name, path, mpp)
            if not slide.level_dimensions or min(slide.dimensions) < 1:
                raise ValueError("no image levels")
            slide.read_region((0, 0), slide.level_count - 1, (1, 1))  # decodes: catches corrupt tiles early
        except DataError:
            handle.close()
            raise
        except Exception as error:
            handle.close()
            failures.append(f"{name}: {(str(error).splitlines() or [type(error).__name__])[0][:120]}")
            continue
        return slide
    raise DataError(
        f"cannot read slide {str(path)!r} ({'; '.join(failures)}); pass a whole-slide image OpenSlide or "
        "tiffslide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, OME-TIFF, ...)"
    )


def slide_info(path: str | os.PathLike, *, mpp: float | None = None) -> SlideInfo:
    """The :class:`SlideInfo` of a slide file (opens and closes it). Raises like :func:`open_slide`."""
    with open_slide(path, mpp=mpp) as slide:
        return slide.info()
