"""Each kind of input is read in one place: one table of quirky inputs per kind, run through EVERY entry point.

Kinds (issue 22): id CSVs (``pcamlab.data.idcsv``), folder listings (``pcamlab.data.walk``) and run files of
earlier versions (``pcamlab.data.runfiles``). A fix to a kind's reader reaches every command; a command that
reads the kind its own way fails here on the first quirk its twin handles. A new entry point of a kind is
one more row in that kind's ``*_ENTRY_POINTS`` list; a new quirk is one more row in its table.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import kaggle_id, sample_patches, write_h5, write_kaggle
from PIL import Image

from pcamlab import stopping
from pcamlab.data import open_split
from pcamlab.data.idcsv import SLIDE_ID, Column, read_id_csv, tumour_label
from pcamlab.data.runfiles import UNDEFINED
from pcamlab.data.walk import IMAGE_SUFFIXES, walk_files
from pcamlab.errors import DataError

# ----------------------------------------------------------------------------------------------
# Kind 1: id CSVs. Each quirk writes a CSV from (id header, value header, [(id, value)]).


def _lines(header: str, rows: list[str], end: str = "\n") -> str:
    return end.join([header, *rows]) + end


CSV_QUIRKS = {  # name: write(id_name, value_name, rows) -> bytes
    "plain": lambda i, v, rows: _lines(f"{i},{v}", [f"{a},{b}" for a, b in rows]).encode(),
    "bom-crlf": lambda i, v, rows: ("\ufeff" + _lines(f"{i},{v}", [f"{a},{b}" for a, b in rows], "\r\n")).encode(),
    "header-case-spaces": lambda i, v, rows: _lines(f" {i.upper()} , {v.title()} ", [f"{a},{b}" for a, b in rows]).encode(),
    "pandas-index": lambda i, v, rows: _lines(f",{i},{v}", [f"{n},{a},{b}" for n, (a, b) in enumerate(rows)]).encode(),
    "unnamed-0": lambda i, v, rows: _lines(f"Unnamed: 0,{i},{v}", [f"{n},{a},{b}" for n, (a, b) in enumerate(rows)]).encode(),
    "id-with-suffix": lambda i, v, rows: _lines(f"{i},{v}", [f"{a}.tif,{b}" for a, b in rows]).encode(),
    "id-with-folder": lambda i, v, rows: _lines(f"{i},{v}", [f"some/folder/{a}.tif,{b}" for a, b in rows]).encode(),
    "excel-sep-line": lambda i, v, rows: ("sep=;\n" + _lines(f"{i};{v}", [f"{a};{b}" for a, b in rows])).encode(),
    "semicolons": lambda i, v, rows: _lines(f"{i};{v}", [f"{a};{b}" for a, b in rows]).encode(),
    "tabs": lambda i, v, rows: _lines(f"{i}\t{v}", [f"{a}\t{b}" for a, b in rows]).encode(),
    "value-first": lambda i, v, rows: _lines(f"{v},{i}", [f"{b},{a}" for a, b in rows]).encode(),
    "quoted": lambda i, v, rows: _lines(f'"{i}","{v}"', [f'"{a}","{b}"' for a, b in rows]).encode(),
    "repeated-row": lambda i, v, rows: _lines(f"{i},{v}", [f"{a},{b}" for a, b in rows + rows[:1]]).encode(),
    "blank-lines": lambda i, v, rows: ("\n" + _lines(f"{i},{v}", [f"{a},{b}\n" for a, b in rows])).encode(),
    "trailing-comma": lambda i, v, rows: _lines(f"{i},{v}", [f"{a},{b}," for a, b in rows]).encode(),
}
HEADERLESS_ALLOWED = {"reference.csv"}  # read by position when the first row names no column (read_id_csv headerless)
# PCam's meta CSV: row i = patch i, its "id" is the (pandas index) row number, so quirks of the id itself and
# rows that repeat an id do not apply to it (a repeated row is one more patch: refused as a row count).
ROW_CSV_QUIRKS_NOT_APPLYING = {"pandas-index", "unnamed-0", "id-with-suffix", "id-with-folder", "repeated-row"}
ROW_CSV_REFUSED_WORDS = {"two-values-for-one-id": "9 rows but the split has 8 patches"}
CSV_REFUSED = {  # name: (write, words of the one-line error)
    "two-values-for-one-id": (lambda i, v, rows, other: _lines(f"{i},{v}", [f"{a},{b}" for a, b in rows]
                                                               + [f"{rows[0][0]},{other}"]).encode(), "gives id"),
    "excel-workbook": (lambda i, v, rows, other: b"PK\x03\x04 workbook bytes", "is an Excel workbook"),
    "latin-1": (lambda i, v, rows, other: _lines(f"{i},{v}", [f"{a},{b}" for a, b in rows] + ["caf\xe9,x"]).encode("latin-1"),
                "is not UTF-8 text"),
    "no-header": (lambda i, v, rows, other: _lines(f"{rows[0][0]},{rows[0][1]}", [f"{a},{b}" for a, b in rows[1:]]).encode(),
                  "line 1 is"),
    "short-row": (lambda i, v, rows, other: _lines(f"{i},{v}", [f"{a},{b}" for a, b in rows] + [rows[0][0]]).encode(),
                  "each row needs"),
    "a-separator-in-a-value": (lambda i, v, rows, other: _lines(f"{i},{v}", [f"{a},{b}" for a, b in rows]
                                                                + [f"{rows[0][0]},{rows[0][1]},9"]).encode(), "cells but the header"),
    "empty": (lambda i, v, rows, other: b"", "is empty"),
}


@pytest.fixture(scope="module")
def patches():
    return sample_patches(8, "valid", seed=3)


class CsvEntry:
    """One command that reads an id CSV: where the CSV goes, its columns, the values, and what it read.

    ``key`` tells apart entry points of one file (default: its name); ``rows`` marks a CSV whose rows are
    its items in order (:func:`pcamlab.data.idcsv.read_row_csv`), whose "id" is the row number.
    """

    def __init__(self, name, id_name, value_name, values, other, setup, read, key=None, rows=False):
        self.name, self.id_name, self.value_name = name, id_name, value_name
        self.values, self.other, self.setup, self.read = values, other, setup, read
        self.key, self.rows = key or name, rows


def _kaggle_labels(root: Path) -> dict[str, object]:
    found = {}
    for split in ("train", "valid"):
        reader = open_split(root, split, valid_fraction=0.25)
        found.update({Path(reader.name(index)).stem: int(label) for index, label in enumerate(reader.labels)})
    return found


def _kaggle_test_labels(root: Path) -> dict[str, object]:
    reader = open_split(root, "test")
    return {Path(reader.name(index)).stem: int(label) for index, label in enumerate(reader.labels)}


def _kaggle_splits(root: Path) -> dict[str, object]:
    return {Path(name).stem: split for split in ("train", "valid")
            for name in (lambda reader: [reader.name(i) for i in range(len(reader))])(open_split(root, split))}


def _template(root: Path) -> dict[str, object]:
    from pcamlab.deploy.kaggle import read_template

    return dict.fromkeys(read_template(root / "sample_submission.csv"))


def _slide_reference(root: Path) -> dict[str, object]:
    try:  # the slide helpers' reader, once merged: it must follow the same rules
        from pcamlab.slide.reference import read_reference
    except ImportError:
        return read_id_csv(root / "reference.csv", [Column("label", aliases=("class",), parse=tumour_label)],
                           id_column=SLIDE_ID).column("label")
    return read_reference(root / "reference.csv")


META = "camelyonpatch_level_2_split_train_meta.csv"


def _said(notes: list[str]) -> None:
    """A meta CSV left out with a note or warning (data convert, data info) is refused there: raise it."""
    said = [note for note in notes if META in note]
    if said:
        raise DataError(said[0])


def _meta_groups(root: Path) -> dict[object, object]:
    from pcamlab.train.protocols import slide_groups

    slides, _ = slide_groups(open_split(root, "train"))
    return {str(index): slide for index, slide in enumerate(slides.tolist())}


def _meta_converted(root: Path) -> dict[object, object]:
    from pcamlab.data.convert import convert
    from pcamlab.train.protocols import read_slide_ids

    result = convert(root, root.parent / "converted", to="h5")
    _said(result["notes"])
    return {str(index): slide for index, slide in enumerate(read_slide_ids(root.parent / "converted" / META, count=8))}


def _meta_info(root: Path) -> dict[object, object]:
    from pcamlab.data.info import dataset_info

    info = dataset_info(root)
    _said(info["warnings"])
    (summary,) = info["slides"]["splits"].values()
    return {item["slide"]: item["label_0"] + item["label_1"] for item in summary["slides"]}


def _csv_entries(patches) -> list[CsvEntry]:
    images, labels = patches
    ids = [kaggle_id(image) for image in images]
    labels = [int(label) for label in labels]

    def kaggle(tmp: Path, csv_name: str, body: bytes, test: bool = False) -> Path:
        root = write_kaggle(tmp / "kaggle", images, np.asarray(labels), test_images=images if test else None)
        (root / csv_name).write_bytes(body)
        return root

    def h5(tmp: Path, body: bytes) -> Path:
        root = write_h5(tmp / "h5", {"train": (images, np.asarray(labels))})
        (root / META).write_bytes(body)
        return root

    splits = ["train" if index % 2 else "valid" for index in range(len(ids))]
    slides = [f"tumor_{n:03d}" if label else f"normal_{n:03d}" for n, label in enumerate(labels)]
    words = ["Tumor" if label else "normal" for label in labels]
    patch_slides = {str(index): f"camelyon16_slide_{index % 3}" for index in range(len(ids))}
    return [
        CsvEntry("train_labels.csv", "id", "label", dict(zip(ids, labels)), "0" if labels[0] else "1",
                 lambda tmp, body: kaggle(tmp, "train_labels.csv", body), _kaggle_labels),
        CsvEntry("test_labels.csv", "id", "label", dict(zip(ids, labels)), "0" if labels[0] else "1",
                 lambda tmp, body: kaggle(tmp, "test_labels.csv", body, test=True), _kaggle_test_labels),
        CsvEntry("splits.csv", "id", "split", dict(zip(ids, splits)), "other",
                 lambda tmp, body: kaggle(tmp, "splits.csv", body), _kaggle_splits),
        CsvEntry("sample_submission.csv", "id", "label", dict.fromkeys(ids, 0), "0.5",
                 lambda tmp, body: kaggle(tmp, "sample_submission.csv", body), _template),
        CsvEntry("reference.csv", "slide", "label", dict(zip(slides, words)), "normal" if labels[0] else "Tumor",
                 lambda tmp, body: _write(tmp / "reference.csv", body), _slide_reference),
        *(CsvEntry(META, "", "wsi", patch_slides, "camelyon16_slide_9", h5, read, key=key, rows=True)
          for key, read in (("meta.csv: k-fold groups", _meta_groups), ("meta.csv: data convert", _meta_converted),
                            ("meta.csv: data info", _meta_info))),
    ]


def _write(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    return path.parent


CSV_ENTRY_NAMES = ["train_labels.csv", "test_labels.csv", "splits.csv", "sample_submission.csv", "reference.csv",
                   "meta.csv: k-fold groups", "meta.csv: data convert", "meta.csv: data info"]


def _expected(entry: CsvEntry) -> dict[str, object]:
    if entry.key == "meta.csv: data info":  # patches per slide, by slide id
        return {slide: list(entry.values.values()).count(slide) for slide in sorted(set(entry.values.values()))}
    if entry.name == "sample_submission.csv":
        return dict.fromkeys(entry.values)  # ids only, in file order
    if entry.name == "reference.csv":
        return {key: 1 if value == "Tumor" else 0 for key, value in entry.values.items()}
    return entry.values


@pytest.mark.parametrize("quirk", list(CSV_QUIRKS))
@pytest.mark.parametrize("entry_name", CSV_ENTRY_NAMES)
def test_every_id_csv_reader_reads_every_unambiguous_quirk(tmp_path, patches, entry_name, quirk):
    entry = next(item for item in _csv_entries(patches) if item.key == entry_name)
    if entry.rows and quirk in ROW_CSV_QUIRKS_NOT_APPLYING:
        pytest.skip(f"{quirk} is a quirk of an id column; {entry.name}'s rows are its patches in order")
    body = CSV_QUIRKS[quirk](entry.id_name, entry.value_name, list(entry.values.items()))
    root = entry.setup(tmp_path, body)
    read = entry.read(root)
    expected = _expected(entry)
    assert read == expected
    assert list(read) == list(expected) or entry.name in ("train_labels.csv", "splits.csv")  # file order kept


@pytest.mark.parametrize("case", list(CSV_REFUSED))
@pytest.mark.parametrize("entry_name", CSV_ENTRY_NAMES)
def test_every_id_csv_reader_refuses_the_same_rows_with_file_and_line(tmp_path, patches, entry_name, case):
    entry = next(item for item in _csv_entries(patches) if item.key == entry_name)
    write, words = CSV_REFUSED[case]
    words = ROW_CSV_REFUSED_WORDS.get(case, words) if entry.rows else words
    root = entry.setup(tmp_path, write(entry.id_name, entry.value_name, list(entry.values.items()), entry.other))
    if entry.name in HEADERLESS_ALLOWED and case == "no-header":  # Camelyon16's reference.csv has no header
        expected = {key: 1 if str(value).lower() in ("tumor", "1") else 0 for key, value in entry.values.items()}
        assert dict(entry.read(root)) == expected
        return
    with pytest.raises(DataError) as error:
        entry.read(root)
    message = str(error.value)
    assert entry.name in message and words in message and "\n" not in message


def test_quirks_are_said_as_notes_by_the_commands(tmp_path, patches):
    """What was read unusually reaches the reader's notes (which `data info`, `train`, `convert` print)."""
    entry = _csv_entries(patches)[0]
    body = CSV_QUIRKS["pandas-index"]("id", "label", [(f"train/{key}.tif", value) for key, value in entry.values.items()])
    root = entry.setup(tmp_path, b"\xef\xbb\xbf" + body)
    notes = " | ".join(open_split(root, "train", valid_fraction=0.25).notes)
    for said in ("byte-order mark", "unnamed index column", "ids carry a folder", "ids carry the file suffix"):
        assert said in notes


