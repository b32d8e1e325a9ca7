"""A synthetic Camelyon-like cohort: slides of real PCam patches, lesion annotations and a reference CSV.

:func:`make_cohort` writes, under ``out``::

    slides/<id>.tif              pyramidal tiled JPEG TIFFs at 0.972 um/px (slide.synthetic.write_slide)
    slides/<id>.truth.png/.json  the cell truth (0 glass, 128 normal tissue, 255 tumour)
    annotations/<id>.xml         the lesions as ASAP XML (Camelyon16 groups: `Tumor` / `_0` `_1`, `_2` excluded)
    annotations/<id>.geojson     the same lesions as a QuPath GeoJSON (tumour polygons with their holes)
    reference.csv                slide,label (Camelyon16's reference: tumor / normal)
    lesions.csv                  slide,lesion,category,diameter_mm,area_mm2,x,y (one row per lesion)

Normal slides have tissue only and no annotation file (as in Camelyon16). Tumour slides have several
lesions of irregular outline in the size categories of the TNM staging pathologists use for lymph-node
metastases (AJCC 8th edition, used by Camelyon17): macro-metastases over 2 mm, micro-metastases
0.2-2 mm, isolated tumour cells (ITC) under 0.2 mm, the size being the largest diameter. Each slide's
first lesion cycles through the three categories so every category occurs in a cohort of three or more
tumour slides; every macro-metastasis gets an `_2` region (non-tumour inside tumour).

The lesion polygons are the truth: a 96-pixel cell whose centre 32 x 32 square overlaps tumour (a lesion
minus its `_2` region, by a positive area) shows a real PCam label-1 patch, every other tissue cell a
label-0 patch; PCam's own labelling rule (Veeling et al. 2018). Training cohorts (``split="train"``) draw
patches only from the train split, test cohorts (``"valid"``) only from the valid split, so no patch is on
both sides. Slide ids follow Camelyon16: ``normal_001``, ``tumor_001`` for training, ``test_001`` ... (normal
and tumour shuffled) for a test cohort.

Example:
    >>> cohort = make_cohort("cohort", normal_slides=2, tumour_slides=2, split="train", seed=0)
    >>> cohort.reference  # {'normal_001': 0, 'normal_002': 0, 'tumor_001': 1, 'tumor_002': 1}
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon

from pcamlab import stopping
from pcamlab.errors import ConfigError, RunFolderError
from pcamlab.fileio import printable, staged_folder, write_text_atomic
from pcamlab.slide._model import PCAM_MPP
from pcamlab.slide.synthetic import CELL_SIZE, GLASS, NORMAL, TUMOUR, sample_pools, tissue_layout, write_slide

__all__ = ["LESION_CATEGORIES", "Lesion", "Cohort", "make_cohort", "lesion_cells", "COHORT_SPLITS"]

# Largest diameter in mm per category (AJCC 8th edition pN staging of lymph-node metastases, Camelyon17's rules):
# ITC <= 0.2 mm, micro-metastasis > 0.2 to 2 mm, macro-metastasis > 2 mm. The drawn ranges stay clear of the cuts.
LESION_CATEGORIES: dict[str, tuple[float, float]] = {"macro": (2.2, 5.0), "micro": (0.3, 1.8), "itc": (0.05, 0.18)}
COHORT_SPLITS = ("train", "valid")  # which PCam split the patches come from
CENTRE = 32  # PCam's label region: the centre 32 x 32 pixels of a 96-pixel patch
OUTLINE_VERTICES = 72
SLIDE_SIDES = (8 * CELL_SIZE, 50_000)  # level-0 side in pixels: room for a lesion .. a Camelyon16 slide's longer side


@dataclass(frozen=True)
class Lesion:
    """One lesion: its outline (level-0 px), category, largest diameter (mm) and an optional `_2` region."""

    slide: str
    number: int
    category: str
    outline: Polygon
    exclusion: Polygon | None
    diameter_mm: float


@dataclass(frozen=True)
class Cohort:
    """A written cohort: its folders, slide paths, reference labels and lesions."""

    root: Path
    slides: tuple[Path, ...]
    reference: dict[str, int]
    lesions: tuple[Lesion, ...]

    @property
    def slides_dir(self) -> Path:
        return self.root / "slides"

    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations"

    @property
    def reference_csv(self) -> Path:
        return self.root / "reference.csv"


def _outline(generator: np.random.Generator, centre: tuple[float, float], diameter_px: float) -> Polygon:
    """An irregular star-shaped outline: a radius with a few random harmonics, scaled to ``diameter_px``."""
    angles = np.linspace(0, 2 * np.pi, OUTLINE_VERTICES, endpoint=False)
    radius = np.ones_like(angles)
    for harmonic in range(2, 7):
        radius += generator.uniform(0, 0.28 / harmonic ** 0.7) * np.cos(harmonic * angles + generator.uniform(0, 7))
    radius *= 1 + 0.03 * generator.standard_normal(len(angles))  # a ragged edge
    radius = np.maximum(radius, 0.3)
    stretch = generator.uniform(0.6, 1.0)
    rotation = generator.uniform(0, np.pi)
    x, y = radius * np.cos(angles), stretch * radius * np.sin(angles)
    x, y = x * np.cos(rotation) - y * np.sin(rotation), x * np.sin(rotation) + y * np.cos(rotation)
    polygon = Polygon(np.column_stack([x, y]))
    scale = diameter_px / _diameter(polygon)
    return shapely.affinity.affine_transform(polygon, [scale, 0, 0, scale, centre[0], centre[1]])


def _diameter(polygon: Polygon) -> float:
    """Largest distance between two vertices of the convex hull (the largest diameter pathologists measure)."""
    points = np.asarray(polygon.convex_hull.exterior.coords)
    return float(np.max(np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))))


def lesion_cells(tumour: MultiPolygon | Polygon, shape: tuple[int, int]) -> np.ndarray:
    """bool ``(rows, cols)``: cells whose centre 32 x 32 square overlaps ``tumour`` by a positive area."""
    cells = np.zeros(shape, dtype=bool)
    if tumour.is_empty:
        return cells
    left, top, right, bottom = tumour.bounds
    rows = np.arange(max(0, int(top // CELL_SIZE)), min(shape[0], int(bottom // CELL_SIZE) + 1))
    cols = np.arange(max(0, int(left // CELL_SIZE)), min(shape[1], int(right // CELL_SIZE) + 1))
    if not len(rows) or not len(cols):
        return cells
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    offset = (CELL_SIZE - CENTRE) / 2
    x0, y0 = grid_cols.ravel() * CELL_SIZE + offset, grid_rows.ravel() * CELL_SIZE + offset
    squares = shapely.box(x0, y0, x0 + CENTRE, y0 + CENTRE)
    shapely.prepare(tumour)
    hits = shapely.intersects(tumour, squares) & ~shapely.touches(tumour, squares)
    cells[grid_rows.ravel()[hits], grid_cols.ravel()[hits]] = True
    return cells


def _place_lesions(generator: np.random.Generator, slide: str, labels: np.ndarray, mpp: float,
                   first_category: str, count: int) -> list[Lesion]:
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(labels != GLASS) * CELL_SIZE  # px from each tissue cell to glass
    tissue_rows, tissue_cols = np.nonzero(labels != GLASS)
    height, width = labels.shape[0] * CELL_SIZE, labels.shape[1] * CELL_SIZE
    frame = shapely.box(CELL_SIZE, CELL_SIZE, width - CELL_SIZE, height - CELL_SIZE)
    max_diameter_px = 0.8 * min(width, height)  # a lesion may reach past the tissue (its cells become tissue)
    categories = [first_category] + list(generator.choice(list(LESION_CATEGORIES), size=count - 1, p=[0.2, 0.4, 0.4]))
    lesions: list[Lesion] = []
    for category in categories:
        low, high = LESION_CATEGORIES[category]
        if low * 1000 / mpp > max_diameter_px:  # the slide is too small for this category: the next smaller one
            category = "micro" if category == "macro" else "itc"
            low, high = LESION_CATEGORIES[category]
        low_px, high_px = low * 1000 / mpp, high * 1000 / mpp
        diameter_px = generator.uniform(low_px, max(low_px, min(high_px, max_diameter_px)))
        outline = None
        for _ in range(100):  # a centre in tissue, the lesion on the slide, not touching another lesion
            pick = generator.integers(len(tissue_rows))
            row, col = tissue_rows[pick], tissue_cols[pick]
            if depth[row, col] < min(diameter_px / 4, depth.max()):
                continue
            centre = ((col + generator.uniform(0.2, 0.8)) * CELL_SIZE, (row + generator.uniform(0.2, 0.8)) * CELL_SIZE)
            candidate = _outline(generator, centre, diameter_px)
            if frame.contains(candidate) and all(candidate.distance(other.outline) > 2 * CELL_SIZE
                                                 for other in lesions):
                outline = candidate
                break
        if outline is None:
            continue  # no room left on this slide
        exclusion = None
        if category == "macro":
            inner = _outline(generator, tuple(np.asarray(outline.centroid.coords[0])), 0.25 * diameter_px)
            exclusion = inner if outline.contains(inner) else None
        lesions.append(Lesion(slide, len(lesions) + 1, category, outline, exclusion, _diameter(outline) * mpp / 1000))
    return lesions


def _tumour_of(lesions: list[Lesion]) -> MultiPolygon:
    parts = [lesion.outline.difference(lesion.exclusion) if lesion.exclusion else lesion.outline
             for lesion in lesions]
    merged = shapely.union_all(parts) if parts else MultiPolygon()
    return merged if isinstance(merged, MultiPolygon) else MultiPolygon([merged])


def _asap_xml(lesions: list[Lesion], test_naming: bool) -> str:
    """ASAP XML as Camelyon16 ships it: tumour groups `Tumor` (training) or `_0`/`_1` (test), exclusions `_2`."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.Element("ASAP_Annotations")
    annotations = ElementTree.SubElement(root, "Annotations")
    groups: list[str] = []
    regions = []
    for lesion in lesions:
        group = (f"_{(lesion.number - 1) % 2}" if test_naming else "Tumor")
        regions.append((group, lesion.outline))
        if lesion.exclusion is not None:
            regions.append(("_2", lesion.exclusion))
    for number, (group, polygon) in enumerate(regions):
        element = ElementTree.SubElement(annotations, "Annotation", Name=f"Annotation {number}", Type="Polygon",
                                         PartOfGroup=group, Color="#F4FA58" if group != "_2" else "#64FE2E")
        coordinates = ElementTree.SubElement(element, "Coordinates")
        for order, (x, y) in enumerate(list(polygon.exterior.coords)[:-1]):
            ElementTree.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{x:.4f}", Y=f"{y:.4f}")
        if group not in groups:
            groups.append(group)
    group_list = ElementTree.SubElement(root, "AnnotationGroups")
    for group in groups:
        element = ElementTree.SubElement(group_list, "Group", Name=group, PartOfGroup="None", Color="#64FE2E")
        ElementTree.SubElement(element, "Attributes")
    ElementTree.indent(root)
    stream = io.BytesIO()
    ElementTree.ElementTree(root).write(stream, encoding="utf-8", xml_declaration=True)
    return stream.getvalue().decode("utf-8") + "\n"


