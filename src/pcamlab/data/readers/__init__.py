"""Readers of PCam patches in the three on-disk layouts, behind one contract: one file per layout.

Every reader returns ``(image, label)`` pairs where ``image`` is a ``numpy.ndarray`` uint8
``(96, 96, 3)`` RGB and ``label`` an ``int`` in {0, 1} (``-1`` for the unlabeled Kaggle ``test``
split). Layouts, each in its own module:

- ``h5`` (:mod:`.h5`): the official release, ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``.
- ``folders`` (:mod:`.folders`): class folders ``<root>/<split>/{0,1}/*.{jpg,jpeg,png,tif,tiff}``, also
  the course layout ``<root>/train+val/{train,valid}/{0,1}/``. The embedded sample (``root="sample"``) is one.
- ``kaggle`` (:mod:`.kaggle`): ``<root>/train/*.tif`` + ``<root>/train_labels.csv`` (Kaggle "Histopathologic
  Cancer Detection"), split into ``train``/``valid`` by a seeded stratified fraction, or by the split of
  each id in ``<root>/splits.csv`` where ``pcamlab data convert`` wrote one; ``<root>/test/*.tif``
  gives the ``test`` split (unlabeled, unless ``<root>/test_labels.csv`` lists its labels).

The contract and registry live in :mod:`.base`, image decoding in :mod:`.decode`, detection and opening in
:mod:`.splits`. A new layout is one module with a :class:`PatchReader` subclass registered in
:data:`READERS` (``detect``, ``splits``, ``__len__``, ``__getitem__``, ``name``, ``validate``; its
``detect_order`` places it in auto-detection), imported below. Files are listed by
:mod:`pcamlab.data.walk` and id CSVs read by :mod:`pcamlab.data.idcsv`, the same rules as every command.

Example:
    >>> from pcamlab.data import open_split, load_split_arrays
    >>> reader = open_split("sample", "train")
    >>> image, label = reader[0]
    >>> images, labels, skipped = load_split_arrays(reader)
    >>> images.shape
    (800, 96, 96, 3)
"""

from __future__ import annotations

from pcamlab.data.readers.base import (
    READERS,
    ImageFileReader,
    PatchReader,
    check_x_dataset,
    resolve_root,
    sample_root,
)
from pcamlab.data.readers.decode import (
    PATCH_SIZE,
    SKIP_HINT,
    BadImageError,
    check_image_array,
    decode_image_file,
    validate_headers,
)

# The registered layouts: imported explicitly so a format name never depends on import order.
from pcamlab.data.readers.folders import COURSE_FOLDER, FoldersReader
from pcamlab.data.readers.h5 import (
    H5_META_HEADER,
    H5_META_PATTERN,
    H5_PATTERN,
    H5_SPLITS,
    H5Reader,
    meta_csv_path,
    read_meta_csv,
)
from pcamlab.data.readers.kaggle import KAGGLE_LABELS, KAGGLE_SPLITS, KAGGLE_TEST_LABELS, KaggleReader
from pcamlab.data.readers.splits import (
    ARCHIVE_SUFFIXES,
    available_splits,
    detect_format,
    detection_order,
    format_choices,
    load_split_arrays,
    open_split,
    usable_cpus,
)
from pcamlab.data.walk import IMAGE_SUFFIXES

__all__ = [
    "PATCH_SIZE",
    "IMAGE_SUFFIXES",
    "READERS",
    "SKIP_HINT",
    "ARCHIVE_SUFFIXES",
    "COURSE_FOLDER",
    "H5_PATTERN",
    "H5_SPLITS",
    "H5_META_PATTERN",
    "H5_META_HEADER",
    "meta_csv_path",
    "read_meta_csv",
    "KAGGLE_LABELS",
    "KAGGLE_TEST_LABELS",
    "KAGGLE_SPLITS",
    "PatchReader",
    "ImageFileReader",
    "BadImageError",
    "H5Reader",
    "FoldersReader",
    "KaggleReader",
    "sample_root",
    "resolve_root",
    "detect_format",
    "detection_order",
    "format_choices",
    "available_splits",
    "open_split",
    "load_split_arrays",
    "usable_cpus",
    "decode_image_file",
    "check_image_array",
    "check_x_dataset",
    "validate_headers",
]