# ----------------------------------------------------------------------------------------------
# Kind 2: folder listings. Each case builds a tree below `root` (and maybe beside it) and says which files
# a listing must return: `names` (paths below root), `outside` (those reached only through a link leading out).


def _tif(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="TIFF")


def _tree_symlinked_subfolder(base, images):  # the issue: 20 patches, half behind a symlinked sub-folder
    for n in range(10):
        _tif(base / "root" / "real" / f"r{n:02d}.tif", images[n % len(images)])
        _tif(base / "elsewhere" / f"s{n:02d}.tif", images[(n + 3) % len(images)])
    (base / "root" / "linked").symlink_to(base / "elsewhere", target_is_directory=True)
    names = [f"linked/s{n:02d}.tif" for n in range(10)] + [f"real/r{n:02d}.tif" for n in range(10)]
    return names, [name for name in names if name.startswith("linked/")]


def _tree_symlinked_file(base, images):
    _tif(base / "root" / "a.tif", images[0])
    _tif(base / "elsewhere" / "b.tif", images[1])
    (base / "root" / "b.tif").symlink_to(base / "elsewhere" / "b.tif")
    return ["a.tif", "b.tif"], ["b.tif"]


def _tree_symlink_loop(base, images):
    _tif(base / "root" / "a.tif", images[0])
    _tif(base / "root" / "sub" / "b.tif", images[1])
    (base / "root" / "sub" / "up").symlink_to(base / "root", target_is_directory=True)  # a loop
    return ["a.tif", "sub/b.tif"], []


