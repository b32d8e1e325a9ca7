"""Conversion between layouts keeps pixels (where lossless) and labels, and is atomic."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pcamlab.data import available_splits, detect_format, load_split_arrays, open_split
from pcamlab.data.convert import convert
from pcamlab.errors import ConfigError, RunError
from fixtures_data import sample_patches, tiny_splits, write_bad_image, write_folders, write_h5, write_kaggle


def _keys(images, labels):
    return sorted((hashlib.sha256(image.tobytes()).hexdigest(), int(label)) for image, label in zip(images, labels))


def _all(root, splits=("train", "valid"), **options):
    parts = [load_split_arrays(open_split(root, split, **options)) for split in splits]
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


@pytest.fixture(scope="module")
def splits():
    return tiny_splits(train=8, valid=6, seed=1)


def test_round_trip_h5_folders_kaggle_h5_is_lossless(tmp_path, splits):
    source = write_h5(tmp_path / "h5", splits)
    folders = convert(source, tmp_path / "folders", to="folders")
    assert folders["counts"] == {"train": 8, "valid": 6} and folders["source_format"] == "h5"
    assert detect_format(tmp_path / "folders") == "folders"
    for split, (images, labels) in splits.items():  # folders keep each split and its order
        loaded, loaded_labels, _ = load_split_arrays(open_split(tmp_path / "folders", split))
        np.testing.assert_array_equal(loaded, images)
        np.testing.assert_array_equal(loaded_labels, labels)

    kaggle = convert(tmp_path / "folders", tmp_path / "kaggle", to="kaggle")
    assert kaggle["counts"] == {"train": 8, "valid": 6}
    assert detect_format(tmp_path / "kaggle") == "kaggle"
    for split, (images, labels) in splits.items():  # each patch stays in its split (splits.csv)
        assert _keys(*load_split_arrays(open_split(tmp_path / "kaggle", split))[:2]) == _keys(images, labels)

    back = convert(tmp_path / "kaggle", tmp_path / "back", to="h5", valid_fraction=0.3, seed=2)
    assert back["counts"] == {"train": 8, "valid": 6}  # valid_fraction/seed unused: the splits are kept
    for split, (images, labels) in splits.items():
        assert _keys(*load_split_arrays(open_split(tmp_path / "back", split))[:2]) == _keys(images, labels)


def test_h5_output_has_the_official_layout(tmp_path, splits):
    import h5py

    convert(write_folders(tmp_path / "src", splits), tmp_path / "out", to="h5")
    with h5py.File(tmp_path / "out" / "camelyonpatch_level_2_split_valid_x.h5") as file:
        assert list(file) == ["x"] and file["x"].shape == (6, 96, 96, 3) and file["x"].dtype == np.uint8
        assert file["x"].chunks == (1, 96, 96, 3)
    with h5py.File(tmp_path / "out" / "camelyonpatch_level_2_split_valid_y.h5") as file:
        assert file["y"].shape == (6, 1, 1, 1) and file["y"].dtype == np.uint8
        assert file["y"][()].ravel().tolist() == splits["valid"][1].tolist()


def test_jpg_folders_copy_jpeg_sources_byte_for_byte(tmp_path):
    result = convert("sample", tmp_path / "jpg", to="folders", image_format="jpg", splits=["valid"])
    assert result["counts"] == {"valid": 200} and available_splits(tmp_path / "jpg") == ["valid"]
    from pcamlab.data import sample_root

    original = sorted((sample_root() / "valid" / "1").iterdir())[5]
    assert (tmp_path / "jpg" / "valid" / "1" / original.name).read_bytes() == original.read_bytes()


def test_jpg_folders_from_h5_are_close_to_the_pixels(tmp_path, splits):
    convert(write_h5(tmp_path / "h5", splits), tmp_path / "jpg", to="folders", image_format="jpg")
    images, labels, _ = load_split_arrays(open_split(tmp_path / "jpg", "train"))
    np.testing.assert_array_equal(labels, splits["train"][1])
    assert np.abs(images.astype(int) - splits["train"][0].astype(int)).mean() < 4


def test_kaggle_test_split_goes_to_test_folder_and_unlabeled_is_skipped_for_h5(tmp_path):
    images, labels = sample_patches(8)
    test_images, _ = sample_patches(4, "valid")
    source = write_kaggle(tmp_path / "kaggle", images, labels, test_images=test_images)
    result = convert(source, tmp_path / "h5", to="h5", valid_fraction=0.25)
    assert result["skipped_splits"] == ["test"] and set(result["counts"]) == {"train", "valid"}
    assert available_splits(tmp_path / "h5") == ["train", "valid"]
    again = convert(source, tmp_path / "kaggle2", to="kaggle", valid_fraction=0.25)
    assert again["counts"]["test"] == 4 and not (tmp_path / "kaggle2" / "test_labels.csv").exists()
    assert len(open_split(tmp_path / "kaggle2", "test")) == 4


def test_labelled_test_split_keeps_its_labels_beside_kaggle(tmp_path, splits):
    source = write_h5(tmp_path / "h5", {"train": splits["train"], "test": splits["valid"]})
    convert(source, tmp_path / "kaggle", to="kaggle")
    rows = (tmp_path / "kaggle" / "test_labels.csv").read_text().split()
    assert rows[0] == "id,label" and [int(row[-1]) for row in rows[1:]] == splits["valid"][1].tolist()


def test_existing_destination_is_refused_and_failure_leaves_nothing(tmp_path, splits):
    source = write_folders(tmp_path / "src", splits)
    (tmp_path / "taken").mkdir()
    with pytest.raises(RunError, match="already exists"):
        convert(source, tmp_path / "taken", to="h5")
    write_bad_image(source / "valid" / "1" / "zzz.png", "truncated")
    with pytest.raises(Exception, match="zzz.png"):
        convert(source, tmp_path / "out", to="h5")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src", "taken"]  # no dst, no tmp folder
    result = convert(source, tmp_path / "out", to="h5", skip_bad=True)
    assert result["skipped_images"] == 1 and result["counts"] == {"train": 8, "valid": 6}


def test_progress_and_bad_options(tmp_path, splits):
    source = write_h5(tmp_path / "h5", splits)
    calls = []
    convert(source, tmp_path / "out", to="kaggle", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (14, 14)
    with pytest.raises(ConfigError, match="did you mean 'folders'"):
        convert(source, tmp_path / "x", to="folder")
    with pytest.raises(ConfigError, match="'png', 'jpg'"):
        convert(source, tmp_path / "x", to="folders", image_format="webp")
    with pytest.raises(ConfigError, match="did you mean 'valid'"):
        convert(source, tmp_path / "x", to="folders", splits=["vaild"])


def _membership(root, format="auto"):
    """``{pixel hash: split}`` of every labelled patch in every split of ``root``."""
    member = {}
    for split in available_splits(root, format):
        images, labels, _ = load_split_arrays(open_split(root, split, format))
        for key, _label in _keys(images, labels):
            member[key] = split
    return member


def test_sample_folders_to_kaggle_to_h5_keeps_every_patch_in_its_split(tmp_path):
    """Issue 9 2.1: the real sample's 200 validation patches (other slides) must not end up in training."""
    source = tmp_path / "sample"
    import shutil

    from pcamlab.data import sample_root

    for split in ("train", "valid"):  # a quarter of the real sample keeps the test fast
        for label in ("0", "1"):
            files = sorted((sample_root() / split / label).glob("*.jpg"))[: 100 if split == "train" else 25]
            (source / split / label).mkdir(parents=True)
            for file in files:
                shutil.copyfile(file, source / split / label / file.name)
    expected = _membership(source)
    kaggle = convert(source, tmp_path / "kaggle", to="kaggle")
    assert kaggle["counts"] == {"train": 200, "valid": 50}
    assert _membership(tmp_path / "kaggle") == expected
    h5 = convert(tmp_path / "kaggle", tmp_path / "h5", to="h5", valid_fraction=0.5, seed=7)
    assert h5["counts"] == {"train": 200, "valid": 50}
    assert _membership(tmp_path / "h5") == expected
    assert any("splits.csv" in note for note in h5["notes"])  # says where the split came from
    back = convert(tmp_path / "h5", tmp_path / "kaggle2", to="kaggle")  # and once more through Kaggle
    assert _membership(tmp_path / "kaggle2") == expected


