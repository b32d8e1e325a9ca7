"""Cut a PCam-compatible patch dataset from annotated whole slides (``pcamlab data from-slides``).

The way PCam was cut from Camelyon16 (Veeling et al. 2018; github.com/basveeling/pcam README):

- patches of 96 x 96 pixels at 0.972 um/px (10x), read from the pyramid level nearest that resolution and
  resampled when no level is within 5% (:mod:`pcamlab.slide.tiles`: the grid, tile reader and tissue share
  ``slide predict`` uses, so a model trained on the result sees its slides the same way);
- label 1 when the centre 32 x 32 pixels hold annotated tumour: PCam's rule (any tumour pixel), or at
  least ``min_tumour_fraction`` of the centre with that option;
- tissue only: a patch is a candidate when at least ``min_tissue_fraction`` of it is tissue by
  :func:`pcamlab.slide.tissue.tissue_mask` (HSV saturation >= 0.07 after a blur, or Otsu) on a
  low-resolution image of the slide. PCam's README says only that patches come from tissue; the
  fraction is ours. PCam's hard-negative mining is not done;
- a patch whose centre overlaps an exclude region (Camelyon16's ``_2``) is never used; when a slide's
  annotations include normal regions, its negatives come only from inside them (partial annotations);
- negatives from normal tissue of tumour slides and from normal slides: a slide without an annotation
  file is a normal slide (Camelyon16), unless the reference CSV says it is a tumour slide (an error);
- splits by slide, never a slide in two splits: a ``slide -> split`` mapping (e.g. by hospital), or
  seeded fractions drawn separately among tumour and normal slides.

The work is split so a cohort can be sharded: :func:`plan_dataset` reads every slide's tissue mask and
annotations and chooses the patches (seeded: per-slide cap, class balance per split, stride);
:func:`cut_slide` reads one slide's chosen patches into ``<work>/<slide id>.npy`` + ``.csv`` and marks it
done; :func:`assemble_dataset` writes PCam's HDF5 layout with pcamlab's h5 writer (the one of
``data convert``: one chunk per row, gzip, Fletcher-32), PCam's meta CSVs, ``slides.csv`` and
``from_slides.json``. :func:`dataset_from_slides` runs the three, resuming a killed run slide by slide
from ``<out>.partial/``; ``out`` appears only when complete.

Example:
    >>> result = dataset_from_slides(["slides/tumor_001.tif", "slides/normal_001.tif"], "data/mine",
    ...                              annotations="annotations/", options=FromSlidesOptions(seed=0))
    >>> result.counts  # {'train': {0: ..., 1: ...}, 'valid': {...}}
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from pcamlab import stopping
from pcamlab.data.convert import WRITERS
from pcamlab.data.readers import H5_META_PATTERN
from pcamlab.errors import ConfigError, DataError, RunError, RunFolderError
from pcamlab.fileio import atomic_path, printable, remove_stale_temporaries, write_json_atomic, write_text_atomic
from pcamlab.slide._model import PCAM_MPP
from pcamlab.slide.annotations import ANNOTATION_SUFFIXES, SlideAnnotations, find_annotation_file, read_annotations
from pcamlab.slide.batch import slide_folders
from pcamlab.slide.cohort import STALE_AFTER, Cohort, Shard
from pcamlab.slide.reader import ResolutionError, Slide, name_mpp, open_slide
from pcamlab.slide.tiles import plan_grid, read_tiles, tile_tissue
from pcamlab.slide.tissue import DEFAULT_SATURATION_THRESHOLD, TISSUE_METHODS

__all__ = ["FromSlidesOptions", "SlidePlan", "DatasetPlan", "FromSlidesResult", "assign_splits", "plan_dataset",
           "cut_slide", "assemble_dataset", "dataset_from_slides", "META_HEADER", "SPLITS"]

SPLITS = ("train", "valid", "test")  # PCam's h5 splits
META_HEADER = ["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"]  # PCam's meta CSV columns
REGION_PIXELS = 1024  # edge of one region read, in pixels of the level read (bounds memory)
PLAN_FILE, SUMMARY_FILE, SLIDES_FILE = "plan.json", "from_slides.json", "slides.csv"


@dataclass(frozen=True)
class FromSlidesOptions:
    """How patches are cut, labelled, sampled and split (every field's default is PCam's or says why)."""

    patch_size: int = 96  # PCam's patch edge in pixels
    mpp: float = PCAM_MPP  # um/px of the patches: PCam's 10x (0.972)
    stride: int = 96  # step between candidate patches in patch pixels (divides patch_size; 96 = no overlap)
    centre_size: int = 32  # PCam labels by the centre 32 x 32 pixels
    min_tumour_fraction: float = 0.0  # label 1 when tumour covers more than this share of the centre (0: any pixel)
    min_tissue_fraction: float = 0.5  # a candidate patch is at least half tissue
    tissue_method: str = "saturation"  # pcamlab.slide.tissue's rule (HSV saturation, PCam's)
    tissue_threshold: float = DEFAULT_SATURATION_THRESHOLD  # saturation cut (0.07)
    max_patches_per_slide: int = 1000  # per-slide cap, so a few large slides do not make the dataset
    balance: bool = True  # as many negatives as positives in each split (PCam is balanced 50/50)
    valid_fraction: float = 0.2  # share of slides (per class of slide) in valid when no split mapping is given
    test_fraction: float = 0.0  # share of slides in test (a held-out cohort is usually its own test set)
    seed: int = 0  # seeds the split and the choice of patches
    slide_mpp: float | None = None  # level-0 um/px of the slides; wins over their metadata and TIFF tags

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        checks = [
            ("patch_size", self.patch_size >= 8, "an integer >= 8"),
            ("mpp", self.mpp > 0, "> 0 um/px"),
            ("stride", 1 <= self.stride <= self.patch_size and self.patch_size % self.stride == 0,
             f"a divisor of patch_size {self.patch_size}"),
            ("centre_size", 1 <= self.centre_size <= self.patch_size, f"in [1, {self.patch_size}]"),
            ("min_tumour_fraction", 0 <= self.min_tumour_fraction < 1, "in [0, 1)"),
            ("min_tissue_fraction", 0 <= self.min_tissue_fraction <= 1, "in [0, 1]"),
            ("tissue_method", self.tissue_method in TISSUE_METHODS, f"one of {list(TISSUE_METHODS)}"),
            ("tissue_threshold", 0 < self.tissue_threshold < 1, "in (0, 1)"),
            ("max_patches_per_slide", self.max_patches_per_slide >= 1, ">= 1"),
            ("valid_fraction", 0 <= self.valid_fraction < 1, "in [0, 1)"),
            ("test_fraction", 0 <= self.test_fraction < 1 and self.valid_fraction + self.test_fraction < 1,
             "in [0, 1) with valid_fraction + test_fraction < 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name} must be {allowed}; got {getattr(self, name)!r}", parameters=(name,))


@dataclass
class SlidePlan:
    """One slide's share of the plan: where its patches lie (level-0 px) and their labels."""

    slide_id: str
    path: str
    split: str
    annotation: str | None  # the annotation file, None for a normal slide
    tissue_patches: int  # candidates on tissue
    tumour_candidates: int  # of which label 1
    x: list[int] = field(default_factory=list)  # chosen patches: top-left level-0 x
    y: list[int] = field(default_factory=list)
    label: list[int] = field(default_factory=list)  # centre holds tumour
    tumour_patch: list[int] = field(default_factory=list)  # any tumour in the patch
    notes: list[str] = field(default_factory=list)  # the reader's (e.g. slide_mpp overrides the slide's own), the annotations'
    warnings: list[str] = field(default_factory=list)  # the reader's: an implausible level-0 mpp, with its remedy

    @property
    def counts(self) -> dict[int, int]:
        positives = int(sum(self.label))
        return {0: len(self.label) - positives, 1: positives}


