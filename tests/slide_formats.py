"""Whole-slide images in each vendor format the readers open, written here with tifffile, and ways to damage them.

Every format holds the same pixels: level 0 is a synthetic slide of real PCam patches
(:func:`pcamlab.slide.make_synthetic_slide`'s layout), the levels below it are 2x box reductions, and
every level is written in 256 x 256 JPEG tiles at the same quality, so the same tile decodes to the same
pixels whichever format holds it.

- ``aperio-svs``: Aperio's layout (what OpenSlide's aperio driver and tifffile's SVS series expect): the
  ImageDescription starts ``Aperio Image Library`` and carries ``|MPP = ...|AppMag = 40``; page 0 is
  level 0 (tiled), page 1 a stripped thumbnail, pages 2.. the reduced levels (tiled, NewSubfileType 0).
- ``generic-tiff``: a tiled BigTIFF, reduced levels as pages marked reduced-resolution, mpp in the
  resolution tags (pixels per centimetre).
- ``ome-tiff``: tifffile's OME-TIFF with the reduced levels as SubIFDs of level 0 and the mpp as OME
  ``PhysicalSizeX/Y`` (and the resolution tags).

DICOM-WSI is not generated: writing it needs pydicom or wsidicom, which are not installed here (and
writing DICOM by hand is what the project's rules forbid). OpenSlide 4's DICOM driver reads such files.

Damage: :func:`cut_short` keeps the first bytes of a file (a copy that stopped); :func:`damage_tile`
overwrites one tile's bytes, found with tifffile's ``dataoffsets``/``databytecounts``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

FORMATS = ("aperio-svs", "generic-tiff", "ome-tiff")
SUFFIXES = {"aperio-svs": ".svs", "generic-tiff": ".tif", "ome-tiff": ".ome.tif"}
TILE = 256
QUALITY = 90
APERIO = "Aperio Image Library v12.0.15"


def synthetic_image(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3): level 0 of a synthetic slide of real PCam patches (tissue, tumour, glass)."""
    import tifffile

    from pcamlab.slide import make_synthetic_slide, sample_pools

    with tempfile.TemporaryDirectory() as folder:
        slide = make_synthetic_slide(Path(folder) / "source.tif", *sample_pools("valid"), width=width,
                                     height=height, seed=seed, jpeg_quality=95)
        return tifffile.imread(slide.path, key=0)


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``image`` and ``levels - 1`` 2x box reductions of it (each level's size floored)."""
    result = [image]
    for _ in range(levels - 1):
        previous = result[-1]
        height, width = previous.shape[0] // 2 * 2, previous.shape[1] // 2 * 2
        blocks = previous[:height, :width].reshape(height // 2, 2, width // 2, 2, 3).astype(np.float32)
        result.append(np.round(blocks.mean(axis=(1, 3))).astype(np.uint8))
    return result


def write_slide(path: str | Path, kind: str, image: np.ndarray, *, mpp: float = 0.25, levels: int = 3,
                mpp_y: float | None = None) -> Path:
    """Write ``image`` as a ``levels``-level pyramid in format ``kind`` (one of :data:`FORMATS`) at ``mpp`` um/px
    (generic TIFF: ``mpp_y`` in y when given, for pixels that are not square)."""
    import tifffile

    path = Path(path)
    images = pyramid(image, levels)
    tiles = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": QUALITY}}

    def pixels_per_cm(level: int) -> dict:
        return {"resolution": (1e4 / (mpp * 2 ** level), 1e4 / ((mpp_y or mpp) * 2 ** level)),
                "resolutionunit": "CENTIMETER"}

    if kind == "aperio-svs":
        height, width = image.shape[:2]

        def description(level_image: np.ndarray | None) -> str:
            size = f"{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q={QUALITY}"
            if level_image is not None:
                size = f"{width}x{height} -> {level_image.shape[1]}x{level_image.shape[0]} - "
            return f"{APERIO}\r\n{size}|AppMag = 40|MPP = {mpp}"

        thumbnail = images[-1][::2, ::2]
        with tifffile.TiffWriter(path) as tiff:
            tiff.write(images[0], description=description(None), metadata=None, **tiles)
            tiff.write(thumbnail, photometric="rgb", compression="jpeg", description=description(thumbnail),
                       metadata=None)
            for level_image in images[1:]:
                tiff.write(level_image, description=description(level_image), metadata=None, **tiles)
    elif kind == "generic-tiff":
        with tifffile.TiffWriter(path, bigtiff=True) as tiff:
            for level, level_image in enumerate(images):
                tiff.write(level_image, subfiletype=0 if level == 0 else 1, metadata=None, **tiles,
                           **pixels_per_cm(level))
    elif kind == "ome-tiff":
        metadata = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp,
                    "PhysicalSizeYUnit": "µm"}
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tiff:
            tiff.write(images[0], subifds=levels - 1, metadata=metadata, **tiles, **pixels_per_cm(0))
            for level, level_image in enumerate(images[1:], start=1):
                tiff.write(level_image, subfiletype=1, metadata=None, **tiles, **pixels_per_cm(level))
    else:
        raise ValueError(f"kind must be one of {FORMATS}; got {kind!r}")
    return path


def cut_short(path: str | Path, out: str | Path, fraction: float) -> Path:
    """A copy of ``path`` holding only its first ``fraction`` of bytes (a copy that stopped)."""
    data = Path(path).read_bytes()
    out = Path(out)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def tile_bytes(path: str | Path, page: int, index: int) -> tuple[int, int]:
    """(offset, byte count) of tile ``index`` of TIFF page ``page`` (main chain), as tifffile lists them."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        tiff_page = tiff.pages[page]
        return int(tiff_page.dataoffsets[index]), int(tiff_page.databytecounts[index])


def damage_tile(path: str | Path, out: str | Path, *, page: int = 0, index: int = 0, fill: int = 0) -> Path:
    """A copy of ``path`` with every byte of one tile overwritten by ``fill`` (a JPEG that does not decode)."""
    out = Path(out)
    shutil.copyfile(path, out)
    offset, count = tile_bytes(out, page, index)
    with open(out, "r+b") as stream:
        stream.seek(offset)
        stream.write(bytes([fill]) * count)
    return out
