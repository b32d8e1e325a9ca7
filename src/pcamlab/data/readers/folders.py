"""Class folders: ``<root>/<split>/{0,1}/`` image files, the folder name being the label.

Also the course layout ``<root>/train+val/{train,valid}/{0,1}/`` and a root holding ``{0,1}/`` directly.
The embedded sample (``root="sample"``) is one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcamlab.data.readers.base import READERS, ImageFileReader, unknown_split
from pcamlab.data.walk import IMAGE_SUFFIXES, is_skipped_name
from pcamlab.errors import DataError
from pcamlab.fileio import printable

__all__ = ["COURSE_FOLDER", "FoldersReader"]

COURSE_FOLDER = "train+val"


@READERS.register("folders")
class FoldersReader(ImageFileReader):
    """Class folders ``<root>/<split>/{0,1}/*.{jpg,jpeg,png,tif,tiff}`` (folder name = label).

    The course layout ``<root>/train+val/{train,valid}/{0,1}/`` is found and descended into, and
    so is a root that holds the class folders ``{0,1}/`` directly (its split is then its own folder
    name). A class folder's images are listed at any depth by the walker's rules (:mod:`pcamlab.data.walk`:
    links followed, a link back up never, hidden files and OS junk skipped). A file reached under both
    ``0/`` and ``1/`` (a link from one class folder into the other) is refused: a patch has one label. Items are ordered by label, then path. Decoding uses
    Pillow (TIFFs that Pillow cannot read fall back to tifffile).
    """

    format = "folders"
    detect_order = 90  # any class folders: the most generic, tried last
    looks_for = (
        "folders: <root>/<split>/{0,1}/*.{jpg,jpeg,png,tif,tiff}, or <root>/train+val/{train,valid}/{0,1}/"
    )

    def __init__(self, root: Path, split: str, *, skip_bad: bool = False, **options):
        base = self.base(root)
        self.root, self.split, self.skip_bad = base, split, skip_bad
        self.notes = []
        available = self.splits(root)
        if split not in available:
            raise unknown_split(base, split, available, "folders")
        folder = self._split_folder(base, split)
        self.files: list[Path] = []
        labels: list[int] = []
        for label in (0, 1):
            class_folder = folder / str(label)
            if not class_folder.is_dir():
                continue
            listing = self.walk_images(class_folder)
            files = listing.files
            if not files:
                others = sorted(path.name for path in class_folder.iterdir() if not is_skipped_name(path.name))[:3]
                seen = listing.nothing_found() or (f" (it holds {others}...)" if others else "")
                raise DataError(
                    f"class folder {str(class_folder)!r} has no images{seen}; put its "
                    f"{'/'.join(IMAGE_SUFFIXES)} patches there or remove the folder"
                )
            self.files += files
            labels += [label] * len(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        _refuse_files_under_both_labels(self.files, self.labels, split)

    @staticmethod
    def base(root: Path) -> Path:
        """The folder that holds the split folders (descends into ``train+val/``)."""
        course = root / COURSE_FOLDER
        return course if course.is_dir() else root

    @staticmethod
    def _has_classes(folder: Path) -> bool:
        return (folder / "0").is_dir() or (folder / "1").is_dir()

    @classmethod
    def _split_folder(cls, base: Path, split: str) -> Path:
        return base if cls._has_classes(base) and split == base.name else base / split

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(cls.splits(root))

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        base = cls.base(root)
        if cls._has_classes(base):
            return [base.name]
        return sorted(
            child.name for child in base.iterdir()
            if not is_skipped_name(child.name, folder=True) and child.is_dir() and cls._has_classes(child)
        )


def _refuse_files_under_both_labels(files: list[Path], labels: np.ndarray, split: str) -> None:
    """Raise DataError when one file on disk is listed under label 0 and label 1 (through a link)."""
    first_seen: dict[Path, tuple[Path, int]] = {}
    clashes = []
    for path, label in zip(files, labels):
        real = path.resolve()
        if real in first_seen and first_seen[real][1] != label:
            clashes.append((path, first_seen[real][0]))
        first_seen.setdefault(real, (path, int(label)))
    if clashes:
        path, other = clashes[0]
        raise DataError(
            f"{len(clashes)} files of split {split!r} are listed under both label 0 and label 1 through symbolic "
            f"links (e.g. {printable(path)!r} is {printable(other)!r}); a patch has one label: remove the link "
            "that leads from one class folder into the other"
        )
