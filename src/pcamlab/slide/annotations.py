"""Pathologists' slide annotations in: ASAP/Camelyon XML, QuPath GeoJSON and label-mask images.

:func:`read_annotations` reads one annotation file into a :class:`SlideAnnotations`: three shapely
MultiPolygons in level-0 pixels (x right, y down), ``tumour`` (exclusion regions already subtracted),
``normal`` and ``exclude``, plus the repairs it made. Each format is one class registered by name in
:data:`ANNOTATION_FORMATS` (``asap``, ``geojson``, ``mask``), chosen by the file's suffix and checked
against the file's first bytes, so a GeoJSON saved as ``.xml`` fails with one line saying so.

- ``asap``: ASAP's XML (Camelyon16 and Camelyon17). Polygons with fractional coordinates in level-0
  pixels, grouped by ``PartOfGroup``. Camelyon16's training files group tumour as ``Tumor``, its test files
  as ``_0`` and ``_1``; ``_2`` marks non-tumour regions inside tumour, which are excluded (Camelyon16
  challenge data description, camelyon16.grand-challenge.org/Data); Camelyon17 uses ``metastases``
  (camelyon17.grand-challenge.org/Data). Parsed with the standard library's expat ``XMLParser``; a
  DOCTYPE (and so any ENTITY declaration, the "billion laughs" attack) is refused.
- ``geojson``: QuPath's export (File > Export objects as GeoJSON): a FeatureCollection or a bare array of
  Features, Polygon and MultiPolygon geometries with holes, the class in ``properties.classification.name``.
- ``mask``: a label image (PNG or TIFF) at a stated downsample of level 0; pixel values are classes
  (by default 1 and 255 tumour, the other non-zero values unknown until mapped). Vectorised with
  scikit-image's connected components and marching squares (``find_contours``).

Class names map to :data:`TUMOUR`, :data:`NORMAL` or :data:`EXCLUDE` case-insensitively through
:data:`DEFAULT_CLASS_MAP`; ``class_map`` adds to or overrides it. A name in neither is an error (a
silently dropped class would turn tumour into negatives).

Example:
    >>> notes = read_annotations("tumor_001.xml", slide_dimensions=(97792, 221184))
    >>> notes.tumour.area * 0.243 ** 2 / 1e6  # mm2 at Camelyon16's 0.243 um/px
    >>> mask = rasterize(notes.tumour, shape=(1728, 764), downsample=128)  # uint8, 1 inside
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from pcamlab.errors import DataError
from pcamlab.fileio import printable
from pcamlab.registry import Registry

__all__ = [
    "TUMOUR",
    "NORMAL",
    "EXCLUDE",
    "CLASSES",
    "DEFAULT_CLASS_MAP",
    "DEFAULT_MASK_CLASS_MAP",
    "ANNOTATION_FORMATS",
    "ANNOTATION_SUFFIXES",
    "AnnotationFormat",
    "SlideAnnotations",
    "read_annotations",
    "find_annotation_file",
    "rasterize",
    "draw_annotations",
    "OUTLINE_COLOURS",
]

TUMOUR, NORMAL, EXCLUDE = "tumour", "normal", "exclude"
CLASSES = (TUMOUR, NORMAL, EXCLUDE)

# Class names (lower case) -> class. Sources: Camelyon16 (`Tumor`; test files `_0`, `_1` tumour, `_2` non-tumour
# inside tumour), Camelyon17 (`metastases`), QuPath's built-in classes (Tumor, Stroma, Immune cells, Necrosis,
# Other, Region*, Ignore*).
DEFAULT_CLASS_MAP: dict[str, str] = {
    "tumor": TUMOUR, "tumour": TUMOUR, "_0": TUMOUR, "_1": TUMOUR, "metastases": TUMOUR, "metastasis": TUMOUR,
    "normal": NORMAL, "stroma": NORMAL, "immune cells": NORMAL, "necrosis": NORMAL, "other": NORMAL,
    "non-tumor": NORMAL, "non-tumour": NORMAL,
    "_2": EXCLUDE, "exclude": EXCLUDE, "exclusion": EXCLUDE, "ignore": EXCLUDE, "ignore*": EXCLUDE,
    "region*": EXCLUDE,
}
# Pixel values of a label mask -> class: Camelyon16's masks hold 255 (or 1) inside tumour, 0 elsewhere.
DEFAULT_MASK_CLASS_MAP: dict[str, str] = {"1": TUMOUR, "255": TUMOUR}
UNCLASSIFIED = "unclassified"  # the class name of a QuPath object without a classification
OUTSIDE_TOLERANCE = 0.02  # vertices this far (share of the slide's side) past its edge are clipped, farther refused
MASK_MAX_PIXELS = 64_000_000  # a pyramidal TIFF mask is read from its first level with at most this many pixels

ANNOTATION_FORMATS: Registry[type[AnnotationFormat]] = Registry("annotation format")


def _empty() -> MultiPolygon:
    return MultiPolygon()


@dataclass(frozen=True)
class SlideAnnotations:
    """The regions of one slide's annotation file, in level-0 pixels (x right, y down).

    Attributes:
        tumour: tumour regions with the ``exclude`` regions already subtracted.
        normal: annotated normal tissue (often empty).
        exclude: regions that count for nothing (Camelyon16's ``_2``: non-tumour inside tumour).
        source: the file read.
        format: ``"asap"``, ``"geojson"`` or ``"mask"``.
        notes: repairs made, one sentence each (a self-intersecting polygon made valid, a clipped edge, ...).
        source_classes: ``(name in the file, class, regions)`` per class name met, in file order.
    """

    tumour: MultiPolygon = field(default_factory=_empty)
    normal: MultiPolygon = field(default_factory=_empty)
    exclude: MultiPolygon = field(default_factory=_empty)
    source: Path = Path()
    format: str = ""
    notes: tuple[str, ...] = ()
    source_classes: tuple[tuple[str, str, int], ...] = ()

    def geometry(self, name: str) -> MultiPolygon:
        """The MultiPolygon of class ``name`` (:data:`TUMOUR`, :data:`NORMAL` or :data:`EXCLUDE`)."""
        if name not in CLASSES:
            raise DataError(f"annotation class must be one of {list(CLASSES)}; got {name!r}")
        return getattr(self, name)

    @property
    def is_empty(self) -> bool:
        return all(self.geometry(name).is_empty for name in CLASSES)

    def summary(self, mpp: float | None = None) -> dict[str, dict[str, float | int | None]]:
        """Per class: ``regions`` (polygons), ``area_px`` (level-0 px2) and ``area_mm2`` (None without ``mpp``)."""
        result = {}
        for name in CLASSES:
            geometry = self.geometry(name)
            area = float(geometry.area)
            result[name] = {"regions": len(geometry.geoms), "area_px": area,
                            "area_mm2": area * mpp**2 / 1e6 if mpp else None}
        return result


class AnnotationFormat:
    """One annotation file format: a subclass registered with ``@ANNOTATION_FORMATS.register(name)``.

    A subclass sets ``suffixes`` (lower case, with the dot) and implements ``sniff`` (do these first bytes
    look like this format?) and ``read`` (the file as ``[(class name as written, shapely geometry, region label)]`` in
    level-0 pixels, and notes). Names are mapped to classes, polygons repaired and clipped by
    :func:`read_annotations`, once for every format.
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @staticmethod
    def sniff(head: bytes) -> bool:
        raise NotImplementedError

    def read(self, path: Path, *, mask_downsample: float | None,
             slide_dimensions: tuple[int, int] | None) -> tuple[list[tuple[str, Any]], list[str]]:
        raise NotImplementedError


def _text_encoding(head: bytes) -> str:
    """The encoding of an annotation text file from its byte-order mark: UTF-16 (ASAP on Windows can write it), else UTF-8."""
    return "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"


def _text_head(head: bytes) -> bytes:
    """The file's first bytes as UTF-8 without byte-order mark and leading blanks, for sniffing its format."""
    if _text_encoding(head) == "utf-16":
        head = head.decode("utf-16", errors="ignore").encode("utf-8", errors="ignore")
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")


@ANNOTATION_FORMATS.register("asap")
class AsapXml(AnnotationFormat):
    """ASAP / Camelyon16 / Camelyon17 XML: ``<Annotation PartOfGroup=...><Coordinates><Coordinate X Y>``."""

    name = "asap"
    suffixes = (".xml",)
    description = "ASAP/Camelyon XML"
    POLYGON_TYPES = ("polygon", "spline", "rectangle")  # ASAP types with an area; Dot and PointSet have none

    @staticmethod
    def sniff(head: bytes) -> bool:
        return _text_head(head).startswith(b"<")

    def read(self, path, *, mask_downsample, slide_dimensions):
        import xml.etree.ElementTree as ElementTree

        class NoDoctype(ElementTree.TreeBuilder):
            def doctype(self, name, pubid, system):  # called at <!DOCTYPE, before any ENTITY is declared
                raise DataError(f"{printable(path)!r} declares a DOCTYPE ({name!r}); annotation XML needs none and "
                                "pcamlab refuses DOCTYPE and ENTITY declarations (entity expansion attacks); "
                                "export the annotations again from ASAP")

        parser = ElementTree.XMLParser(target=NoDoctype())
        try:
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    parser.feed(block)
            root = parser.close()
        except ElementTree.ParseError as error:
            raise DataError(f"{printable(path)!r} is not well-formed XML ({error}); export it again from ASAP "
                            "or pass the right file") from None
        annotations = [element for element in root.iter() if element.tag.lower() == "annotation"]
        if root.tag.lower() not in ("asap_annotations", "annotations") and not annotations:
            raise DataError(f"{printable(path)!r} is XML but not ASAP annotations (root element <{root.tag}>, no "
                            "<Annotation> elements); pass an ASAP/Camelyon .xml file")
        regions, notes, skipped = [], [], {}
        for number, element in enumerate(annotations):
            label = element.get("Name") or f"#{number}"
            group = (element.get("PartOfGroup") or "").strip() or "None"
            kind = (element.get("Type") or "Polygon").strip().lower()
            if kind not in self.POLYGON_TYPES:
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            points = []
            for coordinate in element.iter():
                if coordinate.tag.lower() != "coordinate":
                    continue
                try:  # some ASAP exports from comma-decimal locales write X="1234,5"
                    order = float(coordinate.get("Order", len(points)))
                    x = float(coordinate.get("X", "").replace(",", "."))
                    y = float(coordinate.get("Y", "").replace(",", "."))
                except ValueError:
                    raise DataError(f"{printable(path)!r}: annotation {label!r} has a coordinate that is not a "
                                    f"number (X={coordinate.get('X')!r}, Y={coordinate.get('Y')!r})") from None
                if not (np.isfinite(x) and np.isfinite(y)):
                    raise DataError(f"{printable(path)!r}: annotation {label!r} has a non-finite coordinate "
                                    f"({x}, {y})")
                points.append((order, x, y))
            points.sort(key=lambda point: point[0])
            if len(points) < 3:
                raise DataError(f"{printable(path)!r}: annotation {label!r} ({group}) has {len(points)} "
                                "coordinates; a region needs at least 3; fix or delete it in ASAP")
            if kind == "spline":
                notes.append(f"annotation {label!r} is a spline: its control points are used as polygon vertices")
            regions.append((group, Polygon([(x, y) for _, x, y in points]), label))
        for kind, count in skipped.items():
            notes.append(f"{count} annotation(s) of type {kind!r} have no area and were left out")
        return regions, notes


@ANNOTATION_FORMATS.register("geojson")
class QuPathGeoJson(AnnotationFormat):
    """QuPath GeoJSON: a FeatureCollection (or a bare array) of Polygon / MultiPolygon features."""

    name = "geojson"
    suffixes = (".geojson", ".json")
    description = "QuPath GeoJSON"

    @staticmethod
    def sniff(head: bytes) -> bool:
        return _text_head(head)[:1] in (b"{", b"[")

    def read(self, path, *, mask_downsample, slide_dimensions):
        from shapely.geometry import shape

        try:
            raw = Path(path).read_bytes()
            document = json.loads(raw.decode(_text_encoding(raw[:4])))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{printable(path)!r} is not valid JSON ({error}); export it again from QuPath "
                            "(File > Export objects as GeoJSON)") from None
        if isinstance(document, dict) and document.get("type") == "FeatureCollection":
            features = document.get("features")
        elif isinstance(document, dict) and document.get("type") == "Feature":
            features = [document]
        elif isinstance(document, list):
            features = document
        else:
            kind = document.get("type") if isinstance(document, dict) else type(document).__name__
            raise DataError(f"{printable(path)!r} is JSON but not GeoJSON features (type {kind!r}); pass a "
                            "FeatureCollection or an array of Features (QuPath: Export objects as GeoJSON)")
        if not isinstance(features, list):
            raise DataError(f"{printable(path)!r}: 'features' must be an array; got {type(features).__name__}")
        regions, notes, skipped = [], [], {}
        for number, feature in enumerate(features):
            if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
                raise DataError(f"{printable(path)!r}: feature {number} has no geometry object; each feature "
                                "needs {'type': 'Feature', 'geometry': {...}, 'properties': {...}}")
            properties = feature.get("properties") or {}
            label = str(properties.get("name") or feature.get("id") or f"#{number}")
            kind = feature["geometry"].get("type")
            if kind not in ("Polygon", "MultiPolygon"):
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            try:
                geometry = shape(feature["geometry"])
            except Exception as error:  # shapely raises several types for malformed coordinates
                raise DataError(f"{printable(path)!r}: feature {label!r} has a malformed {kind} "
                                f"({str(error)[:120]})") from None
            regions.append((self._class_name(properties), geometry, label))
        for kind, count in skipped.items():
            notes.append(f"{count} feature(s) of type {kind!r} have no area and were left out")
        return regions, notes

    @staticmethod
    def _class_name(properties: Mapping[str, Any]) -> str:
        classification = properties.get("classification")
        if isinstance(classification, dict):
            name = classification.get("name") or ": ".join(classification.get("names") or [])
        else:
            name = classification  # older exports: a plain string
        return str(name).strip() if name else UNCLASSIFIED