@dataclass
class DatasetPlan:
    """The whole plan: options, slides in order, and a fingerprint of both (a resumed run must match it)."""

    options: FromSlidesOptions
    slides: list[SlidePlan]
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        text = json.dumps({"options": asdict(self.options), "slides": [asdict(slide) for slide in self.slides]},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def split_counts(self) -> dict[str, dict[int, int]]:
        counts: dict[str, dict[int, int]] = {}
        for slide in self.slides:
            totals = counts.setdefault(slide.split, {0: 0, 1: 0})
            for label, count in slide.counts.items():
                totals[label] += count
        return {split: counts[split] for split in SPLITS if split in counts}


@dataclass(frozen=True)
class FromSlidesResult:
    """What :func:`dataset_from_slides` wrote: the folder, patches per split and label, per-slide counts."""

    path: Path
    counts: dict[str, dict[int, int]]
    slides: tuple[tuple[str, str, int, int], ...]  # (slide id, split, label-0 patches, label-1 patches)
    resumed_slides: int
    notes: tuple[str, ...]
    complete: bool = True  # False: this worker's slides are cut, others still cut theirs (the last one assembles)
    written: bool = True  # False: ``path`` was already complete (another worker of the same plan wrote it)


def assign_splits(labels: Mapping[str, int], *, valid_fraction: float, test_fraction: float, seed: int,
                  split_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Slide id -> ``train``/``valid``/``test``; every slide in exactly one split.

    With ``split_map`` every slide must be in it (values among :data:`SPLITS`). Otherwise tumour slides and
    normal slides are shuffled (seeded) and split separately by the fractions (rounded, at least one slide
    in valid when the fraction is positive and the class has two slides or more), so each split gets both
    kinds where there are enough.

    Raises:
        DataError: a slide missing from ``split_map``, or a split name not in :data:`SPLITS`.
    """
    if split_map is not None:
        missing = sorted(set(labels) - set(split_map))
        if missing:
            raise DataError(f"the slide-to-split mapping has no split for {len(missing)} slide(s) {missing[:5]}; "
                            "add a row slide,split for each", parameters=("split_map",))
        wrong = sorted({split for slide, split in split_map.items() if slide in labels and split not in SPLITS})
        if wrong:
            raise DataError(f"split names must be among {list(SPLITS)} (PCam's h5 splits); got {wrong}",
                            parameters=("split_map",))
        return {slide: split_map[slide] for slide in labels}
    generator = np.random.default_rng(seed)
    result = {}
    for kind in (1, 0):
        slides = sorted(slide for slide, label in labels.items() if label == kind)
        order = [slides[index] for index in generator.permutation(len(slides))]
        test = int(round(test_fraction * len(order)))
        valid = int(round(valid_fraction * len(order)))
        if valid_fraction > 0 and valid == 0 and len(order) - test >= 2:
            valid = 1
        for index, slide in enumerate(order):
            result[slide] = "test" if index < test else "valid" if index < test + valid else "train"
    return result


def _covered(geometry: Any, boxes: np.ndarray) -> np.ndarray:
    """float64 (N,): share of each box's area that ``geometry`` covers (only boxes near it are intersected)."""
    shares = np.zeros(len(boxes))
    if geometry.is_empty or not len(boxes):
        return shares
    near = shapely.STRtree(boxes).query(geometry, predicate="intersects")
    if len(near):
        shares[near] = shapely.area(shapely.intersection(boxes[near], geometry)) / shapely.area(boxes[near])
    return shares


@contextlib.contextmanager
def _open(path: str | os.PathLike, options: FromSlidesOptions) -> Iterator[Slide]:
    """The slide, opened at the slides' level-0 mpp ``slide_mpp`` when given.

    The reader's resolution errors (raised opening it, or by :func:`plan_grid` inside) name its parameter
    ``mpp``; here that is the patches' resolution, so they are raised again naming ``slide_mpp``.
    """
    try:
        with open_slide(path, mpp=options.slide_mpp) as slide:
            yield slide
    except ResolutionError as error:
        raise error.naming("slide_mpp") from None


def _candidates(slide_path: Path, annotations: SlideAnnotations | None, options: FromSlidesOptions) -> dict:
    """Every tissue patch of a slide with its labels: level-0 ``x``, ``y`` and ``label``, ``tumour_patch``; and
    the reader's ``notes`` and ``warnings`` (naming ``slide_mpp``)."""
    with _open(slide_path, options) as slide:
        grid = plan_grid(slide, options.patch_size, options.stride, options.mpp, target="patches")
        _, _, fractions = tile_tissue(slide, grid, method=options.tissue_method, threshold=options.tissue_threshold)
        notes = [name_mpp(note, "slide_mpp") for note in slide.notes]
        warnings = [name_mpp(warning, "slide_mpp") for warning in slide.warnings]
    rows, cols = np.nonzero(fractions >= max(options.min_tissue_fraction, 1e-9))
    x, y = grid.tile_origins_level0(rows, cols)
    size = options.patch_size * grid.level0_per_model_pixel
    margin = (options.patch_size - options.centre_size) / 2 * grid.level0_per_model_pixel
    centre = options.centre_size * grid.level0_per_model_pixel
    centres = shapely.box(x + margin, y + margin, x + margin + centre, y + margin + centre)
    label = np.zeros(len(x), dtype=bool)
    tumour_patch = np.zeros(len(x), dtype=bool)
    keep = np.ones(len(x), dtype=bool)
    if annotations is not None:
        tumour_share = _covered(annotations.tumour, centres)
        label = tumour_share > options.min_tumour_fraction
        tumour_patch = _covered(annotations.tumour, shapely.box(x, y, x + size, y + size)) > 0
        keep &= _covered(annotations.exclude, centres) == 0
        if not annotations.normal.is_empty:  # partial annotations: negatives only where normal is annotated
            keep &= label | (_covered(annotations.normal, centres) >= 1 - 1e-9)
        keep &= label | (tumour_share == 0)  # a centre with less tumour than min_tumour_fraction: neither class
    return {"x": x[keep], "y": y[keep], "label": label[keep], "tumour_patch": tumour_patch[keep], "grid": grid,
            "notes": notes, "warnings": warnings}


def _quotas(available: list[tuple[int, int]], cap: int, balance: bool) -> list[tuple[int, int]]:
    """Per slide ``(negatives, positives)`` to take from ``(negatives, positives)`` available, one split's slides.

    Positives up to half the cap per slide when balancing (the whole cap otherwise); negatives up to the rest of
    the cap, and with ``balance`` as many in the split as positives, spread evenly over the slides (water-filling).
    """
    positives = [min(pos, cap // 2 if balance else cap) for _, pos in available]
    room = [min(neg, cap - pos) for (neg, _), pos in zip(available, positives)]
    target = sum(positives) if balance and sum(positives) else sum(room)
    negatives = [0] * len(available)
    left, open_slides = target, [index for index, value in enumerate(room) if value > 0]
    while left > 0 and open_slides:
        share = max(1, left // len(open_slides))
        for index in list(open_slides):
            take = min(share, room[index] - negatives[index], left)
            negatives[index] += take
            left -= take
            if negatives[index] >= room[index]:
                open_slides.remove(index)
            if left == 0:
                break
    return list(zip(negatives, positives))


def plan_dataset(
    slides: Sequence[str | os.PathLike],
    *,
    annotations: str | os.PathLike | None,
    options: FromSlidesOptions = FromSlidesOptions(),
    reference: Mapping[str, int] | None = None,
    split_map: Mapping[str, str] | None = None,
    annotation_options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> DatasetPlan:
    """Read every slide's tissue and annotations and choose its patches (nothing is written).

    Args:
        slides: slide files (ids: file names without suffix, unique).
        annotations: an annotation file (one slide) or a folder of ``<slide id>.xml|.geojson|...``
            (:func:`~pcamlab.slide.annotations.find_annotation_file`); None: every slide is normal.
        options: see :class:`FromSlidesOptions`.
        reference: slide id -> 1 tumour / 0 normal (:func:`~pcamlab.slide.reference.read_reference`); when
            given every slide must be in it, and a tumour slide needs an annotation file.
        split_map: slide id -> split (see :func:`assign_splits`).
        annotation_options: ``class_map``, ``mask_downsample``, ``repair`` for ``read_annotations``.
        progress: ``progress(done, total)`` per slide planned.

    Raises:
        DataError: a bad slide or annotation file, a slide missing from ``reference``, a tumour slide without
            annotations, an annotated tumour slide the reference calls normal, no patches at all.
        DamagedSlideError: a slide is cut short (found when it opens).
        ResolutionError: a slide's level-0 mpp is missing or unusable, or ``options.slide_mpp`` is not a positive
            number; the message names ``slide_mpp`` (the reader's warnings about an implausible mpp are in
            ``SlidePlan.warnings``, naming it too).
        ConfigError: an option out of range.
    """
    options.validate()
    slides = [Path(slide) for slide in slides]
    if not slides:
        raise DataError("no slides given; pass one or more slide files", parameters=("slides",))
    ids = [folder.name for folder in slide_folders(slides, Path())]  # the ids slide predict uses; unique
    if annotations is not None and Path(annotations).is_file() and len(slides) > 1:
        raise DataError(f"annotations {printable(annotations)!r} is one file but {len(slides)} slides were given; "
                        "pass a folder with one <slide id>.xml / .geojson per tumour slide", parameters=("annotations",))
    if reference is not None:
        missing = [slide_id for slide_id in ids if slide_id not in reference]
        if missing:
            raise DataError(f"the reference CSV has no row for {len(missing)} slide(s) {missing[:5]}; add slide,label "
                            "rows for them", parameters=("reference",))
    files = {slide_id: find_annotation_file(annotations, slide_id) if annotations is not None else None
             for slide_id in ids}
    for slide_id, file in files.items():
        if reference is not None and reference[slide_id] == 1 and file is None:
            raise DataError(f"slide {slide_id!r} is a tumour slide in the reference CSV but has no annotation file "
                            f"in {printable(annotations) if annotations else '(no annotations given)'}; add its "
                            "annotations (the tumour regions are needed to label its patches)",
                            parameters=("annotations",))
    labels = {slide_id: int(reference[slide_id]) if reference is not None else int(files[slide_id] is not None)
              for slide_id in ids}
    splits = assign_splits(labels, valid_fraction=options.valid_fraction, test_fraction=options.test_fraction,
                           seed=options.seed, split_map=split_map)
    found: list[tuple[SlidePlan, dict]] = []
    for index, (slide_id, path) in enumerate(zip(ids, slides)):
        stopping.check()
        file, notes = files[slide_id], []
        read = None
        if file is not None:
            with _open(path, options) as slide:
                dimensions = slide.dimensions
            read = read_annotations(file, slide_dimensions=dimensions, **dict(annotation_options or {}))
            notes += [f"{file.name}: {note}" for note in read.notes]
            if reference is not None and reference[slide_id] == 0 and not read.tumour.is_empty:
                raise DataError(f"slide {slide_id!r} is normal in the reference CSV but {printable(file)!r} "
                                "annotates tumour in it; correct the reference or the annotation file")
        candidates = _candidates(path, read, options)
        plan = SlidePlan(slide_id, str(path), splits[slide_id], str(file) if file else None,
                         tissue_patches=len(candidates["x"]), tumour_candidates=int(candidates["label"].sum()),
                         notes=[*candidates["notes"], *notes], warnings=candidates["warnings"])
        if read is not None and not read.tumour.is_empty and not plan.tumour_candidates:
            plan.notes.append("its tumour annotations cover no patch centre on tissue (no label-1 patches)")
        found.append((plan, candidates))
        if progress is not None:
            progress(index + 1, len(slides))
    for split in SPLITS:
        members = [(plan, candidates) for plan, candidates in found if plan.split == split]
        available = [(int((~c["label"]).sum()), int(c["label"].sum())) for _, c in members]
        for (plan, candidates), (negatives, positives) in zip(members, _quotas(
                available, options.max_patches_per_slide, options.balance)):
            generator = np.random.default_rng([options.seed, zlib.crc32(plan.slide_id.encode())])
            chosen = []
            for label, count in ((1, positives), (0, negatives)):
                pool = np.flatnonzero(candidates["label"] == label)
                chosen.append(np.sort(generator.choice(pool, size=count, replace=False)))
            order = np.concatenate(chosen)
            order = order[np.lexsort((candidates["x"][order], candidates["y"][order]))]  # read in slide order
            plan.x, plan.y = candidates["x"][order].tolist(), candidates["y"][order].tolist()
            plan.label = candidates["label"][order].astype(int).tolist()
            plan.tumour_patch = candidates["tumour_patch"][order].astype(int).tolist()
    dataset = DatasetPlan(options, [plan for plan, _ in found])
    if not any(plan.label for plan in dataset.slides):
        warned = [f"slide {plan.slide_id!r}: {plan.warnings[0]}" for plan in dataset.slides if plan.warnings]
        raise DataError("no patches to cut: no slide has tissue patches at these settings; check the tissue rule, "
                        "min_tissue_fraction and the slides' level-0 resolution (slide_mpp)"
                        + (f" ({warned[0]}{f'; and {len(warned) - 1} more' if len(warned) > 1 else ''})"
                           if warned else ""), parameters=("min_tissue_fraction", "slide_mpp"))
    dataset.notes.extend(_split_notes(dataset, labels, split_map))
    if annotations is not None and Path(annotations).is_dir():
        def slide_id_of(name: str) -> str:  # tumor_001.xml, tumor_001_mask.tif, tumor_001.mask.png -> tumor_001
            stem = Path(name).stem
            return next((stem[: -len(end)] for end in ("_mask", ".mask") if stem.endswith(end)), stem)

        unmatched = sorted(path.name for path in Path(annotations).iterdir()
                           if path.is_file() and path.suffix.lower() in ANNOTATION_SUFFIXES
                           and not path.name.startswith(".") and slide_id_of(path.name) not in labels)
        if unmatched:
            dataset.notes.append(f"{len(unmatched)} annotation file(s) in {printable(annotations)} match no slide given "
                                 f"and were not used: {unmatched[:5]}{' ...' if len(unmatched) > 5 else ''} (a file "
                                 "is <slide id>.xml|.geojson|.png...; ids are case-sensitive)")
    for split, counts in dataset.split_counts().items():
        if options.balance and counts[1] == 0:
            dataset.notes.append(f"split {split} has no tumour patches: not balanced ({counts[0]} label-0 patches)")
    return dataset


def _split_notes(dataset: DatasetPlan, labels: Mapping[str, int], split_map: Mapping[str, str] | None) -> list[str]:
    """What a person should know about the splits: a split asked for that got no slide (``pcamlab train`` needs
    ``valid``), and rows of ``split_map`` that name no slide given (a typo, or a slide left out)."""
    options, notes = dataset.options, []
    members = {split: [plan for plan in dataset.slides if plan.split == split] for split in SPLITS}
    tumour = sum(labels.values())
    if split_map is not None:
        unused = sorted(set(split_map) - set(labels))
        if unused:
            notes.append(f"the slide-to-split mapping names {len(unused)} slide(s) not given, left unused: "
                         f"{unused[:5]}{' ...' if len(unused) > 5 else ''} (check the slide ids: file names "
                         "without suffix)")
        wanted = [split for split in ("train", "valid") if not members[split]]
        why = "no row of the slide-to-split mapping puts a given slide there; add one (split_map)"
    else:
        wanted = [split for split, fraction in (("train", 1.0), ("valid", options.valid_fraction),
                                                ("test", options.test_fraction)) if fraction > 0 and not members[split]]
        why = (f"splits take whole slides, per class of slide ({tumour} tumour, {len(labels) - tumour} normal "
               "given): give more slides (valid needs two of a class), or a slide-to-split mapping (split_map)")
    for split in wanted:
        need = "; pcamlab train needs a valid split" if split == "valid" else ""
        notes.append(f"split {split} got no slide: {why}{need}")
    return notes


def _done_path(work: Path, slide_id: str) -> Path:
    return work / f"{slide_id}.done.json"


def cut_slide(plan: SlidePlan, work: str | os.PathLike, options: FromSlidesOptions,
              progress: Callable[[int], object] | None = None) -> int:
    """Read one slide's planned patches into ``work/<id>.npy`` (uint8 (N, 96, 96, 3)) and ``work/<id>.csv``.

    The unit of work a cohort shard runs: independent of the other slides, written atomically, and skipped
    when ``work/<id>.done.json`` already records it. Memory stays at one region (about 1024 px square) plus a
    memory-mapped output.

    Args:
        plan: the slide's :class:`SlidePlan` (from :func:`plan_dataset`).
        work: the folder of per-slide results.
        options: the options the plan was made with.
        progress: called with the number of patches read so far.

    Returns:
        The number of patches written (0 when already done).
    """
    work = Path(work)
    done = _done_path(work, plan.slide_id)
    if done.is_file():
        return 0
    size = options.patch_size
    x, y = np.asarray(plan.x, dtype=np.int64), np.asarray(plan.y, dtype=np.int64)
    with _open(plan.path, options) as slide:
        grid = plan_grid(slide, size, options.stride, options.mpp, target="patches")
        span = max(1.0, REGION_PIXELS * grid.level_downsample)  # level-0 px per region side
        block = (y // span).astype(np.int64) * (int(slide.dimensions[0] // span) + 2) + (x // span).astype(np.int64)
        with atomic_path(work / f"{plan.slide_id}.npy") as temporary:
            images = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(len(x), size, size, 3))
            written = 0
            for value in np.unique(block):
                stopping.check()
                members = np.flatnonzero(block == value)
                images[members] = read_tiles(slide, grid, x[members], y[members])
                written += len(members)
                if progress is not None:
                    progress(written)
            images.flush()
            del images
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    for index in range(len(x)):
        writer.writerow([int(y[index]), int(x[index]), bool(plan.tumour_patch[index]), bool(plan.label[index]),
                         plan.slide_id])
    write_text_atomic(work / f"{plan.slide_id}.csv", rows.getvalue())
    write_json_atomic(done, {"slide": plan.slide_id, "patches": len(x), "counts": plan.counts})
    return len(x)


class _SplitPatches:
    """The patches of one split across the per-slide results, in a seeded shuffled order (PCam's rows are)."""

    def __init__(self, split: str, work: Path, members: list[SlidePlan], seed: int):
        self.split = split
        self.arrays = [np.load(work / f"{plan.slide_id}.npy", mmap_mode="r") for plan in members]
        self.labels = np.concatenate([np.asarray(plan.label, dtype=np.int64) for plan in members])
        self.source = [(slide, row) for slide, plan in enumerate(members) for row in range(len(plan.label))]
        self.order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(self.source))

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        slide, row = self.source[self.order[index]]
        return np.asarray(self.arrays[slide][row]), int(self.labels[self.order[index]])


class _Rows:
    """What pcamlab's h5 writer asks of its counter: ``items(reader)`` yielding (index, image, label)."""

    def __init__(self, total: int, progress: Callable[[int, int], object] | None):
        self.total, self.progress, self.done = total, progress, 0

    def items(self, reader: _SplitPatches):
        for index in range(len(reader)):
            if index % 256 == 0:
                stopping.check()
            image, label = reader[index]
            yield index, image, label
            self.done += 1
            if self.progress is not None and (self.done % 256 == 0 or self.done == self.total):
                self.progress(self.done, self.total)


def assemble_dataset(plan: DatasetPlan, work: str | os.PathLike, out: str | os.PathLike,
                     progress: Callable[[int, int], object] | None = None) -> Path:
    """Write PCam's layout into the new folder ``out`` from the per-slide results in ``work``.

    ``camelyonpatch_level_2_split_<split>_{x,y}.h5`` (pcamlab's h5 writer), ``..._<split>_meta.csv`` with
    PCam's columns (``coord_y``, ``coord_x``: the patch's top-left corner in level-0 pixels of its slide;
    ``tumor_patch``: tumour anywhere in the patch; ``center_tumor_patch``: the label; ``wsi``: the slide id),
    ``slides.csv`` (slide, split, label_0, label_1) and ``from_slides.json`` (options, counts, notes).
    Written beside ``out`` and renamed into place when complete.

    Raises:
        RunError: a slide of the plan has no finished result in ``work``.
    """
    work, out = Path(work), Path(out)
    unfinished = [plan_slide.slide_id for plan_slide in plan.slides if not _done_path(work, plan_slide.slide_id).is_file()]
    if unfinished:
        raise RunError(f"slides {unfinished[:5]} of the plan have no finished patches in {printable(work)!r}; cut "
                       "them first (cut_slide)")
    temporary = out.with_name(f".{out.name}.assembling")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        total = sum(len(plan_slide.label) for plan_slide in plan.slides)
        rows = _Rows(total, progress)
        for split in SPLITS:
            members = [plan_slide for plan_slide in plan.slides if plan_slide.split == split and plan_slide.label]
            if not members:
                continue
            patches = _SplitPatches(split, work, members, plan.options.seed)
            WRITERS.get("h5")(patches, temporary, rows, "png")
            meta = [row for plan_slide in members
                    for row in (work / f"{plan_slide.slide_id}.csv").read_text().splitlines()]
            table = io.StringIO()
            writer = csv.writer(table, lineterminator="\n")
            writer.writerow(META_HEADER)
            for index, position in enumerate(patches.order):
                writer.writerow([index, *next(csv.reader([meta[position]]))])
            write_text_atomic(temporary / H5_META_PATTERN.format(split=split), table.getvalue())
        write_text_atomic(temporary / SLIDES_FILE, "slide,split,label_0,label_1,annotation\n" + "".join(
            f"{s.slide_id},{s.split},{s.counts[0]},{s.counts[1]},{printable(s.annotation or '')}\n"
            for s in plan.slides))
        write_json_atomic(temporary / SUMMARY_FILE, {
            "options": asdict(plan.options), "counts": plan.split_counts(),
            "slides": [{"slide": s.slide_id, "path": s.path, "split": s.split, "annotation": s.annotation,
                        "tissue_patches": s.tissue_patches, "tumour_candidates": s.tumour_candidates,
                        "label_0": s.counts[0], "label_1": s.counts[1], "notes": s.notes, "warnings": s.warnings}
                       for s in plan.slides],
            "notes": plan.notes, "plan_sha256": plan.fingerprint(),
        })
        os.replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out


def _plan_record(plan: DatasetPlan) -> dict:
    return {"fingerprint": plan.fingerprint(), "options": asdict(plan.options),
            "slides": [asdict(slide) for slide in plan.slides], "notes": plan.notes}


def dataset_from_slides(
    slides: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None,
    options: FromSlidesOptions = FromSlidesOptions(),
    reference: Mapping[str, int] | None = None,
    split_map: Mapping[str, str] | None = None,
    annotation_options: Mapping[str, Any] | None = None,
    resume: bool = True,
    on_plan: Callable[[DatasetPlan, int], object] | None = None,
    progress: Callable[[int, int], object] | None = None,
    shard: Shard | None = None,
    steal: bool = True,
    stale_after: float = STALE_AFTER,
) -> FromSlidesResult:
    """Plan, cut slide by slide, and assemble a PCam-layout dataset in the new folder ``out``.

    Per-slide results go to ``<out>.partial/`` (the plan in ``plan.json``); a run killed part-way resumes
    there with the slides already cut skipped, when the plan (slides, annotations, options) is the same.

    Args:
        slides, annotations, options, reference, split_map, annotation_options: see :func:`plan_dataset`.
        out: the dataset folder to create (refused when it exists).
        resume: False starts again, discarding an unfinished ``<out>.partial/``.
        on_plan: called with the plan and the number of slides already cut, before any patch is read
            (the CLI prints the plan there).
        progress: ``progress(done, total)`` in patches, over cutting and then writing.
        shard: this worker's share of the slides when several workers (a Slurm array, torchrun ranks) share
            ``out`` (:func:`pcamlab.slide.cohort.resolve_shard`); each slide is cut by one worker under a lock
            in ``<out>.partial/.cohort/``, and whichever worker finds every slide cut assembles ``out``. With a
            share of several, a finished ``out`` of the same plan is success (a late task), not an error.
        steal: after its share, also cut the other shares' slides that no live worker holds.
        stale_after: seconds after which a lock of a worker on another node that stopped its heartbeat is
            taken over (one on this node that died is taken over at once).

    Raises:
        RunFolderError: ``out`` exists, or ``<out>.partial/`` holds a different plan and ``resume`` is True.
        DataError, ConfigError: as :func:`plan_dataset`, before anything is written (a slide found damaged,
            or without a usable resolution, while planning leaves no ``<out>.partial/``).
        DamagedSlideError: a tile does not decode while cutting; the slides cut so far stay in
            ``<out>.partial/`` and the message says that running the same again resumes there.
        pcamlab.stopping.Stopped: a stop was requested; ``<out>.partial/`` resumes.
    """
    out = Path(out)
    shard = shard or Shard(1, 1)
    if out.exists() and shard.count == 1:
        raise RunFolderError(f"{printable(out)!r} exists; a dataset is written into a new folder: choose another "
                             "out (finished datasets are never overwritten)", parameters=("out",))
    work = out.with_name(out.name + ".partial")
    plan = plan_dataset(slides, annotations=annotations, options=options, reference=reference, split_map=split_map,
                        annotation_options=annotation_options)
    record = _plan_record(plan)
    if out.exists():  # one of several workers, started after another assembled the dataset
        try:
            finished = json.loads((out / SUMMARY_FILE).read_text()).get("plan_sha256")
        except (OSError, ValueError, AttributeError):
            finished = None
        if finished != record["fingerprint"]:
            raise RunFolderError(f"{printable(out)!r} exists and holds a dataset of another plan; choose another out "
                                 "(finished datasets are never overwritten)", parameters=("out",))
        return FromSlidesResult(out, plan.split_counts(),
                                tuple((s.slide_id, s.split, s.counts[0], s.counts[1]) for s in plan.slides),
                                len(plan.slides), tuple(plan.notes), written=False)
    if work.exists():
        previous = None
        try:
            previous = json.loads((work / PLAN_FILE).read_text())
        except (OSError, ValueError):
            pass
        if not resume or previous is None:
            shutil.rmtree(work, ignore_errors=True)  # another worker may have removed it (assembled) meanwhile
        elif previous.get("fingerprint") != record["fingerprint"]:
            raise RunFolderError(f"{printable(work)!r} holds an unfinished run with other slides, annotations or "
                                 "settings; run with the same ones to resume it, or pass resume=False to start "
                                 "again", parameters=("resume",))
    work.mkdir(parents=True, exist_ok=True)
    if shard.count == 1:  # one worker: a killed run's half-written files (said on the log); with several, a pid
        remove_stale_temporaries(work, every_name=True)  # may be another node's live writer, so each slide's own only
    write_json_atomic(work / PLAN_FILE, record)
    already = sum(_done_path(work, slide.slide_id).is_file() for slide in plan.slides)
    if on_plan is not None:
        on_plan(plan, already)
    total = sum(len(slide.label) for slide in plan.slides)
    done = sum(len(slide.label) for slide in plan.slides if _done_path(work, slide.slide_id).is_file())
    by_id = {slide.slide_id: slide for slide in plan.slides}
    written = False

    def is_done(slide_id: str) -> bool:  # a finished dataset counts every slide done (its work folder is gone)
        return out.exists() or _done_path(work, slide_id).is_file()

    with Cohort(work, is_done=is_done, stale_after=stale_after) as cohort, stopping.safe_points():
        # A dataset needs every slide: one that failed before (e.g. damaged, since copied again) is tried again.
        for claim in cohort.claim([slide.path for slide in plan.slides], shard=shard, steal=steal, retry_failed=True):
            stopping.check()
            slide, start = by_id[claim.key], done
            try:
                done += cut_slide(slide, work, options, None if progress is None else
                                  (lambda count, start=start: progress(start + count, 2 * total)))
            except DataError as error:  # e.g. a damaged tile: recorded (OUT.partial/.cohort/failed), then the error
                claim.fail(error)
                raise type(error)(f"{error}; the slides cut so far stay in {printable(work)!r}, and running the same "
                                  "again resumes there", parameters=error.parameters) from None
            claim.finish(patches=len(slide.label))
            if progress is not None:
                progress(done, 2 * total)
        if all(is_done(slide.slide_id) for slide in plan.slides):
            with cohort.exclusive("assembly") as mine:  # one worker writes out; the others leave it to it
                if mine and not out.exists():
                    assemble_dataset(plan, work, out, None if progress is None else
                                     (lambda count, _: progress(total + count, 2 * total)))
                    written = True
    if out.exists():
        shutil.rmtree(work, ignore_errors=True)
    return FromSlidesResult(out, plan.split_counts(),
                            tuple((s.slide_id, s.split, s.counts[0], s.counts[1]) for s in plan.slides),
                            already, tuple(plan.notes), complete=out.exists(), written=written)
