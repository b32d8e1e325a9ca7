"""Patches per slide of a dataset cut from slides, and slides shared between splits (leakage by slide).

PCam's h5 release, and ``pcamlab data from-slides``, put a meta CSV beside each split
(``camelyonpatch_level_2_split_<split>_meta.csv``) whose row i names the slide of patch i (column ``wsi``).
:func:`slide_counts` counts each split's patches per slide and label and finds slides that are in two
splits; :func:`slide_table` is the compact table ``pcamlab data info`` prints.

Example:
    >>> from pcamlab.data.readers import open_split
    >>> counts = slide_counts([open_split("data/pcam", split) for split in ("train", "valid")])
    >>> counts["splits"]["train"]["slides"][0]
    {'slide': 'camelyon16_train_normal_001', 'label_0': 412, 'label_1': 0}
    >>> print("\n".join(slide_table(counts)))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools

import numpy as np

from pcamlab.data.readers import PatchReader, meta_csv_path, read_meta_csv
from pcamlab.errors import DataError

__all__ = ["SLIDE_ROWS", "slide_counts", "slide_table"]

SLIDE_ROWS = 20  # rows of the per-slide table that data info prints (over all splits), then "and N more slides"


def slide_counts(readers: list[PatchReader]) -> dict | None:
    """Patches per slide and label of each split, from PCam's meta CSVs beside the h5 files; None without any.

    The slide of patch i is row i's ``wsi`` (:func:`pcamlab.data.readers.read_meta_csv`), its label the
    split's ``y``. Patches of one slide look alike, so a split meant to score a model on unseen slides must
    not share a slide with the split it trained on (``data from-slides`` splits by slide); a shared slide
    is reported as leakage.

    Args:
        readers: the opened splits of one h5 dataset.

    Returns:
        None when no split has a meta CSV; else ``{"splits": {split: {"meta_csv", "slides": [{"slide",
        "label_0", "label_1"}] (by slide id)}}, "missing": [splits without a meta CSV], "shared": [{"splits":
        [a, b], "slides": [ids]}], "warnings": [...]}``. A meta CSV that cannot be read, or whose rows do not
        match its split, is left out with a warning naming the file.
    """
    found = {reader.split: meta_csv_path(reader.root, reader.split) for reader in readers}
    if not any(path.is_file() for path in found.values()):
        return None
    result: dict = {"splits": {}, "missing": [], "shared": [], "warnings": []}
    members: dict[str, set[str]] = {}
    for reader in readers:
        path = found[reader.split]
        if not path.is_file():
            result["missing"].append(reader.split)
            continue
        try:
            slides = read_meta_csv(path, count=len(reader)).column("wsi")
        except DataError as error:
            result["warnings"].append(f"split {reader.split!r}: no per-slide counts: {error}")
            continue
        counts: dict[str, list[int]] = {}
        for slide, label in zip(slides, np.asarray(reader.labels).tolist()):
            counts.setdefault(slide, [0, 0])[1 if label == 1 else 0] += 1
        result["splits"][reader.split] = {
            "meta_csv": str(path),
            "slides": [{"slide": slide, "label_0": n0, "label_1": n1} for slide, (n0, n1) in sorted(counts.items())],
        }
        members[reader.split] = set(counts)
    for first, second in itertools.combinations(members, 2):
        shared = sorted(members[first] & members[second])
        if shared:
            result["shared"].append({"splits": [first, second], "slides": shared})
            shown = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            result["warnings"].append(
                f"leakage by slide: {len(shared)} slide{'s' if len(shared) > 1 else ''} in both {first!r} and "
                f"{second!r} ({shown}); patches of one slide look alike, so scores on {second!r} are optimistic: "
                "keep each slide in one split"
            )
    return result


def slide_table(slides: dict, rows: int = SLIDE_ROWS) -> list[str]:
    """Lines of the per-slide section of ``pcamlab data info``: at most ``rows`` slide rows over all splits.

    Each split shows its largest slides (most patches) first, then ``and N more slides`` with their
    total; the last line says that no slide is in two splits, or names the splits that share slides.

    Args:
        slides: ``dataset_info(...)["slides"]`` (:func:`slide_counts`).
        rows: slide rows to show in all.
    """
    splits = slides["splits"]
    if not splits:
        return ["patches per slide: no meta CSV could be read (see the warnings)"]
    width = max([len("slide"), *(len(item["slide"]) for split in splits.values() for item in split["slides"])])
    share = max(3, rows // len(splits))
    lines = ["patches per slide (meta CSV column wsi; label from y):",
             f"  {'split':<6}  {'slide':<{width}}  {'label 0':>7}  {'label 1':>7}"]
    for split, summary in splits.items():
        items = sorted(summary["slides"], key=lambda item: (-(item["label_0"] + item["label_1"]), item["slide"]))
        for item in items[:share]:
            lines.append(f"  {split:<6}  {item['slide']:<{width}}  {item['label_0']:>7}  {item['label_1']:>7}")
        rest = items[share:]
        if rest:
            zeros, ones = sum(item["label_0"] for item in rest), sum(item["label_1"] for item in rest)
            more = f"and {len(rest)} more slide{'s' if len(rest) > 1 else ''}"
            lines.append(f"  {split:<6}  {more:<{width}}  {zeros:>7}  {ones:>7}")
        sizes = sorted(item["label_0"] + item["label_1"] for item in items)
        lines.append(f"  {split:<6}  {len(items)} slides, {sizes[0]}-{sizes[-1]} patches each "
                     f"(median {float(np.median(sizes)):g})")
    if slides["shared"]:
        pairs = "; ".join(f"{len(item['slides'])} in {item['splits'][0]} and {item['splits'][1]}" for item in slides["shared"])
        lines.append(f"slides in two splits: {pairs} (leakage by slide, see the warnings)")
    elif len(splits) > 1:
        lines.append(f"no slide is in two splits ({', '.join(splits)})")
    if slides["missing"]:
        lines.append(f"no meta CSV for {slides['missing']}: their slides are unknown")
    return lines
