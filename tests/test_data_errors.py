"""Every data error is one line naming the file (or row) and the fix."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from pcamlab.data import BadImageError, available_splits, detect_format, load_split_arrays, open_split
from pcamlab.errors import ConfigError, DataError
from fixtures_data import (
    kaggle_id,
    sample_patches,
    write_bad_image,
    write_folders,
    write_h5,
    write_kaggle,
)

H5_X = "camelyonpatch_level_2_split_train_x.h5"
H5_Y = "camelyonpatch_level_2_split_train_y.h5"


@pytest.fixture(scope="module")
def patches():
    return sample_patches(8)


def message_of(error_type, function, *args, **kwargs) -> str:
    with pytest.raises(error_type) as caught:
        function(*args, **kwargs)
    text = str(caught.value)
    assert "\n" not in text, f"error message is not one line: {text!r}"
    return text


def test_missing_root(tmp_path):
    text = message_of(DataError, open_split, tmp_path / "nowhere", "train")
    assert "nowhere" in text and "does not exist" in text and "'sample'" in text


def test_root_is_a_file(tmp_path):
    path = tmp_path / H5_X
    path.write_bytes(b"")
    text = message_of(DataError, detect_format, path)
    assert "is a file" in text and f"pass the folder that holds it ({str(tmp_path)!r})" in text


def test_no_recognisable_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    text = message_of(DataError, detect_format, tmp_path)
    assert str(tmp_path) in text and "notes.txt" in text
    for looked_for in ("camelyonpatch_level_2_split_", "<split>/{0,1}/", "train+val", "train_labels.csv"):
        assert looked_for in text


def test_unknown_split_lists_available_and_suggests(tmp_path, patches):
    root = write_folders(tmp_path, {"train": patches, "valid": patches})
    text = message_of(DataError, open_split, root, "vaild")
    assert "['train', 'valid']" in text and "did you mean 'valid'" in text and str(root) in text


def test_unknown_format_is_a_config_error_with_suggestion(tmp_path, patches):
    root = write_folders(tmp_path, {"train": patches})
    text = message_of(ConfigError, open_split, root, "train", format="hdf5")
    assert "data.format" in text and "'h5'" in text
    text = message_of(DataError, open_split, root, "train", format="kaggle")
    assert "not in the kaggle layout" in text and "data.format" in text


@pytest.mark.parametrize(
    "kind, suffix, expected",
    [
        ("small", ".png", "is 64x64 pixels"),
        ("grayscale", ".jpg", "8-bit grayscale (mode 'L')"),
        ("rgba", ".png", "alpha channel with 256 transparent pixels"),
        ("16bit", ".png", "16-bit grayscale (mode 'I;16')"),
        ("float-rgb", ".tif", "dtype float32"),
    ],
)
def test_wrong_image_size_or_mode_names_the_file_and_conversion(tmp_path, patches, kind, suffix, expected):
    root = write_folders(tmp_path, {"train": patches})
    bad = write_bad_image(root / "train" / "0" / f"bad{suffix}", kind)
    reader = open_split(root, "train")
    index = [str(path) for path in reader.files].index(str(bad))
    text = message_of(BadImageError, reader.__getitem__, index)
    assert str(bad) in text and expected in text
    assert "resize" in text or "convert" in text or "rescale" in text
    # validate() finds it from the header alone
    assert message_of(BadImageError, reader.validate) == text


@pytest.mark.parametrize("kind", ["truncated", "not-image", "empty"])
def test_unreadable_file_names_file_and_skip_option(tmp_path, patches, kind):
    root = write_folders(tmp_path, {"train": patches})
    bad = write_bad_image(root / "train" / "1" / "broken.jpg", kind)
    text = message_of(BadImageError, load_split_arrays, open_split(root, "train"))
    assert str(bad) in text and "skip_bad" in text and "copy it again" in text


def test_empty_class_folder(tmp_path, patches):
    root = write_folders(tmp_path, {"train": patches})
    shutil.rmtree(root / "train" / "1")
    (root / "train" / "1").mkdir()
    (root / "train" / "1" / "readme.txt").write_text("x")
    text = message_of(DataError, open_split, root, "train")
    assert str(root / "train" / "1") in text and "no images" in text and "readme.txt" in text


def test_h5_labels_outside_zero_one(tmp_path, patches):
    images, labels = patches
    root = write_h5(tmp_path, {"train": (images, np.where(labels == 1, 2, 0))})
    text = message_of(DataError, open_split, root, "train")
    assert H5_Y in text and "label 2" in text and "row 4" in text and "must be 0" in text


def test_h5_length_mismatch(tmp_path, patches):
    images, labels = patches
    root = write_h5(tmp_path, {"train": (images, labels)})
    write_h5(tmp_path / "other", {"train": (images[:5], labels[:5])})
    shutil.copyfile(tmp_path / "other" / H5_Y, root / H5_Y)
    text = message_of(DataError, open_split, root, "train")
    assert H5_X in text and H5_Y in text and "8 images" in text and "5 labels" in text and "same release" in text


def test_h5_wrong_dataset_name(tmp_path, patches):
    root = write_h5(tmp_path, {"train": patches}, x_name="images")
    text = message_of(DataError, open_split, root, "train")
    assert H5_X in text and "no dataset 'x'" in text and "['images']" in text and "rename" in text


@pytest.mark.parametrize(
    "images, expected",
    [
        (lambda x: x.transpose(0, 3, 1, 2).copy(), "shape (8, 3, 96, 96)"),
        (lambda x: x.astype(np.float32) / 255, "dtype float32"),
    ],
)
def test_h5_wrong_image_shape_or_dtype(tmp_path, patches, images, expected):
    root = write_h5(tmp_path, {"train": (images(patches[0]), patches[1])})
    text = message_of(DataError, open_split, root, "train")
    assert H5_X in text and expected in text and ("transpose" in text or "astype('uint8')" in text)


def test_h5_wrong_label_shape(tmp_path, patches):
    images, labels = patches
    root = write_h5(tmp_path, {"train": (images, np.repeat(labels, 2))}, y_shape=(8, 2))
    text = message_of(DataError, open_split, root, "train")
    assert H5_Y in text and "shape (8, 2)" in text and "reshape" in text


def test_h5_empty_split(tmp_path, patches):
    root = write_h5(tmp_path, {"train": (patches[0][:0], patches[1][:0])})
    text = message_of(DataError, open_split, root, "train")
    assert "'train'" in text and str(tmp_path) in text and "empty" in text


def test_h5_missing_partner_file(tmp_path, patches):
    root = write_h5(tmp_path, {"train": patches})
    (root / H5_Y).unlink()
    text = message_of(DataError, available_splits, root)  # finding no split is an error, not []
    assert H5_Y in text and "missing" in text and "copy the missing one" in text
    text = message_of(DataError, open_split, root, "train")
    assert H5_Y in text and "missing" in text and "copy the missing one" in text


def test_h5_still_gzipped(tmp_path, patches):
    root = write_h5(tmp_path, {"train": patches})
    for name in (H5_X, H5_Y):
        with open(root / name, "rb") as source, gzip.open(root / f"{name}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        (root / name).unlink()
    assert detect_format(root) == "h5"
    text = message_of(DataError, open_split, root, "train")
    assert ".h5.gz" in text and "gunzip" in text


def test_h5_truncated_file(tmp_path, patches):
    root = write_h5(tmp_path, {"train": patches})
    data = (root / H5_X).read_bytes()
    (root / H5_X).write_bytes(data[: len(data) // 3])
    text = message_of(DataError, open_split, root, "train")
    assert H5_X in text and "truncated" in text and "download it again" in text


def _kaggle(tmp_path, patches, rows=None):
    images, labels = patches
    return write_kaggle(tmp_path, images, labels, csv_rows=rows)


def test_kaggle_csv_id_without_file(tmp_path, patches):
    rows = [f"{kaggle_id(image)},{label}" for image, label in zip(*patches)] + ["deadbeef,1"]
    root = _kaggle(tmp_path, patches, rows)
    text = message_of(DataError, open_split, root, "train")
    assert "train_labels.csv" in text and "deadbeef.tif" in text and "1 ids with no file" in text
    assert "delete their rows" in text


def test_kaggle_file_without_csv_row(tmp_path, patches):
    rows = [f"{kaggle_id(image)},{label}" for image, label in zip(*patches)]
    root = _kaggle(tmp_path, patches, rows[1:])
    text = message_of(DataError, open_split, root, "train")
    assert f"{kaggle_id(patches[0][0])}.tif" in text and "no row in train_labels.csv" in text


@pytest.mark.parametrize(
    "row, expected",
    [("{id},2", "label '2'"), ("{id},tumour", "label 'tumour'"), ("{id}", "needs an id and a label")],
)
def test_kaggle_bad_label_rows_name_the_line(tmp_path, patches, row, expected):
    rows = [f"{kaggle_id(image)},{label}" for image, label in zip(*patches)]
    rows[3] = row.format(id=kaggle_id(patches[0][3]))
    root = _kaggle(tmp_path, patches, rows)
    text = message_of(DataError, open_split, root, "train")
    assert "train_labels.csv" in text and "line 5" in text and expected in text and "fix" in text


def test_kaggle_duplicate_row(tmp_path, patches):
    rows = [f"{kaggle_id(image)},{label}" for image, label in zip(*patches)]
    root = _kaggle(tmp_path, patches, rows + rows[:1])  # the same row twice: unambiguous, read once and said
    reader = open_split(root, "train", valid_fraction=0.25)
    assert len(reader) + len(open_split(root, "valid", valid_fraction=0.25)) == len(rows)
    assert any("repeat an id with the same label" in note for note in reader.notes)
    conflicting = rows[0].rsplit(",", 1)[0] + f",{1 - int(rows[0][-1])}"
    root = _kaggle(tmp_path / "conflict", patches, rows + [conflicting])
    text = message_of(DataError, open_split, root, "train")
    assert "line 10 gives id" in text and "line 2 gave" in text and "remove the wrong row" in text


def test_kaggle_bad_header(tmp_path, patches):
    root = _kaggle(tmp_path, patches)
    body = (root / "train_labels.csv").read_text().split("\n", 1)[1]
    (root / "train_labels.csv").write_text("image,target\n" + body)
    text = message_of(DataError, open_split, root, "train")
    assert "train_labels.csv" in text and "line 1" in text and "'id,label'" in text


def test_kaggle_valid_fraction_must_be_a_fraction(tmp_path, patches):
    root = _kaggle(tmp_path, patches)
    text = message_of(ConfigError, open_split, root, "valid", valid_fraction=1.5)
    assert "data.valid_fraction" in text and "1.5" in text