def test_every_target_keeps_the_splits_of_every_source(tmp_path, splits):
    """Each source -> target pair: the same patches in the same splits (labelled test included)."""
    three = {"train": splits["train"], "valid": splits["valid"][:3], "test": (splits["valid"][0][3:], splits["valid"][1][3:])}
    three["valid"] = (splits["valid"][0][:3], splits["valid"][1][:3])
    sources = {
        "h5": write_h5(tmp_path / "src-h5", three),
        "folders": write_folders(tmp_path / "src-folders", three),
    }
    sources["kaggle"] = convert(sources["h5"], tmp_path / "src-kaggle", to="kaggle")["path"]
    expected = _membership(sources["h5"])
    assert sorted(set(expected.values())) == ["test", "train", "valid"]
    for source_name, source in sources.items():
        assert _membership(source) == expected, source_name
        for target in ("h5", "folders", "kaggle"):
            out = tmp_path / f"{source_name}-to-{target}"
            result = convert(source, out, to=target)
            assert result["skipped_splits"] == [], (source_name, target)
            assert _membership(out) == expected, (source_name, target)


def test_h5_target_refuses_a_split_it_cannot_name_and_kaggle_keeps_it(tmp_path, splits):
    source = write_folders(tmp_path / "src", {"train": splits["train"], "holdout": splits["valid"]})
    with pytest.raises(ConfigError, match="'holdout'.*convert to folders or kaggle"):
        convert(source, tmp_path / "h5", to="h5")
    assert not (tmp_path / "h5").exists()
    convert(source, tmp_path / "kaggle", to="kaggle")
    assert sorted(available_splits(tmp_path / "kaggle")) == ["holdout", "train"]
    assert len(open_split(tmp_path / "kaggle", "holdout")) == 6


