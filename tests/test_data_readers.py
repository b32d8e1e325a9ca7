"""Readers of every layout return the same real pixels and labels; the shipped sample is intact."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle

import numpy as np
import pytest

from pcamlab.data import (
    BadImageError,
    available_splits,
    detect_format,
    load_split_arrays,
    open_split,
    sample_root,
)
from pcamlab.data.readers import decode_image_file
from fixtures_data import (
    kaggle_id,
    sample_files,
    sample_patches,
    tiny_splits,
    write_all_formats,
    write_bad_image,
    write_folders,
    write_h5,
    write_kaggle,
    write_original_jpegs,
)


@pytest.fixture(scope="module")
def splits():
    return tiny_splits(train=12, valid=8, seed=0)


@pytest.fixture(scope="module")
def roots(tmp_path_factory, splits):
    return write_all_formats(tmp_path_factory.mktemp("formats"), splits)


def _pixel_keys(images: np.ndarray, labels: np.ndarray) -> list[tuple[str, int]]:
    return sorted((hashlib.sha256(image.tobytes()).hexdigest(), int(label)) for image, label in zip(images, labels))


@pytest.mark.parametrize(
    "layout, expected", [("h5", "h5"), ("folders", "folders"), ("course", "folders"), ("kaggle", "kaggle")]
)
def test_detect_format_and_splits(roots, layout, expected):
    assert detect_format(roots[layout]) == expected
    assert available_splits(roots[layout]) == ["train", "valid"]


@pytest.mark.parametrize("layout", ["h5", "folders", "course"])
def test_lossless_layouts_return_the_written_pixels_in_order(roots, splits, layout):
    for split, (images, labels) in splits.items():
        reader = open_split(roots[layout], split)
        loaded, loaded_labels, skipped = load_split_arrays(reader)
        assert skipped == 0
        assert loaded.dtype == np.uint8 and loaded.shape == images.shape
        assert loaded_labels.dtype == np.int64
        # the fixture lists class 0 first, and folders order by label then name: same order
        np.testing.assert_array_equal(loaded, images)
        np.testing.assert_array_equal(loaded_labels, labels)
        np.testing.assert_array_equal(reader.labels, labels)
        image, label = reader[len(reader) - 1]
        assert isinstance(label, int) and image.shape == (96, 96, 3)


def test_kaggle_holds_every_patch_once_with_its_label(roots, splits):
    all_images = np.concatenate([pair[0] for pair in splits.values()])
    all_labels = np.concatenate([pair[1] for pair in splits.values()])
    parts = [load_split_arrays(open_split(roots["kaggle"], split)) for split in ("train", "valid")]
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    assert _pixel_keys(images, labels) == _pixel_keys(all_images, all_labels)


def test_kaggle_split_is_stratified_seeded_and_disjoint(roots):
    train = open_split(roots["kaggle"], "train", valid_fraction=0.25, seed=3)
    valid = open_split(roots["kaggle"], "valid", valid_fraction=0.25, seed=3)
    assert valid.class_counts() == {0: 2, 1: 2}  # round(0.25 * 10) per class
    assert train.class_counts() == {0: 8, 1: 8}
    assert not set(train.ids) & set(valid.ids)
    again = open_split(roots["kaggle"], "valid", valid_fraction=0.25, seed=3)
    assert again.ids == valid.ids
    others = [open_split(roots["kaggle"], "valid", valid_fraction=0.25, seed=seed).ids for seed in range(4, 8)]
    assert any(set(ids) != set(valid.ids) for ids in others)
    # the name says the file; the id is the file name
    assert valid.name(0).endswith(f"{valid.ids[0]}.tif")


def test_kaggle_split_does_not_depend_on_csv_row_order(tmp_path):
    images, labels = sample_patches(12)
    rows = [f"{kaggle_id(image)},{label}" for image, label in zip(images, labels)]
    forward = write_kaggle(tmp_path / "forward", images, labels)
    backward = write_kaggle(tmp_path / "backward", images, labels, csv_rows=rows[::-1])
    chosen = set(open_split(forward, "valid", valid_fraction=0.3).ids)
    assert len(chosen) == 4  # round(0.3 * 6) per class
    assert set(open_split(backward, "valid", valid_fraction=0.3).ids) == chosen


def test_kaggle_test_split_is_unlabeled(tmp_path):
    images, labels = sample_patches(8)
    test_images, _ = sample_patches(4, split="valid")
    root = write_kaggle(tmp_path, images, labels, test_images=test_images)
    assert available_splits(root) == ["train", "valid", "test"]
    reader = open_split(root, "test")
    assert len(reader) == 4 and (reader.labels == -1).all()
    loaded, loaded_labels, _ = load_split_arrays(reader)
    assert _pixel_keys(loaded, np.zeros(4)) == _pixel_keys(test_images, np.zeros(4))
    assert (loaded_labels == -1).all()
    assert reader.validate()["class_counts"] == {-1: 4}


def test_original_jpeg_folders_match_the_pillow_decoding(tmp_path):
    files, labels = sample_files(6)
    root = write_original_jpegs(tmp_path, {"train": (files, labels)})
    images, loaded_labels, _ = load_split_arrays(open_split(root, "train"))
    expected, _ = sample_patches(6)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(loaded_labels, labels)


def test_folder_holding_class_folders_directly_is_its_own_split(tmp_path, splits):
    write_folders(tmp_path, {"mydata": splits["valid"]})
    root = tmp_path / "mydata"
    assert available_splits(root) == ["mydata"]
    assert len(open_split(root, "mydata")) == 8


def test_folders_reads_jpg_tif_and_ignores_dot_files(tmp_path, splits):
    write_folders(tmp_path / "jpg", {"train": splits["valid"]}, image_format="jpg")
    write_folders(tmp_path / "tif", {"train": splits["valid"]}, image_format="tif")
    (tmp_path / "jpg" / "train" / "0" / "._000.jpg").write_bytes(b"\x00\x05")  # macOS metadata
    jpg, _, _ = load_split_arrays(open_split(tmp_path / "jpg", "train"))
    tif, _, _ = load_split_arrays(open_split(tmp_path / "tif", "train"))
    np.testing.assert_array_equal(tif, splits["valid"][0])
    assert len(jpg) == 8
    error = np.abs(jpg.astype(int) - splits["valid"][0].astype(int)).mean()
    assert 0 < error < 4  # JPEG at quality 95: close, not equal


def test_sixteen_bit_rgb_tiff_reads_as_its_eight_bit_values(tmp_path):
    image = sample_patches(2)[0][0]
    path = write_bad_image(tmp_path / "a.tif", "16bit-rgb", source=image)
    np.testing.assert_array_equal(decode_image_file(path), image)


def test_negative_index_and_out_of_range(roots):
    reader = open_split(roots["h5"], "valid")
    np.testing.assert_array_equal(reader[-1][0], reader[len(reader) - 1][0])
    with pytest.raises(IndexError):
        reader[len(reader)]


def test_h5_reader_opens_lazily_pickles_and_reopens_after_fork(roots, splits):
    reader = open_split(roots["h5"], "train")
    assert reader._images is None  # nothing opened until the first read
    first = reader[3][0]
    assert reader._images is not None
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._images is None
    np.testing.assert_array_equal(clone[3][0], first)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_read_in_child, args=(reader, queue))
    process.start()
    child_pid, parent_pid, image = queue.get(timeout=20)
    process.join(timeout=20)
    assert child_pid != parent_pid  # the child opened its own handle
    np.testing.assert_array_equal(image, splits["train"][0][5])
    np.testing.assert_array_equal(reader[5][0], splits["train"][0][5])  # parent handle still fine


def _read_in_child(reader, queue):
    parent_pid = reader._pid
    image = reader[5][0]
    queue.put((reader._pid, parent_pid, image))


def test_h5_only_present_splits_are_available(tmp_path, splits):
    root = write_h5(tmp_path, {"valid": splits["valid"]})
    assert available_splits(root) == ["valid"]


def test_skip_bad_counts_and_skips_unreadable_files(tmp_path, splits):
    root = write_folders(tmp_path, {"train": splits["valid"]})
    bad = write_bad_image(root / "train" / "1" / "zzz.png", "truncated")
    reader = open_split(root, "train")
    assert len(reader) == 9
    with pytest.raises(BadImageError, match="zzz.png"):
        load_split_arrays(reader)
    calls = []
    images, labels, skipped = load_split_arrays(reader, skip_bad=True, progress=lambda d, t: calls.append((d, t)))
    assert skipped == 1 and images.shape == (8, 96, 96, 3) and labels.tolist() == [0] * 4 + [1] * 4
    np.testing.assert_array_equal(images, splits["valid"][0])
    assert calls[-1] == (9, 9)
    # skip_bad given at open is the default when loading
    _, _, skipped = load_split_arrays(open_split(root, "train", skip_bad=True))
    assert skipped == 1
    assert bad.exists()


def test_threaded_decode_matches_one_thread_in_order_and_with_bad_files(tmp_path):
    """Splits of >= 512 files decode on a thread pool: same pixels, order, labels, skips and errors."""
    rng = np.random.default_rng(3)
    count = 600
    images = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
    labels = (np.arange(count) % 2).astype(np.int64)
    root = write_folders(tmp_path, {"train": (images, labels)})
    reader = open_split(root, "train")
    assert reader.thread_safe
    serial = load_split_arrays(reader, threads=1)
    calls = []
    threaded = load_split_arrays(reader, threads=4, progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(threaded[0], serial[0])
    np.testing.assert_array_equal(threaded[1], serial[1])
    assert threaded[2] == serial[2] == 0 and len(threaded[0]) == count
    assert calls[-1] == (count, count) and [done for done, _ in calls] == sorted(done for done, _ in calls)
    # two bad files: the error names the first in the reader's order; skipping drops exactly those two
    write_bad_image(root / "train" / "0" / "000.png", "not-image")  # the first file of the split
    write_bad_image(root / "train" / "1" / "599.png", "truncated")  # near the end
    reader = open_split(root, "train")
    with pytest.raises(BadImageError, match="000.png"):
        load_split_arrays(reader, threads=4)
    kept, kept_labels, skipped = load_split_arrays(reader, threads=4, skip_bad=True)
    one_thread = load_split_arrays(reader, threads=1, skip_bad=True)
    assert skipped == one_thread[2] == 2 and len(kept) == count - 2
    np.testing.assert_array_equal(kept, one_thread[0])
    np.testing.assert_array_equal(kept_labels, one_thread[1])


def test_validate_returns_counts(roots):
    summary = open_split(roots["course"], "train").validate()
    assert summary == {"format": "folders", "split": "train", "count": 12, "class_counts": {0: 6, 1: 6}}


def test_sample_root_is_the_shipped_real_sample():
    assert detect_format("sample") == "folders"
    assert available_splits("sample") == ["train", "valid"]
    train, valid = open_split("sample", "train"), open_split("sample", "valid")
    assert train.class_counts() == {0: 400, 1: 400}
    assert valid.class_counts() == {0: 100, 1: 100}
    assert train.root == sample_root()
    image, label = valid[0]
    assert image.dtype == np.uint8 and image.shape == (96, 96, 3) and label == 0
    assert 40 < image.mean() < 250  # an H&E patch, not a blank


def test_sample_files_match_their_checksums():
    root = sample_root()
    lines = (root / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split("  ", 1)) for line in lines if line)
    files = sorted(path for path in root.rglob("*.jpg"))
    assert len(files) == len(sums) == 1000
    for path in files:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[str(path.relative_to(root))]
    total = sum(path.stat().st_size for path in files)
    assert total < 7_000_000
    assert "CC0 1.0" in (root / "PROVENANCE.md").read_text()


@pytest.mark.shared
def test_real_h5_splits(shared_data):
    root = shared_data / "pcam-h5"
    assert detect_format(root) == "h5"
    assert available_splits(root) == ["train", "valid"]
    for split, count in (("train", 2000), ("valid", 1000)):
        reader = open_split(root, split)
        assert reader.validate()["class_counts"] == {0: count // 2, 1: count // 2}
        image, label = reader[count - 1]
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and label in (0, 1)


@pytest.mark.shared
def test_real_jpeg_folders(shared_data):
    root = shared_data / "pcam-jpg"
    assert detect_format(root) == "folders"
    assert available_splits(root) == ["train", "valid"]
    train, valid = open_split(root, "train"), open_split(root, "valid")
    assert train.class_counts() == {0: 10_000, 1: 9_171}
    assert valid.class_counts() == {0: 1_500, 1: 1_407}
    # the sample holds original bytes of these files: same pixels through either reader
    name = sorted((sample_root() / "valid" / "1").iterdir())[0].name
    index = [path.name for path in valid.files].index(name)
    np.testing.assert_array_equal(valid[index][0], decode_image_file(sample_root() / "valid" / "1" / name))
    assert valid[index][1] == 1
