"""dataset_info counts, statistics and duplicates; contact and augment sheets are real PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pcamlab.data import open_split
from pcamlab.data.info import augment_sheet, contact_sheet, dataset_info
from pcamlab.errors import ConfigError
from fixtures_data import sample_patches, tiny_splits, write_folders, write_h5


def test_counts_balance_and_channel_statistics(tmp_path):
    splits = tiny_splits(train=10, valid=6, seed=2)
    info = dataset_info(write_h5(tmp_path, splits))
    assert info["format"] == "h5" and list(info["splits"]) == ["train", "valid"]
    train = info["splits"]["train"]
    assert train["count"] == 10 and train["class_counts"] == {"0": 5, "1": 5}
    assert train["positive_fraction"] == 0.5 and train["image_shape"] == [96, 96, 3] and train["dtype"] == "uint8"
    pixels = splits["train"][0].reshape(-1, 3) / 255
    np.testing.assert_allclose(train["mean"], pixels.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(train["std"], pixels.std(axis=0), atol=1e-6)
    assert info["warnings"] == [] and info["duplicates_across"] == []


def test_duplicates_within_and_across_splits_and_conflicting_labels(tmp_path):
    images, labels = sample_patches(8)
    train = (np.concatenate([images, images[:2]]), np.concatenate([labels, [0, 1]]))  # copy of 0 labelled 1
    valid_images, valid_labels = sample_patches(4, "valid")
    valid = (np.concatenate([valid_images, images[5:8]]), np.concatenate([valid_labels, labels[5:8]]))
    info = dataset_info(write_folders(tmp_path, {"train": train, "valid": valid}))
    summary = info["splits"]["train"]
    assert summary["duplicate_copies"] == 2 and summary["duplicate_groups"] == 2
    assert summary["conflicting_duplicates"] == 1
    assert info["splits"]["valid"]["duplicate_copies"] == 0
    assert info["duplicates_across"] == [{"splits": ["train", "valid"], "patches": 3}]
    text = " | ".join(info["warnings"])
    assert "leakage: 3 patches of 'valid' are also in 'train'" in text and "different labels" in text


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'valid'"):
        dataset_info("sample", splits=["vlaid"])


def test_contact_sheet_is_a_seeded_png(tmp_path):
    reader = open_split(write_folders(tmp_path / "data", tiny_splits(12, 4)), "train")
    first = contact_sheet(reader, tmp_path / "a.png", per_class=2, seed=0)
    again = contact_sheet(reader, tmp_path / "b.png", per_class=2, seed=0)
    other = contact_sheet(reader, tmp_path / "c.png", per_class=2, seed=1)
    with Image.open(first) as image:
        assert image.format == "PNG" and image.width >= 2 * 96 * 0.9 and image.height >= 2 * 96 * 0.9
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    with pytest.raises(ConfigError, match=r"\.png"):
        contact_sheet(reader, tmp_path / "a.jpg")


def test_augment_sheet(tmp_path):
    pytest.importorskip("pcamlab.data.augment")
    from pcamlab.config import AugmentConfig

    reader = open_split("sample", "valid")
    path = augment_sheet(reader, tmp_path / "augment.png", AugmentConfig(hed=0.05), count=1, per_patch=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 2 * 96