def _geojson(lesions: list[Lesion]) -> str:
    """QuPath's GeoJSON: one `Tumor` feature per lesion, its `_2` region as a hole of the polygon."""
    features = []
    for lesion in lesions:
        polygon = lesion.outline.difference(lesion.exclusion) if lesion.exclusion else lesion.outline
        features.append({
            "type": "Feature", "id": f"{lesion.slide}-lesion-{lesion.number}",
            "geometry": json.loads(shapely.to_geojson(shapely.set_precision(polygon, 1e-4))),
            "properties": {"objectType": "annotation", "name": f"lesion {lesion.number} ({lesion.category})",
                           "classification": {"name": "Tumor", "color": [200, 0, 0]}},
        })
    return json.dumps({"type": "FeatureCollection", "features": features}) + "\n"


def make_cohort(
    out: str | os.PathLike,
    *,
    normal_slides: int,
    tumour_slides: int,
    split: str = "valid",
    seed: int = 0,
    width: int = 4096,
    height: int = 3072,
    tissue_fraction: float = 0.45,
    lesions_per_slide: tuple[int, int] = (2, 4),
    patches: str | os.PathLike | None = None,
    pool_size: int = 2000,
    mpp: float = PCAM_MPP,
    jpeg_quality: int = 85,
    progress=None,
) -> Cohort:
    """Write a synthetic cohort of normal and tumour slides with their annotations (layout in the module doc).

    Args:
        out: a new folder (refused when it exists and is not empty).
        normal_slides, tumour_slides: how many of each (>= 0, at least one slide in all).
        split: ``"train"`` (training slides from train-split patches) or ``"valid"`` (test slides from
            valid-split patches).
        seed: seeds everything (same seed and arguments: the same files).
        width, height: level-0 size of each slide in pixels (rounded up to 96-px cells); the default 4096 x
            3072 is 4.0 x 3.0 mm, room for one macro-metastasis (a smaller slide gets micro-metastases instead). A Camelyon16 slide is about 100,000 x 200,000 px at 0.243 um/px, i.e.
            25,000 x 50,000 at PCam's 0.972.
        tissue_fraction: share of each slide covered by tissue.
        lesions_per_slide: ``(least, most)`` lesions per tumour slide.
        patches: a folder with ``train/`` and ``valid/`` holding ``0/`` and ``1/`` patch folders (e.g.
            ``pcam-jpg``); None uses the sample shipped in pcamlab.
        pool_size: at most this many patches per class are loaded (drawn with ``seed``).
        mpp: the level-0 resolution written into the slides (PCam's 0.972 um/px).
        jpeg_quality: JPEG quality of the slide tiles.
        progress: optional ``progress(done, total)`` called after each slide.

    Returns:
        A :class:`Cohort`.

    Raises:
        ConfigError: a count, size (:data:`SLIDE_SIDES`), pool size or split out of range.
        RunFolderError: ``out`` exists and is not empty.
        DataError: the patch folder has no patches.
    """
    if split not in COHORT_SPLITS:
        raise ConfigError(f"split must be one of {list(COHORT_SPLITS)}; got {split!r}", parameters=("split",))
    if normal_slides < 0 or tumour_slides < 0 or normal_slides + tumour_slides < 1:
        raise ConfigError(f"normal_slides and tumour_slides must be >= 0 with at least one slide; got "
                          f"{normal_slides} and {tumour_slides}", parameters=("normal_slides", "tumour_slides"))
    if not 1 <= lesions_per_slide[0] <= lesions_per_slide[1]:
        raise ConfigError(f"lesions_per_slide must be (least, most) with 1 <= least <= most; got {lesions_per_slide}")
    low, high = SLIDE_SIDES
    if not (low <= width <= high and low <= height <= high):
        raise ConfigError(f"width and height must be from {low} to {high:,} pixels (at {mpp:g} um/px a Camelyon16 "
                          f"slide is about 25,000 x 50,000); got {width} x {height}", parameters=("width", "height"))
    if isinstance(pool_size, bool) or not isinstance(pool_size, (int, np.integer)) or pool_size < 1:
        raise ConfigError(f"pool_size (patches loaded per class) must be an integer >= 1; got {pool_size!r}; e.g. "
                          "2000", parameters=("pool_size",))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunFolderError(f"{printable(out)!r} exists and is not empty; a cohort is written into a new folder: "
                             "choose another out", parameters=("out",))
    root = Path(patches) / split if patches is not None else None
    normal_pool, tumour_pool = sample_pools(split, root, limit=pool_size, seed=seed)
    generator = np.random.default_rng(seed)
    test_naming = split == "valid"
    kinds = [0] * normal_slides + [1] * tumour_slides
    if test_naming:
        generator.shuffle(kinds)
        names = [f"test_{index + 1:03d}" for index in range(len(kinds))]
    else:
        names = [f"normal_{index + 1:03d}" for index in range(normal_slides)]
        names += [f"tumor_{index + 1:03d}" for index in range(tumour_slides)]
    rows, cols = -(-height // CELL_SIZE), -(-width // CELL_SIZE)
    final = out
    # the whole cohort appears at once; a killed run's staging folder is removed by the next run (fileio)
    with staged_folder(final) as out:
        slides, all_lesions = _write_cohort(out, names, kinds, normal_pool, tumour_pool, rows, cols, seed=seed,
                                            tissue_fraction=tissue_fraction, lesions_per_slide=lesions_per_slide,
                                            mpp=mpp, jpeg_quality=jpeg_quality, test_naming=test_naming,
                                            progress=progress)
    reference = {name: kind for name, kind in zip(names, kinds)}
    return Cohort(final, tuple(final / "slides" / path.name for path in slides), reference, tuple(all_lesions))


def _write_cohort(out: Path, names: list[str], kinds: list[int], normal_pool: np.ndarray, tumour_pool: np.ndarray,
                  rows: int, cols: int, *, seed: int, tissue_fraction: float, lesions_per_slide: tuple[int, int],
                  mpp: float, jpeg_quality: int, test_naming: bool, progress) -> tuple[list[Path], list[Lesion]]:
    slides, all_lesions, tumour_count = [], [], 0
    with stopping.safe_points():
        for index, (name, kind) in enumerate(zip(names, kinds)):
            stopping.check()
            lesions = _write_one(out, name, kind, index, tumour_count, normal_pool, tumour_pool, rows, cols, seed=seed,
                                 tissue_fraction=tissue_fraction, lesions_per_slide=lesions_per_slide, mpp=mpp,
                                 jpeg_quality=jpeg_quality, test_naming=test_naming)
            tumour_count += kind
            slides.append(out / "slides" / f"{name}.tif")
            all_lesions.extend(lesions)
            if progress is not None:
                progress(index + 1, len(names))
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    reference = {name: kind for name, kind in zip(names, kinds)}
    write_text_atomic(out / "reference.csv", "slide,label\n" + "".join(
        f"{name},{'tumor' if kind else 'normal'}\n" for name, kind in reference.items()))
    write_text_atomic(out / "lesions.csv", _lesion_table(all_lesions, mpp))
    return slides, all_lesions


def _write_one(out: Path, name: str, kind: int, index: int, tumour_count: int, normal_pool: np.ndarray,
               tumour_pool: np.ndarray, rows: int, cols: int, *, seed: int, tissue_fraction: float,
               lesions_per_slide: tuple[int, int], mpp: float, jpeg_quality: int, test_naming: bool) -> list[Lesion]:
    """One slide, its truth and (tumour slides) its two annotation files; returns its lesions."""
    slide_generator = np.random.default_rng([seed, index])
    labels = tissue_layout(slide_generator, rows, cols, tissue_fraction, 0.0)
    lesions: list[Lesion] = []
    if kind:
        count = int(slide_generator.integers(lesions_per_slide[0], lesions_per_slide[1] + 1))
        first = list(LESION_CATEGORIES)[tumour_count % len(LESION_CATEGORIES)]
        lesions = _place_lesions(slide_generator, name, labels, mpp, first, count)
        tumour_cells = lesion_cells(_tumour_of(lesions), labels.shape)
        labels[tumour_cells] = TUMOUR
        inside = lesion_cells(shapely.union_all([lesion.outline for lesion in lesions]), labels.shape)
        labels[inside & (labels == GLASS)] = NORMAL  # a lesion's cells are tissue, also under its `_2` region
    write_slide(out / "slides" / f"{name}.tif", labels, normal_pool, tumour_pool,
                        generator=slide_generator, mpp=mpp, seed=seed, jpeg_quality=jpeg_quality)
    if lesions:
        write_text_atomic(out / "annotations" / f"{name}.xml", _asap_xml(lesions, test_naming))
        write_text_atomic(out / "annotations" / f"{name}.geojson", _geojson(lesions))
    return lesions


def _lesion_table(lesions: list[Lesion], mpp: float) -> str:
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["slide", "lesion", "category", "diameter_mm", "area_mm2", "x", "y"])
    for lesion in lesions:
        tumour = lesion.outline.difference(lesion.exclusion) if lesion.exclusion else lesion.outline
        writer.writerow([lesion.slide, lesion.number, lesion.category, f"{lesion.diameter_mm:.4f}",
                         f"{tumour.area * mpp**2 / 1e6:.5f}", f"{lesion.outline.centroid.x:.1f}",
                         f"{lesion.outline.centroid.y:.1f}"])
    return table.getvalue()