def _tree_link_above_the_root(base, images):  # tester 1 item 1: `ln -s .. train/1/up` listed train/0 as label 1
    _tif(base / "root" / "a.tif", images[0])
    _tif(base / "root" / "sub" / "b.tif", images[1])
    _tif(base / "sibling" / "c.tif", images[2])  # beside the root: another class folder, another split
    (base / "root" / "up").symlink_to(base, target_is_directory=True)
    (base / "root" / "sub" / "top").symlink_to(base / "root", target_is_directory=True)
    return ["a.tif", "sub/b.tif"], []


def _tree_folder_reached_twice(base, images):
    _tif(base / "root" / "a" / "x.tif", images[0])
    (base / "root" / "b").symlink_to(base / "root" / "a", target_is_directory=True)
    return ["a/x.tif"], []


def _tree_os_junk(base, images):
    _tif(base / "root" / "a.tif", images[0])
    for junk in (".DS_Store", "Thumbs.db", "desktop.ini", "._a.tif"):
        (base / "root" / junk).write_bytes(b"\x00\x05\x16\x07 not an image")
    _tif(base / "root" / "__MACOSX" / "b.tif", images[1])  # a macOS zip's resource copies
    return ["a.tif"], []


def _tree_hidden(base, images):
    _tif(base / "root" / "a.tif", images[0])
    _tif(base / "root" / ".b.tif", images[1])
    _tif(base / "root" / ".ipynb_checkpoints" / "a-checkpoint.tif", images[0])  # Jupyter's copies
    return ["a.tif"], []


