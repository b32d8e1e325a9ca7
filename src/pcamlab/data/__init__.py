"""Reading PCam patches: the readers of every on-disk layout, the shipped sample, data tools.

Images at this boundary are ``numpy.ndarray`` uint8 ``(H, W, 3)`` RGB and labels ``int`` in {0, 1}.
Augmentation (``pcamlab.data.augment``), conversion (``pcamlab.data.convert``) and dataset reports
(``pcamlab.data.info``) are imported from their own modules so that this one stays light.

Example:
    >>> from pcamlab.data import open_split, load_split_arrays
    >>> reader = open_split("sample", "train")
    >>> images, labels, skipped = load_split_arrays(reader)
"""

from pcamlab.data.normalize import NORMALIZERS  # registering them declares data.stain_normalization's choices
from pcamlab.data.readers import (
    PATCH_SIZE,
    READERS,
    BadImageError,
    PatchReader,
    available_splits,
    detect_format,
    load_split_arrays,
    open_split,
    sample_root,
)

__all__ = [
    "NORMALIZERS",
    "PATCH_SIZE",
    "READERS",
    "BadImageError",
    "PatchReader",
    "available_splits",
    "detect_format",
    "load_split_arrays",
    "open_split",
    "sample_root",
]
