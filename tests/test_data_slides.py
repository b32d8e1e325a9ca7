"""``data info`` on a dataset cut from slides: patches per slide and label, and slides shared by two splits."""

from __future__ import annotations

import csv
import shutil

import pytest
from fixtures_data import sample_patches, write_h5

from pcamlab.cli.main import main
from pcamlab.data.info import dataset_info
from pcamlab.data.readers import H5_META_HEADER, meta_csv_path
from pcamlab.data.slide_counts import slide_table
from pcamlab.slide.cohort_synthetic import make_cohort
from pcamlab.slide.dataset import FromSlidesOptions, dataset_from_slides
from pcamlab.slide.reference import read_reference


@pytest.fixture(scope="module")
def from_slides(tmp_path_factory):
    """A tiny ``data from-slides`` output: 4 synthetic slides, 2 in train and 2 in valid (as tests/test_from_slides.py)."""
    base = tmp_path_factory.mktemp("from-slides")
    cohort = make_cohort(base / "cohort", normal_slides=2, tumour_slides=2, split="train", seed=1, width=2304,
                         height=1920, lesions_per_slide=(2, 3))
    options = FromSlidesOptions(max_patches_per_slide=60, valid_fraction=0.5, seed=0)
    return dataset_from_slides(cohort.slides, base / "data", annotations=cohort.annotations_dir, options=options,
                               reference=read_reference(cohort.reference_csv)).path


def _slides_csv(root):
    """What from-slides says it cut: {(split, slide): (label 0, label 1)}."""
    with open(root / "slides.csv", newline="") as file:
        return {(row["split"], row["slide"]): (int(row["label_0"]), int(row["label_1"])) for row in csv.DictReader(file)}


def test_data_info_prints_patches_per_slide_and_that_no_slide_is_in_two_splits(from_slides, capsys):
    assert main(["data", "info", str(from_slides)]) == 0
    out = capsys.readouterr().out
    cut = _slides_csv(from_slides)
    assert len(cut) == 4 and {split for split, _ in cut} == {"train", "valid"}
    for (split, slide), (zeros, ones) in cut.items():  # every slide's row, with the counts from-slides wrote
        assert [split, slide, str(zeros), str(ones)] in [line.split() for line in out.splitlines()]
    assert "no slide is in two splits (train, valid)" in out and "leakage" not in out
    info = dataset_info(from_slides)
    counted = {(split, item["slide"]): (item["label_0"], item["label_1"])
               for split, summary in info["slides"]["splits"].items() for item in summary["slides"]}
    assert counted == cut and info["slides"]["shared"] == []


def test_a_slide_in_two_splits_is_leakage_said_in_a_warning(from_slides, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(from_slides, data)
    train_slide = next(slide for split, slide in _slides_csv(data) if split == "train")
    valid_meta = meta_csv_path(data, "valid")
    with open(valid_meta, newline="") as file:
        rows = list(csv.reader(file))
    rows[1][-1] = train_slide  # the first valid patch now comes from a train slide
    valid_meta.write_text("\n".join(",".join(row) for row in rows) + "\n")
    assert main(["data", "info", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"warning: leakage by slide: 1 slide in both 'train' and 'valid' ({train_slide})" in out
    assert "slides in two splits: 1 in train and valid" in out and "no slide is in two splits" not in out
    assert dataset_info(data)["slides"]["shared"] == [{"splits": ["train", "valid"], "slides": [train_slide]}]


def test_a_meta_csv_that_does_not_match_its_split_is_a_warning_not_a_failure(from_slides, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(from_slides, data)
    valid_meta = meta_csv_path(data, "valid")
    valid_meta.write_text("\n".join(valid_meta.read_text().splitlines()[:-1]) + "\n")  # one row short
    assert main(["data", "info", str(data)]) == 0
    out = capsys.readouterr().out
    assert "warning: split 'valid': no per-slide counts: slide meta CSV" in out and "59 rows but the split has 60" in out
    assert "  train  " in out and "no slide is in two splits" not in out  # nothing to compare the train slides with


def test_many_slides_give_a_compact_table_then_and_n_more_slides(tmp_path):
    """30 slides in train, 12 in valid: at most 20 slide rows in all, the rest summed on one line per split."""
    images, labels = sample_patches(84, "train", seed=2)  # 42 of each class, class 0 first
    root = write_h5(tmp_path / "h5", {"train": (images[:60], labels[:60]), "valid": (images[60:], labels[60:])})
    slides = {"train": [f"train_{index % 30:02d}" for index in range(60)], "valid": [f"valid_{index % 12:02d}" for index in range(24)]}
    for split, names in slides.items():
        rows = [list(H5_META_HEADER)] + [[str(index), "0", "0", "False", "False", name] for index, name in enumerate(names)]
        meta_csv_path(root, split).write_text("\n".join(",".join(row) for row in rows) + "\n")
    info = dataset_info(root)
    lines = slide_table(info["slides"])
    slide_rows = [line for line in lines if line.split()[:1] in (["train"], ["valid"]) and line.split()[1].startswith(("train_", "valid_"))]
    assert len(slide_rows) == 20  # 10 a split
    assert any(line.split()[:5] == ["train", "and", "20", "more", "slides"] for line in lines)
    assert any(line.split()[:5] == ["valid", "and", "2", "more", "slides"] for line in lines)
    more = next(line.split() for line in lines if line.split()[:3] == ["train", "and", "20"])
    shown = [line.split() for line in slide_rows if line.split()[0] == "train"]
    assert sum(int(row[2]) + int(row[3]) for row in shown) + int(more[5]) + int(more[6]) == 60  # nothing lost
    assert "  train   30 slides, 2-2 patches each (median 2)" in lines