def _tree_broken_link(base, images):
    _tif(base / "root" / "a.tif", images[0])
    (base / "root" / "gone.tif").symlink_to(base / "nowhere.tif")
    return ["a.tif"], []


def _tree_suffix_case(base, images):
    _tif(base / "root" / "A.TIF", images[0])
    (base / "root" / "notes.txt").write_text("not an image")
    return ["A.TIF"], []


TREES = {name[len("_tree_"):]: function for name, function in globals().items() if name.startswith("_tree_")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny course baseline: enough to run predict and the service's model card."""
    from pcamlab.config import ModelConfig, RunConfig
    from pcamlab.models import build_model
    from pcamlab.runtime import InputContract, save_checkpoint

    config = RunConfig(model=ModelConfig(name="baseline", options={"filters": [4, 8], "dense_units": 8}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config.model).eval()
    path = tmp_path_factory.mktemp("checkpoint") / "best.safetensors"
    return save_checkpoint(path, model, config, InputContract(threshold=0.5), {"epoch": 1})


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from pcamlab.runtime import load_predictor

    return load_predictor(checkpoint)


def _walker(root, predictor):
    return walk_files(root, IMAGE_SUFFIXES).files, root


def _folders_reader(root, predictor):
    data = root.parent / "dataset"
    (data / "train").mkdir(parents=True)
    (data / "train" / "1").symlink_to(root, target_is_directory=True)  # the tree is class folder 1
    return open_split(data, "train", "folders").files, data / "train" / "1"


def _kaggle_test(root, predictor):
    images, labels = sample_patches(2, "train", seed=9)
    data = write_kaggle(root.parent / "kaggle", images, labels)  # train/ and train_labels.csv: the layout
    (data / "test").symlink_to(root, target_is_directory=True)
    return open_split(data, "test", "kaggle").files, data / "test"


def _predict(root, predictor):
    from pcamlab.deploy import predict_files

    return [Path(name) for name in predict_files(predictor, [root]).names], root


def _slide_batch(root, predictor):
    from pcamlab.slide.batch import slide_files

    return slide_files([root]), root


def _service_slides(root, predictor):
    from pcamlab.serve import slides

    original = slides._opens
    slides._opens = lambda path: True  # listing only: these TIFFs are patches, not pyramids
    try:
        return [root / name for name in slides.list_slides(root)], root
    finally:
        slides._opens = original


LISTING_ENTRY_POINTS = {  # name: (list(root, predictor) -> (paths, base they are below), recursive, inside_root)
    "walker": (_walker, True, False),
    "folders reader": (_folders_reader, True, False),
    "kaggle test split": (_kaggle_test, False, False),
    "predict": (_predict, True, False),
    "slide batch": (_slide_batch, True, False),
    "service slide root": (_service_slides, True, True),
}


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("entry_name", list(LISTING_ENTRY_POINTS))
def test_every_command_lists_files_by_the_same_rules(tmp_path, patches, predictor, entry_name, tree):
    names, outside = TREES[tree](tmp_path, patches[0])
    listing, recursive, inside_root = LISTING_ENTRY_POINTS[entry_name]
    expected = [name for name in names if (recursive or "/" not in name) and not (inside_root and name in outside)]
    if not expected:
        pytest.skip(f"{tree} has no file that {entry_name} lists at its top level")
    paths, base = listing(tmp_path / "root", predictor)
    assert sorted(Path(path).relative_to(base).as_posix() for path in paths) == sorted(expected)


def test_predict_on_a_folder_with_a_symlinked_subfolder_predicts_all_20(tmp_path, patches, checkpoint, capsys):
    """Issue 22: 10 of 20 patches were predicted (predict did not follow the link the readers followed)."""
    from pcamlab.cli.main import main

    _tree_symlinked_subfolder(tmp_path, patches[0])
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(checkpoint), str(tmp_path / "root"), "--out", str(out)]) == 0
    assert "20 patches" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 1 + 20


