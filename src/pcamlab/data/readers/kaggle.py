"""Kaggle "Histopathologic Cancer Detection": ``train/<id>.tif`` + ``train_labels.csv``, ``test/<id>.tif``.

Source: the competition's data page (https://www.kaggle.com/c/histopathologic-cancer-detection/data):
``train_labels.csv`` has the header ``id,label``, ids are the file names without ``.tif``, label 1 when
the centre 32x32 region holds tumour. Every CSV here is read by :func:`pcamlab.data.idcsv.read_id_csv`
(byte-order mark, ``;``/tab separators, a pandas index column, ids with a suffix or folder, ``1.0``
labels, repeated rows: see that module).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pcamlab.data.idcsv import ID, Column, binary_label, read_id_csv
from pcamlab.data.readers.base import READERS, ImageFileReader, unknown_split
from pcamlab.errors import ConfigError, DataError

__all__ = ["KAGGLE_LABELS", "KAGGLE_TEST_LABELS", "KAGGLE_SPLITS", "KAGGLE_ID", "KaggleReader", "kaggle_id"]

KAGGLE_LABELS = "train_labels.csv"
KAGGLE_TEST_LABELS = "test_labels.csv"  # not Kaggle's: written by `data convert` for a labelled test split
KAGGLE_SPLITS = "splits.csv"  # not Kaggle's: `id,split` written by `data convert` to keep the source's splits

_KAGGLE_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


def kaggle_id(text: str) -> str:
    """A Kaggle id (an image file name without ``.tif``): letters, digits, ``_ . -``.

    Raises:
        ValueError: anything else (the reason, for :func:`~pcamlab.data.idcsv.read_id_csv`'s message).
    """
    if not _KAGGLE_ID.match(text):
        raise ValueError("ids are file names of train/*.tif or test/*.tif without .tif (letters, digits, _ . -)")
    return text


def _split_name(text: str) -> str:
    if not text or text == "test":
        raise ValueError("each row must be 'id,split' with a split other than 'test' (test images live in test/)")
    return text


#: The id column of every Kaggle CSV (``id``, also ``image``/``image_id``), checked by :func:`kaggle_id`.
KAGGLE_ID = Column(ID.name, aliases=ID.aliases, parse=kaggle_id)
LABEL = Column("label", parse=binary_label)
SPLIT = Column("split", parse=_split_name)


@READERS.register("kaggle")
class KaggleReader(ImageFileReader):
    """Kaggle layout: ``train/<id>.tif`` with ``train_labels.csv`` (header ``id,label``), ``test/<id>.tif``.

    Kaggle ships no validation split, so ``train`` and ``valid`` are made from the labelled images by
    a stratified split: for each class, ids sorted, permuted with ``numpy.random.default_rng(seed)``,
    and the first ``round(valid_fraction * count)`` go to ``valid``. The same seed gives the same split.
    Where ``splits.csv`` (header ``id,split``, one row per id of ``train_labels.csv``) sits beside
    ``train_labels.csv``, as ``pcamlab data convert --to kaggle`` writes it, the splits are those of
    the source instead (``valid_fraction`` and ``seed`` are then unused; ``split_source`` says which).

    The ``test`` split (a ``test/`` folder) has NO labels (``labels`` all ``-1``; evaluation refuses
    it) unless ``test_labels.csv`` (header ``id,label``) lists a label for every ``test/*.tif``.
    """

    format = "kaggle"
    looks_for = "kaggle: <root>/train/*.tif with <root>/train_labels.csv (id,label), optional <root>/test/*.tif"
    detect_order = 20  # a named label file

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        valid_fraction: float = 0.1,
        seed: int = 0,
        skip_bad: bool = False,
        **options,
    ):
        self.root, self.split, self.skip_bad = root, split, skip_bad
        self.notes = []
        self.valid_fraction, self.seed = valid_fraction, seed
        available = self.splits(root)
        if split not in available:
            raise unknown_split(root, split, available, "kaggle")
        if split == "test":
            self._open_test(root)
            return
        self.unlabeled = False
        ids, labels = self._read_labels(root / KAGGLE_LABELS)
        files = self._match_files(root / "train", root / KAGGLE_LABELS, ids)
        assigned = self._read_splits(root, ids)
        if assigned is not None:
            self.split_source = f"{KAGGLE_SPLITS} (the splits of the converted source)"
            chosen = np.flatnonzero(assigned == split)
        else:
            if not 0.0 < valid_fraction < 1.0:
                raise ConfigError(
                    f"data.valid_fraction must be between 0 and 1 (exclusive) to split the Kaggle train set; "
                    f"got {valid_fraction!r}: use e.g. 0.1"
                )
            self.split_source = f"stratified random split, valid_fraction={valid_fraction}, seed={seed}"
            chosen = self._split_indices(ids, labels, split)
        self.files = [files[index] for index in chosen]
        self.ids = [ids[index] for index in chosen]
        self.labels = labels[chosen]
        if len(self.files) == 0:
            raise DataError(
                f"Kaggle split {split!r} of {str(root)!r} is empty with valid_fraction={valid_fraction}; "
                "add labelled images or change data.valid_fraction"
            )

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / KAGGLE_LABELS).is_file() and (root / "train").is_dir()

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        found = cls._split_names(root) if cls.detect(root) else []
        if (root / "test").is_dir():
            found.append("test")
        return found

    @staticmethod
    def _split_names(root: Path) -> list[str]:
        """Splits of the labelled images: those named in ``splits.csv`` (in order of appearance), or train/valid."""
        path = root / KAGGLE_SPLITS
        if not path.is_file():
            return ["train", "valid"]
        return list(dict.fromkeys(read_id_csv(path, [SPLIT], id_column=KAGGLE_ID).column("split").values()))

    def _open_test(self, root: Path) -> None:
        folder = root / "test"
        listing = self.walk_images(folder, recursive=False)
        self.files = listing.files
        if not self.files:
            raise DataError(f"Kaggle test folder {str(folder)!r} has no .tif images{listing.nothing_found()}; "
                            "add them or remove it")
        labels_path = root / KAGGLE_TEST_LABELS
        self.unlabeled = not labels_path.is_file()
        if self.unlabeled:
            self.labels = np.full(len(self.files), -1, dtype=np.int64)
            return
        ids, labels = self._read_labels(labels_path)
        self.files = self._match_files(folder, labels_path, ids)
        self.ids, self.labels = ids, labels

    def _read_labels(self, path: Path) -> tuple[list[str], np.ndarray]:
        """``(ids, int64 labels)`` of ``train_labels.csv`` or ``test_labels.csv``, by the id-CSV rules
        (:mod:`pcamlab.data.idcsv`); its notes join ``notes``."""
        table = read_id_csv(path, [LABEL], id_column=KAGGLE_ID)
        self.notes = [*self.notes, *table.notes]
        return table.ids, np.asarray(list(table.column("label").values()), dtype=np.int64)

    def _read_splits(self, root: Path, ids: list[str]) -> np.ndarray | None:
        """The split of every id from ``splits.csv``, in the order of ``ids``; ``None`` without the file."""
        path = root / KAGGLE_SPLITS
        if not path.is_file():
            return None
        table = read_id_csv(path, [SPLIT], id_column=KAGGLE_ID)
        self.notes = [*self.notes, *(note for note in table.notes if note not in self.notes)]
        assigned = table.column("split")
        missing = [image_id for image_id in ids if image_id not in assigned]
        if missing:
            raise DataError(
                f"{str(path)!r} gives no split for {len(missing)} ids of {KAGGLE_LABELS}, e.g. {missing[0]}; "
                "add an 'id,split' row for each, or delete the file to split at random by data.valid_fraction"
            )
        return np.asarray([assigned[image_id] for image_id in ids], dtype=object)

    def _match_files(self, folder: Path, labels_path: Path, ids: list[str]) -> list[Path]:
        on_disk = {path.stem: path for path in self.list_images(folder, recursive=False)}
        missing = [image_id for image_id in ids if image_id not in on_disk]
        if missing and len(missing) == len(ids) and on_disk:  # not a few lost files: ids and names disagree
            example = next(iter(on_disk.values())).name
            raise DataError(
                f"none of the {len(ids)} ids in {str(labels_path)!r} names a file in {str(folder)!r} (id "
                f"{ids[0]!r}, files like {example!r}); the ids must be the image file names without their suffix: "
                "fix the id column (or point data.path at the folder that holds these images)"
            )
        if missing:
            raise DataError(
                f"{str(labels_path)!r} lists {len(missing)} ids with no file in {str(folder)!r}, "
                f"e.g. {missing[0]}.tif; copy the missing images or delete their rows"
            )
        listed = set(ids)
        extra = sorted(stem for stem in on_disk if stem not in listed)
        if extra:
            raise DataError(
                f"{len(extra)} images in {str(folder)!r} have no row in {labels_path.name}, e.g. "
                f"{on_disk[extra[0]].name}; add 'id,label' rows for them or move them out of {folder.name}/"
            )
        return [on_disk[image_id] for image_id in ids]

    def _split_indices(self, ids: list[str], labels: np.ndarray, split: str) -> np.ndarray:
        generator = np.random.default_rng(self.seed)
        valid = []
        for label in (0, 1):
            members = np.flatnonzero(labels == label)
            # sorted by id, so the split does not depend on the order of the CSV rows
            members = members[np.argsort(np.asarray(ids, dtype=object)[members], kind="stable")]
            count = int(round(self.valid_fraction * len(members)))
            valid.append(generator.permutation(members)[:count])
        valid_indices = np.sort(np.concatenate(valid))
        if split == "valid":
            return valid_indices
        return np.setdiff1d(np.arange(len(labels)), valid_indices)
