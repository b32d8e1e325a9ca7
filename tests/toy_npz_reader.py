"""A data format in ONE file: PCam patches in one ``<split>.npz`` per split (arrays ``x`` and ``y``).

Importing this module is all it takes: ``data.format: npz`` becomes a valid config value, ``--format npz``
a CLI choice, ``auto`` finds such folders, ``data convert --to npz`` writes them, and training reads them.
``tests/test_extending.py`` uses it; it is also the template for a new reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcamlab.data.convert import WRITERS
from pcamlab.data.readers import READERS, PatchReader
from pcamlab.errors import DataError


@READERS.register("npz")
class NpzReader(PatchReader):
    """``<root>/<split>.npz`` holding ``x`` uint8 (N, 96, 96, 3) and ``y`` int (N,)."""

    format = "npz"
    looks_for = "npz: <root>/<split>.npz with arrays x (N, 96, 96, 3) uint8 and y (N,)"
    detect_order = 30  # a specific file suffix: after h5 and kaggle, before generic class folders

    def __init__(self, root: Path, split: str, *, skip_bad: bool = False, **options):
        self.root, self.split, self.skip_bad = root, split, skip_bad
        if split not in self.splits(root):
            raise DataError(f"split {split!r} not found in npz dataset {str(root)!r}; available: {self.splits(root)}")
        with np.load(root / f"{split}.npz") as arrays:
            self.images, self.labels = arrays["x"], arrays["y"].astype(np.int64).reshape(-1)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(root.glob("*.npz"))

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        return sorted(path.stem for path in root.glob("*.npz"))

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        return self.images[index], int(self.labels[index])

    def name(self, index: int) -> str:
        return f"{self.root / (self.split + '.npz')} row {index}"


@WRITERS.register("npz")
def write_npz(reader: PatchReader, folder: Path, counter, image_format: str) -> int:
    """The ``data convert --to npz`` writer: every usable item of ``reader`` into ``<split>.npz``."""
    items = [(image, label) for _, image, label in counter.items(reader)]
    np.savez(folder / f"{reader.split}.npz", x=np.stack([image for image, _ in items]),
             y=np.asarray([label for _, label in items], dtype=np.int64))
    return len(items)