def test_the_walker_says_what_it_skipped(tmp_path, patches):
    _tree_symlink_loop(tmp_path, patches[0])
    _tif(tmp_path / "root" / ".hidden.tif", patches[0][0])
    (tmp_path / "root" / "gone.tif").symlink_to(tmp_path / "nowhere.tif")
    notes = " | ".join(walk_files(tmp_path / "root", IMAGE_SUFFIXES).notes)
    assert "symbolic link loop" in notes and "1 hidden file skipped" in notes and "leads nowhere" in notes


def test_predict_kaggle_lists_test_flat_with_the_same_notes_as_predict(tmp_path, patches, checkpoint, capsys):
    """Tester 1 item 6: `predict --format kaggle` printed none of the walker's notes that plain `predict` prints
    (hidden file, dangling link) and read test/sub/zz.tif although test/ is flat (as the Kaggle reader reads it)."""
    from pcamlab.cli.main import main

    test = tmp_path / "test"
    _tif(test / "aa.tif", patches[0][0])
    _tif(test / "bb.tif", patches[0][1])
    _tif(test / ".hidden.tif", patches[0][2])
    _tif(test / "sub" / "zz.tif", patches[0][3])
    (test / "dangling.tif").symlink_to(tmp_path / "nowhere.tif")
    out = tmp_path / "submission.csv"
    assert main(["predict", str(checkpoint), str(test), "--format", "kaggle", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [line.split(",")[0] for line in out.read_text().splitlines()] == ["id", "aa", "bb"]
    assert "1 hidden file skipped" in printed and "leads nowhere" in printed
    assert "1 sub-folder of" in printed and "sub/" in printed and "read flat" in printed
    assert main(["predict", str(checkpoint), str(test), "--out", str(tmp_path / "plain.csv")]) == 0
    plain = capsys.readouterr().out
    assert "1 hidden file skipped" in plain and "leads nowhere" in plain  # the same walker, the same notes
    assert "sub-folder" not in plain  # plain predict reads folders at any depth


def test_os_junk_is_not_counted_as_hidden(tmp_path, patches):
    """Tester 1 item 9: AppleDouble ._x.jpg (OS junk) was counted as a hidden file to rename."""
    root = tmp_path / "root"
    _tif(root / "a.tif", patches[0][0])
    (root / "._a.tif").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "._x.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    listing = walk_files(root, IMAGE_SUFFIXES)
    assert [path.name for path in listing.files] == ["a.tif"] and listing.notes == []


def test_a_folder_of_hidden_files_only_says_them_in_its_error(tmp_path, patches, predictor):
    """Tester 1 item 9: a folder holding only .h.jpg said "holds no image file" without the hidden file."""
    from pcamlab.deploy import predict_files

    folder = tmp_path / "only_hidden"
    folder.mkdir()
    Image.fromarray(patches[0][0]).save(folder / ".h.jpg", format="JPEG")
    with pytest.raises(DataError, match=r"holds no image file .*\(1 hidden file skipped: \.h\.jpg; rename it to "
                                        r"include it\)"):
        predict_files(predictor, [folder])
    data = write_kaggle(tmp_path / "kaggle", *sample_patches(2, "train", seed=9))  # Kaggle test/ of hidden files only
    (data / "test").mkdir()
    _tif(data / "test" / ".h.tif", patches[0][0])
    with pytest.raises(DataError, match=r"no \.tif images \(1 hidden file skipped: \.h\.tif; rename it"):
        open_split(data, "test", "kaggle")
    classes = tmp_path / "classes" / "train"  # class folders
    _tif(classes / "0" / "a.tif", patches[0][0])
    _tif(classes / "1" / ".b.tif", patches[0][1])
    with pytest.raises(DataError, match=r"has no images \(1 hidden file skipped: \.b\.tif; rename it"):
        open_split(tmp_path / "classes", "train", "folders")


def test_id_notes_count_distinct_ids_and_show_a_real_cell(tmp_path):
    """Tester 1 item 9: 1000 ids and one repeated row gave "1001 ids carry the file suffix", and the folder note
    said "e.g. train/<id>.tif" for a test/ template."""
    rows = [f"test/id{n}.tif,0" for n in range(1000)]
    path = tmp_path / "sample_submission.csv"
    path.write_text("\n".join(["id,label", *rows, rows[0]]) + "\n")
    notes = " | ".join(read_id_csv(path, [Column("label", required=False, parse=str)]).notes)
    assert "1000 ids carry the file suffix (e.g. test/id0.tif)" in notes
    assert "1000 ids carry a folder (e.g. test/id0.tif)" in notes and "train/" not in notes
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\na,1.0\na,1.0\nb,0.0\n")
    from pcamlab.data.idcsv import binary_label

    notes = " | ".join(read_id_csv(labels, [Column("label", parse=binary_label)]).notes)
    assert "labels.csv: 2 " in notes and "labels.csv: 3 " not in notes  # 1.0 labels: counted per id too


def test_class_folders_with_links_back_up_keep_every_label(tmp_path, patches, capsys):
    """Tester 1 item 1: `ln -s .. train/1/up` read train/0's patches again as label 1 (and `../..` pulled
    valid/ into train); a link back up is a loop: listed once, with a note, whatever the command."""
    from pcamlab.cli.main import main

    images = patches[0]  # 8 different patches
    for label in (0, 1):
        for n in range(2):
            _tif(tmp_path / "L" / "train" / str(label) / f"{label}{n}.tif", images[label * 2 + n])
            _tif(tmp_path / "L" / "valid" / str(label) / f"v{label}{n}.tif", images[4 + label * 2 + n])
    (tmp_path / "L" / "train" / "1" / "up").symlink_to(Path(".."), target_is_directory=True)
    (tmp_path / "L" / "train" / "1" / "root").symlink_to(Path("../.."), target_is_directory=True)
    reader = open_split(tmp_path / "L", "train", "folders")
    assert reader.class_counts() == {0: 2, 1: 2}
    assert any("symbolic link loop" in note for note in reader.notes)
    assert main(["data", "info", str(tmp_path / "L")]) == 0
    out = capsys.readouterr().out
    assert "different labels" not in out and "leakage" not in out and "symbolic link loop" in out


def test_a_file_linked_under_both_labels_is_refused(tmp_path, patches, capsys):
    """Tester 1 item 1: a patch reachable under 0/ and 1/ (a link from one class folder into the other)."""
    from pcamlab.cli.main import main

    for label in (0, 1):
        _tif(tmp_path / "L" / "train" / str(label) / f"{label}.tif", patches[0][label])
    (tmp_path / "L" / "train" / "1" / "zero").symlink_to(tmp_path / "L" / "train" / "0", target_is_directory=True)
    with pytest.raises(DataError, match="both label 0 and label 1.*remove the link"):
        open_split(tmp_path / "L", "train", "folders")
    assert main(["data", "convert", str(tmp_path / "L"), str(tmp_path / "k"), "--to", "kaggle"]) == 2
    assert "both label 0 and label 1" in capsys.readouterr().err and not (tmp_path / "k").exists()


# ----------------------------------------------------------------------------------------------
# Kind 3: run files written by earlier versions: bare NaN/Infinity (not JSON) and keys added since.

OLD_METRICS = '{"n": 200, "roc_auc": NaN, "accuracy": 0.9, "log_loss": Infinity, "threshold": 0.5}'  # no pr_auc, ece
OLD_SUMMARY = '{"model": "baseline", "best_val_auc": NaN, "epochs": 3}'
OLD_HISTORY = "epoch,train_loss,val_loss,val_auc\n1,0.7,nan,nan\n2,0.6,inf,0.81\n"
NOT_SHOWN = ("nan", "NaN", "inf", "Infinity", "None")


@pytest.fixture()
def old_run(tmp_path):
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "metrics.json").write_text(OLD_METRICS)
    (run / "summary.json").write_text(OLD_SUMMARY)
    (run / "history.csv").write_text(OLD_HISTORY)
    return run


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[A-Za-z]+", text))


def test_compare_shows_undefined_numbers_as_undefined(old_run, capsys):
    from pcamlab.cli.main import main

    new_run = old_run.parent / "new-run"  # a run of today, so that the columns are shown
    new_run.mkdir()
    (new_run / "metrics.json").write_text('{"n": 200, "roc_auc": 0.93, "accuracy": 0.9, "log_loss": 0.3}')
    assert main(["compare", str(old_run), str(new_run)]) == 0
    out = capsys.readouterr().out
    assert "roc_auc" in out and UNDEFINED in out and not _words(out) & set(NOT_SHOWN)
    assert main(["compare", str(old_run), str(new_run), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert UNDEFINED in out and not _words(out) & set(NOT_SHOWN)
    assert main(["compare", str(old_run), str(new_run), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert not _words(out) & set(NOT_SHOWN)  # CSV: an empty cell


def test_report_shows_undefined_numbers_as_undefined(old_run):
    import re

    from pcamlab.evaluate.report import write_report

    page = write_report(old_run).read_text()
    text = re.sub(r"<[^>]+>|data:image/png;base64,[A-Za-z0-9+/=]+", " ", page)
    assert UNDEFINED in text and not _words(text) & set(NOT_SHOWN)


def test_tune_report_cells_show_undefined_numbers_as_undefined():
    from pcamlab.tune.report import _cell

    values = json.loads('{"a": NaN, "b": Infinity, "c": -Infinity}')
    assert {_cell(value) for value in values.values()} == {UNDEFINED}
    assert {_cell(value, precise=True) for value in values.values()} == {""}


def test_the_service_card_shows_undefined_metrics_as_null(tmp_path, predictor):
    from pcamlab.serve.model import ServedModel

    predictor.metadata = {**(getattr(predictor, "metadata", None) or {}), "val_auc": math.nan, "val_loss": math.inf}
    card = ServedModel(predictor, tmp_path / "none.safetensors").card()
    text = json.dumps(card, allow_nan=False)  # a bare NaN would make the HTTP response fail
    assert card["validation"]["val_auc"] is None and card["validation"]["val_loss"] is None and "NaN" not in text


def test_run_file_reader_reads_old_files_like_new_ones(old_run):
    from pcamlab.data.runfiles import read_json, read_run_csv, shown

    metrics = read_json(old_run / "metrics.json")
    assert metrics["roc_auc"] is None and metrics["log_loss"] is None and metrics.get("ece") is None
    history = read_run_csv(old_run / "history.csv")
    assert [row["val_auc"] for row in history] == [None, 0.81] and history[1]["val_loss"] is None
    assert shown(metrics["roc_auc"]) == UNDEFINED and shown(math.nan) == UNDEFINED and shown(0.5) == "0.5000"
    (old_run / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="must hold a JSON object"):
        read_json(old_run / "bad.json")


# ----------------------------------------------------------------------------------------------
# data convert stops at a chunk boundary on SIGINT/SIGTERM and leaves nothing behind.


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("to", ["h5", "folders", "kaggle"])
def test_convert_stopped_by_a_signal_leaves_no_temporary_folder(tmp_path, signum, to):
    from pcamlab.data.convert import convert

    sent = []

    def progress(done, total):
        if not sent:
            sent.append(done)
            os.kill(os.getpid(), signum)  # a real signal, handled by stopping's flag inside safe_points

    restore = stopping.install()
    try:
        with pytest.raises(stopping.Stopped) as stopped:
            convert("sample", tmp_path / "out", to=to, progress=progress, splits=["valid"])
    finally:
        restore()
    assert stopped.value.signum == signum and sent == [200]  # 200 valid patches: one chunk, then the stop check
    assert list(tmp_path.iterdir()) == []  # no destination, no temporary folder


def test_a_killed_writers_temporaries_are_removed_with_a_note_by_the_next_writer(tmp_path, patches, checkpoint,
                                                                                  capsys):
    """Tester 1 item 7: kill -9 left `.p.csv.2vsxwrk3.tmp` and `cj2.tmp-20855-51b86c`; reruns neither removed nor
    mentioned them. Every atomic writer goes through pcamlab.fileio, which removes its own dead temporaries."""
    import subprocess
    import sys

    from pcamlab.cli.main import main
    from pcamlab.fileio import remove_stale_temporaries, write_text_atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is no longer running
    alive = os.getppid()  # a running process: its temporaries are left alone
    (tmp_path / f".p.csv.{dead.pid}-abc123.tmp").write_text("half")
    (tmp_path / f".p.csv.{alive}-abc123.tmp").write_text("still being written")
    (tmp_path / f".other.csv.{dead.pid}-abc123.tmp").write_text("not p.csv's")
    (tmp_path / f"cj2.tmp-{dead.pid}-51b86c").mkdir()
    (tmp_path / f"cj2.tmp-{dead.pid}-51b86c" / "x.png").write_bytes(b"x" * 10)
    write_text_atomic(tmp_path / "p.csv", "id,label\n")
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted([f".other.csv.{dead.pid}-abc123.tmp", f".p.csv.{alive}-abc123.tmp",
                           f"cj2.tmp-{dead.pid}-51b86c", "p.csv"])
    assert remove_stale_temporaries(tmp_path / "cj2") == [tmp_path / f"cj2.tmp-{dead.pid}-51b86c"]
    # the CLI says it: a predict rerun after its first try was killed
    folder = tmp_path / "patches"
    for index, image in enumerate(patches[0][:2]):
        _tif(folder / f"{index}.tif", image)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f".p.csv.{dead.pid}-zz.tmp").write_text("half")
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "out" / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert f"note: removed {tmp_path / 'out' / f'.p.csv.{dead.pid}-zz.tmp'}" in err and "no longer running" in err
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["p.csv"]