@ANNOTATION_FORMATS.register("mask")
class LabelMask(AnnotationFormat):
    """A label image (PNG or TIFF): each pixel's value is its class, at ``mask_downsample`` of level 0."""

    name = "mask"
    suffixes = (".png", ".tif", ".tiff")
    description = "label-mask image"
    MAGIC = (b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

    @staticmethod
    def sniff(head: bytes) -> bool:
        return head.startswith(LabelMask.MAGIC)

    def read(self, path, *, mask_downsample, slide_dimensions):
        labels, level_factor = self._pixels(path)
        if mask_downsample is None:
            if slide_dimensions is None:
                raise DataError(f"label mask {printable(path)!r}: its downsample is unknown; give mask_downsample "
                                "(level-0 pixels per mask pixel, e.g. 16) or the slide's dimensions",
                                parameters=("mask_downsample",))
            mask_downsample = slide_dimensions[0] / (labels.shape[1] * level_factor)
        if not (np.isfinite(mask_downsample) and mask_downsample > 0):
            raise DataError(f"mask_downsample must be a positive number; got {mask_downsample!r}",
                            parameters=("mask_downsample",))
        downsample = float(mask_downsample) * level_factor
        regions = []
        for value in np.unique(labels):
            if value != 0:
                regions.append((str(int(value)), self._polygons(labels == value, downsample), f"value {int(value)}"))
        notes = [f"mask read at {downsample:g} level-0 px per pixel"] if level_factor != 1 else []
        return regions, notes

    @staticmethod
    def _polygons(mask: np.ndarray, downsample: float) -> MultiPolygon:
        """The regions of a boolean mask as polygons in level-0 px, one per 4-connected component, with holes.

        Marching squares (``find_contours``, which joins background diagonally and so foreground only through
        edges, like 4-connected labelling) on each component's zero-padded crop gives its outline and its
        holes, in (row, col) of pixel centres; the outline is the ring of largest area.
        """
        from skimage.measure import find_contours, label, regionprops

        polygons = []
        for region in regionprops(label(mask, connectivity=1)):
            top, left = region.bbox[:2]
            contours = find_contours(np.pad(region.image, 1).astype(np.uint8), 0.5)
            rings = sorted(((contour[:, ::-1] + (left - 0.5, top - 0.5)) * downsample for contour in contours
                            if len(contour) >= 4), key=lambda ring: -abs(Polygon(ring).area))
            if rings:
                polygons.append(Polygon(rings[0], rings[1:]))
        return MultiPolygon(polygons)

    @staticmethod
    def _pixels(path: Path) -> tuple[np.ndarray, float]:
        """2-D integer labels and the factor of the level read relative to the file's first level.

        Raises:
            DataError: the image does not decode (truncated, damaged) or is not one channel of integers.
        """
        try:
            pixels, factor = LabelMask._decode(path)
        except (OSError, ValueError, SyntaxError, EOFError) as error:  # PIL's and tifffile's decode errors
            from pcamlab.errors import plain_line

            raise DataError(f"label mask {printable(path)!r} does not decode ({type(error).__name__}: "
                            f"{plain_line(error, 160)}): the file is truncated or damaged; copy or export it again"
                            ) from None
        if pixels.ndim == 3:
            if pixels.shape[2] in (3, 4) and np.array_equal(pixels[..., 0], pixels[..., 1]) and \
                    np.array_equal(pixels[..., 0], pixels[..., 2]):
                pixels = pixels[..., 0]
            elif pixels.shape[2] == 1:
                pixels = pixels[..., 0]
            else:
                raise DataError(f"label mask {printable(path)!r} is a colour image {pixels.shape}; a label mask has "
                                "one channel, each pixel's value its class (e.g. 0 background, 1 tumour)")
        if pixels.ndim != 2 or not np.issubdtype(pixels.dtype, np.integer) and pixels.dtype != bool:
            raise DataError(f"label mask {printable(path)!r} must be a 2-D integer image; got {pixels.dtype} "
                            f"{pixels.shape}")
        return pixels.astype(np.int64), factor

    @staticmethod
    def _decode(path: Path) -> tuple[np.ndarray, float]:
        """The mask's pixels as decoded (any shape) and the factor of the level read; decoders' errors pass."""
        with open(path, "rb") as stream:
            magic = stream.read(4)
        if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                levels = tiff.series[0].levels
                full_width = levels[0].shape[1]
                level = next((level for level in levels if np.prod(level.shape[:2]) <= MASK_MAX_PIXELS), levels[-1])
                return level.asarray(), full_width / level.shape[1]
        from PIL import Image

        with Image.open(path) as image:
            image.load()  # decodes the whole file here, so a truncated one fails inside the caller's try
            return np.asarray(image if image.mode in ("L", "P", "I", "I;16", "1") else image.convert("RGB")), 1.0


ANNOTATION_SUFFIXES: tuple[str, ...] = tuple(
    suffix for name in ANNOTATION_FORMATS.names() for suffix in ANNOTATION_FORMATS.get(name).suffixes)


def _format_for(path: Path, head: bytes) -> AnnotationFormat:
    suffix = path.suffix.lower()
    by_suffix = [ANNOTATION_FORMATS.get(name) for name in ANNOTATION_FORMATS.names()
                 if suffix in ANNOTATION_FORMATS.get(name).suffixes]
    if not by_suffix:
        raise DataError(f"annotation file {printable(path)!r} has suffix {suffix or '(none)'!r}; pcamlab reads "
                        f"{', '.join(sorted(ANNOTATION_SUFFIXES))} (ASAP/Camelyon XML, QuPath GeoJSON, label masks)")
    chosen = by_suffix[0]
    if not chosen.sniff(head):
        others = [ANNOTATION_FORMATS.get(name) for name in ANNOTATION_FORMATS.names()]
        looks = next((kind.description for kind in others if kind is not chosen and kind.sniff(head)), None)
        what = f"its content looks like {looks}" if looks else "its first bytes are not of that format"
        raise DataError(f"annotation file {printable(path)!r} is named {suffix} ({chosen.description}) but {what}; "
                        "rename it with the suffix of its format or pass the right file")
    return chosen()


def _classify(name: str, class_map: Mapping[str, str]) -> str | None:
    return class_map.get(name.lower())


def _polygons(geometry: Any) -> list[Polygon]:
    """The polygonal parts of a shapely geometry (lines and points dropped)."""
    if isinstance(geometry, Polygon):
        return [] if geometry.is_empty else [geometry]
    if hasattr(geometry, "geoms"):
        return [part for item in geometry.geoms for part in _polygons(item)]
    return []


def _multipolygon(geometry: Any) -> MultiPolygon:
    parts = _polygons(geometry)
    return MultiPolygon(parts) if parts else MultiPolygon()


def read_annotations(
    path: str | os.PathLike,
    *,
    slide_dimensions: tuple[int, int] | None = None,
    class_map: Mapping[str, str] | None = None,
    mask_downsample: float | None = None,
    repair: bool = True,
) -> SlideAnnotations:
    """Read one annotation file (format by suffix: ``.xml``, ``.geojson``/``.json``, ``.png``/``.tif``).

    Args:
        path: the annotation file.
        slide_dimensions: ``(width, height)`` of the slide's level 0; when given, regions past the slide's
            edge by more than 2% of its side are refused (a file made for another slide) and smaller
            overhangs are clipped with a note; a mask's downsample is derived from it when not given.
        class_map: class names (ASAP groups, QuPath classifications, mask values as strings) -> ``"tumour"``,
            ``"normal"`` or ``"exclude"``, added to :data:`DEFAULT_CLASS_MAP` (:data:`DEFAULT_MASK_CLASS_MAP`
            for masks); names match case-insensitively.
        mask_downsample: level-0 pixels per mask pixel (masks only).
        repair: make self-intersecting polygons valid (``shapely.make_valid``) with a note; False refuses them.

    Returns:
        A :class:`SlideAnnotations` in level-0 pixels.

    Raises:
        DataError: a missing, empty or malformed file; a format other than its suffix says; a class name that
            is not mapped; a self-intersecting polygon with ``repair=False``; regions outside the slide.

    Example:
        >>> annotations = read_annotations("test_001.xml", class_map={"Tumour region": "tumour"})
        >>> len(annotations.tumour.geoms), annotations.notes
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {printable(path)!r} does not exist or is not a file; check the path")
    with open(path, "rb") as stream:
        head = stream.read(4096)
    if not _text_head(head):
        raise DataError(f"annotation file {printable(path)!r} is empty; export the annotations again or remove it "
                        "(a slide without an annotation file counts as a normal slide)")
    reader = _format_for(path, head)
    base = DEFAULT_MASK_CLASS_MAP if reader.name == "mask" else DEFAULT_CLASS_MAP
    mapping = {key.lower(): value for key, value in base.items()}
    for key, value in (class_map or {}).items():
        if value not in CLASSES:
            raise DataError(f"class_map maps {key!r} to {value!r}; a class must be one of {list(CLASSES)}, e.g. "
                            f"class_map={ {key: TUMOUR}!r}", parameters=("class_map",))
        mapping[str(key).strip().lower()] = value
    regions, notes = reader.read(path, mask_downsample=mask_downsample, slide_dimensions=slide_dimensions)
    if mask_downsample is not None and reader.name != "mask":
        notes.append(f"mask_downsample {mask_downsample:g} is for label masks; this {reader.description} file, in "
                     "level-0 pixels, does not use it")
    if not regions:
        raise DataError(f"annotation file {printable(path)!r} holds no regions (no polygons with an area); export "
                        "the annotations again, or remove the file for a slide without tumour")
    unknown = sorted({name for name, _, _ in regions if _classify(name, mapping) is None})
    if unknown:
        raise DataError(f"annotation file {printable(path)!r} has class(es) {unknown} that pcamlab does not know; "
                        f"map each to one of {list(CLASSES)}, e.g. class_map={ {unknown[0]: TUMOUR}!r}",
                        parameters=("class_map",))
    parts: dict[str, list[Any]] = {name: [] for name in CLASSES}
    counts: dict[tuple[str, str], int] = {}
    for name, geometry, label in regions:
        geometry = shapely.force_2d(geometry)  # GeoJSON may carry a third coordinate (z); regions are 2-D
        valid = geometry.is_valid
        polygons = _polygons(geometry if valid else shapely.make_valid(geometry))
        if not polygons or sum(polygon.area for polygon in polygons) == 0:  # collinear or repeated points
            notes.append(f"region {label!r} ({name}) has no area and was left out")
            continue
        if not valid:
            reason = shapely.is_valid_reason(geometry)
            if not repair:
                raise DataError(f"annotation file {printable(path)!r}: region {label!r} ({name}) is not a valid "
                                f"polygon ({reason}); fix it in the annotation tool, or let pcamlab repair it "
                                "(repair=True)", parameters=("repair",))
            notes.append(f"region {label!r} ({name}) was not a valid polygon ({reason}); repaired")
        parts[_classify(name, mapping)].extend(polygons)
        key = (name, _classify(name, mapping))
        counts[key] = counts.get(key, 0) + 1
    if not any(parts.values()):
        raise DataError(f"annotation file {printable(path)!r} holds no regions with an area (" + "; ".join(notes[:3])
                        + ("; ..." if len(notes) > 3 else "") + "); export the annotations again, or remove the file for a slide without tumour")
    merged = {name: shapely.union_all(items) if items else MultiPolygon() for name, items in parts.items()}
    if slide_dimensions is not None:
        merged = _check_inside(path, merged, slide_dimensions, notes)
    exclude = _multipolygon(merged[EXCLUDE])
    tumour = _multipolygon(merged[TUMOUR].difference(exclude) if not exclude.is_empty else merged[TUMOUR])
    normal = _multipolygon(merged[NORMAL].difference(exclude) if not exclude.is_empty else merged[NORMAL])
    return SlideAnnotations(tumour, normal, exclude, path, reader.name, tuple(notes),
                            tuple((name, kind, count) for (name, kind), count in counts.items()))


def _px(value: float) -> str:
    """A coordinate for a message: whole pixels, or 3 significant digits when absurdly large (1e300 is not 301 digits)."""
    return f"{value:.0f}" if abs(value) < 1e9 else f"{value:.3g}"


def _check_inside(path: Path, merged: dict[str, Any], slide_dimensions: tuple[int, int],
                  notes: list[str]) -> dict[str, Any]:
    width, height = slide_dimensions
    everything = shapely.union_all([geometry for geometry in merged.values() if not geometry.is_empty])
    if everything.is_empty:
        return merged
    left, top, right, bottom = everything.bounds
    slack_x, slack_y = OUTSIDE_TOLERANCE * width, OUTSIDE_TOLERANCE * height
    if left < -slack_x or top < -slack_y or right > width + slack_x or bottom > height + slack_y:
        raise DataError(
            f"annotation file {printable(path)!r} has regions outside the slide (bounds x {_px(left)}..{_px(right)}, "
            f"y {_px(top)}..{_px(bottom)} level-0 px; the slide is {width} x {height}): it was made for another slide "
            "or another level; pass the annotation file of this slide"
        )
    if left < 0 or top < 0 or right > width or bottom > height:
        notes.append(f"regions reaching past the slide's edge (bounds x {_px(left)}..{_px(right)}, y {_px(top)}.."
                     f"{_px(bottom)}; slide {width} x {height}) were clipped to it")
        frame = shapely.box(0, 0, width, height)
        merged = {name: geometry.intersection(frame) for name, geometry in merged.items()}
    return merged


def find_annotation_file(annotations: str | os.PathLike, slide_id: str) -> Path | None:
    """The annotation file of slide ``slide_id``: ``annotations`` itself when a file, else searched in a folder.

    In a folder, ``<slide_id><suffix>`` for every suffix of :data:`ANNOTATION_SUFFIXES`, and
    ``<slide_id>_mask<suffix>`` / ``<slide_id>.mask<suffix>`` for masks (Camelyon16's mask naming). When
    the folder holds the slide in several formats (a synthetic cohort writes both XML and GeoJSON), the
    first format of the registry wins: ASAP XML, then GeoJSON, then a mask.

    Returns:
        The file, or None when the folder has none for this slide (a normal slide, as in Camelyon16).

    Raises:
        DataError: ``annotations`` does not exist, or the folder holds two files of one format for the slide.
    """
    annotations = Path(annotations)
    if annotations.is_file():
        return annotations
    if not annotations.is_dir():
        raise DataError(f"annotations {printable(annotations)!r} does not exist; pass an annotation file or a "
                        "folder of <slide id>.xml / .geojson / .png files")
    names = [f"{slide_id}{suffix}" for suffix in ANNOTATION_SUFFIXES]
    names += [f"{slide_id}{middle}{suffix}" for middle in ("_mask", ".mask")
              for suffix in ANNOTATION_FORMATS.get("mask").suffixes]
    found = [annotations / name for name in names if (annotations / name).is_file()]
    for kind in ANNOTATION_FORMATS.names():  # the registry's order: asap, geojson, mask
        same = [path for path in found if path.suffix.lower() in ANNOTATION_FORMATS.get(kind).suffixes]
        if len(same) > 1:
            raise DataError(f"annotations folder {printable(annotations)!r} has {len(same)} {kind} files for slide "
                            f"{slide_id!r} ({', '.join(path.name for path in same)}); keep one per slide")
        if same:
            return same[0]
    return None


def rasterize(geometry: Any, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """uint8 ``(rows, cols)`` mask, 1 where a pixel's centre lies inside ``geometry`` (level-0 px), 0 elsewhere.

    Pixel ``(row, col)`` covers level-0 ``[col * downsample, (col + 1) * downsample)`` in x (likewise y), so
    its centre is at ``(col + 0.5) * downsample``. Rings are filled with ``skimage.draw.polygon`` and combined
    by parity (even-odd), which for a valid (Multi)Polygon is the polygons minus their holes.

    Args:
        geometry: a shapely Polygon, MultiPolygon or GeometryCollection (other parts ignored).
        shape: ``(rows, cols)`` of the mask.
        downsample: level-0 pixels per mask pixel (> 0).

    Example:
        >>> rasterize(annotations.tumour, (height // 16, width // 16), 16).sum() * 16**2  # level-0 px2
    """
    from skimage.draw import polygon as fill_polygon

    if not downsample > 0:
        raise DataError(f"downsample must be > 0; got {downsample!r}")
    mask = np.zeros(shape, dtype=np.uint8)
    for part in _polygons(geometry):
        for ring in (part.exterior, *part.interiors):
            xy = np.asarray(ring.coords) / downsample - 0.5
            rows, cols = fill_polygon(xy[:, 1], xy[:, 0], shape=shape)
            mask[rows, cols] ^= 1
    return mask


OUTLINE_COLOURS = {TUMOUR: (230, 20, 20), NORMAL: (20, 160, 40), EXCLUDE: (30, 60, 230)}  # RGB per class


def draw_annotations(image: np.ndarray, annotations: SlideAnnotations, downsample: float,
                     width: int = 2) -> np.ndarray:
    """A copy of a uint8 RGB thumbnail ``(h, w, 3)`` with the outlines of every class drawn on it.

    Tumour red, normal green, exclude blue (:data:`OUTLINE_COLOURS`), holes included; drawn with Pillow.

    Args:
        image: the slide at ``downsample`` (e.g. ``Slide.thumbnail``).
        annotations: what :func:`read_annotations` returned.
        downsample: level-0 pixels per thumbnail pixel.
        width: line width in thumbnail pixels.
    """
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(picture)
    for name in (NORMAL, EXCLUDE, TUMOUR):
        for part in _polygons(annotations.geometry(name)):
            for ring in (part.exterior, *part.interiors):
                points = [(x / downsample, y / downsample) for x, y in ring.coords]
                draw.line(points, fill=OUTLINE_COLOURS[name], width=width, joint="curve")
    return np.asarray(picture)