def test_slide_meta_csv_is_carried_into_h5_and_its_loss_is_noted_elsewhere(tmp_path, splits):
    source = write_h5(tmp_path / "h5", splits)
    meta = "coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n" + "".join(
        f"0,{row},False,False,slide_{row % 3}\n" for row in range(8)
    )
    (source / "camelyonpatch_level_2_split_train_meta.csv").write_text(meta)
    copied = convert(source, tmp_path / "h5-again", to="h5")
    assert (tmp_path / "h5-again" / "camelyonpatch_level_2_split_train_meta.csv").read_text() == meta
    assert copied["notes"] == []
    folders = convert(source, tmp_path / "folders", to="folders")
    assert any("slide meta CSVs of ['train'] are not carried" in note for note in folders["notes"])


def test_a_meta_csv_that_does_not_describe_its_split_is_not_carried_and_a_note_says_why(tmp_path, splits):
    source = write_h5(tmp_path / "h5", splits)
    count = len(splits["train"][1])
    meta = ",wsi\n" + "".join(f"{row},slide_{row % 3}\n" for row in range(count + 1))  # one row too many
    (source / "camelyonpatch_level_2_split_train_meta.csv").write_text(meta)
    result = convert(source, tmp_path / "h5-again", to="h5")
    assert not (tmp_path / "h5-again" / "camelyonpatch_level_2_split_train_meta.csv").exists()
    assert any(note.startswith("the slide meta CSV of split 'train' is not carried")
               and f"has {count + 1} rows but the split has {count} patches" in note for note in result["notes"])


def test_carried_meta_rows_keep_their_cells_and_the_index_counts_again():
    """What the h5 writer writes for the kept rows (some images skipped): the rows as read, pandas index renumbered."""
    import tempfile
    from pathlib import Path

    from pcamlab.data.readers import read_meta_csv

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "camelyonpatch_level_2_split_train_meta.csv"
        path.write_bytes(b"\xef\xbb\xbf;coord_y;coord_x;tumor_patch;center_tumor_patch;wsi\r\n"
                         b"0;10;20;False;False;a\r\n1;30;40;True;True;b\r\n2;50;60;False;False;c\r\n")
        table = read_meta_csv(path, count=3)
    assert table.column("wsi") == ["a", "b", "c"]
    assert table.to_csv([0, 2]) == (",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n"
                                    "0,10,20,False,False,a\n1,50,60,False,False,c\n")


def test_bad_splits_csv_says_how_to_fix_it(tmp_path, splits):
    from pcamlab.errors import DataError

    convert(write_h5(tmp_path / "h5", splits), tmp_path / "kaggle", to="kaggle")
    path = tmp_path / "kaggle" / "splits.csv"
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match="gives no split for 1 ids"):
        open_split(tmp_path / "kaggle", "train")


def test_cli_convert_to_h5_writes_fletcher32_and_a_flipped_byte_in_a_chunk_is_found_on_read(tmp_path, splits, capsys):
    """`data convert --to h5` (the real command) checksums every chunk: damage is an error, never other pixels."""
    import h5py

    from pcamlab.cli.main import main
    from pcamlab.data.readers import H5_PATTERN, BadImageError

    source = write_folders(tmp_path / "folders", splits)
    out = tmp_path / "h5"
    assert main(["data", "convert", str(source), str(out), "--to", "h5"]) == 0
    capsys.readouterr()
    x_path, y_path = (out / H5_PATTERN.format(split="train", kind=kind) for kind in "xy")
    with h5py.File(x_path, "r") as x_file, h5py.File(y_path, "r") as y_file:
        x, y = x_file["x"], y_file["y"]
        assert x.fletcher32 and y.fletcher32 and x.chunks == (1, 96, 96, 3)
        count = len(x)
        original = [x[index] for index in range(count)]  # one index at a time, as the chunks are laid out
        damaged_row = count // 2
        chunk = x.id.get_chunk_info_by_coord((damaged_row, 0, 0, 0))  # where that row's (compressed) chunk lies
    data = bytearray(x_path.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0x5A
    x_path.write_bytes(bytes(data))

    with h5py.File(x_path, "r") as x_file:
        x = x_file["x"]
        for index in range(count):
            if index == damaged_row:
                with pytest.raises(OSError, match="filter returned failure"):  # Fletcher-32 is checked before gzip
                    x[index]
            else:
                assert np.array_equal(x[index], original[index])
    reader = open_split(out, "train", "h5")
    with pytest.raises(BadImageError, match=f"row {damaged_row} .*damaged"):
        reader[damaged_row]
    assert np.array_equal(reader[damaged_row - 1][0], original[damaged_row - 1])

    data = bytearray(y_path.read_bytes())  # the labels: one checksummed chunk, so a flip anywhere in it is found
    with h5py.File(y_path, "r") as y_file:
        chunk = y_file["y"].id.get_chunk_info(0)
    data[chunk.byte_offset] ^= 0x01
    y_path.write_bytes(bytes(data))
    with h5py.File(y_path, "r") as y_file, pytest.raises(OSError, match="filter returned failure"):  # no gzip on y
        y_file["y"][0]
