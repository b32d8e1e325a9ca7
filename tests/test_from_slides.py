"""``data from-slides``: PCam's layout cut from annotated slides, labelled by PCam's rule, split by slide, resumable."""

from __future__ import annotations

import csv
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pcamlab import stopping
from pcamlab.cli.main import main
from pcamlab.errors import DataError, RunFolderError
from pcamlab.slide.cohort_synthetic import make_cohort
from pcamlab.slide.dataset import FromSlidesOptions, dataset_from_slides, plan_dataset
from pcamlab.slide.reader import open_slide
from pcamlab.slide.reference import read_reference
from pcamlab.slide.synthetic import CELL_SIZE, NORMAL, TUMOUR, read_truth

H5 = "camelyonpatch_level_2_split_{split}_{kind}.h5"
META = "camelyonpatch_level_2_split_{split}_meta.csv"
TINY_TRAIN = ["--no-progress", "--set", "model.name=baseline", "--set",
              "model.options={filters: [8, 16], dense_units: 16}", "--set", "train.epochs=1",
              "--set", "train.batch_size=8"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort") / "c", normal_slides=2, tumour_slides=2, split="train",
                       seed=1, width=2304, height=1920, lesions_per_slide=(2, 3))


def _meta(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def _options(**changes):
    return FromSlidesOptions(**{"max_patches_per_slide": 60, "valid_fraction": 0.5, "seed": 0, **changes})


@pytest.fixture(scope="module")
def dataset(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "data"
    result = dataset_from_slides(cohort.slides, out, annotations=cohort.annotations_dir, options=_options(),
                                 reference=read_reference(cohort.reference_csv))
    return result


def test_pcam_h5_layout_and_meta_csvs(dataset):
    assert set(dataset.counts) == {"train", "valid"}
    for split, counts in dataset.counts.items():
        with h5py.File(dataset.path / H5.format(split=split, kind="x"), "r") as x_file, \
                h5py.File(dataset.path / H5.format(split=split, kind="y"), "r") as y_file:
            x, y = x_file["x"], y_file["y"]
            assert x.dtype == np.uint8 and x.shape == (counts[0] + counts[1], 96, 96, 3) and x.chunks == (1, 96, 96, 3)
            assert x.fletcher32 and y.dtype == np.uint8 and y.shape == (len(x), 1, 1, 1)
            labels = y[:].ravel()
        assert counts[1] > 0 and counts[0] == counts[1]  # balanced per split, as PCam
        rows = _meta(dataset.path / META.format(split=split))
        assert rows[0] == ["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"]
        assert len(rows) == len(labels) + 1
        assert [row[4] == "True" for row in rows[1:]] == [bool(label) for label in labels]
        assert all(row[3] == "True" for row in rows[1:] if row[4] == "True")  # centre tumour => tumour patch


def test_labels_follow_the_lesion_truth_and_pixels_are_the_slides(dataset, cohort):
    """The synthetic slides' cells are the patch grid: label 1 exactly on the cells the lesions made tumour."""
    slides = {path.stem: path for path in cohort.slides}
    with h5py.File(dataset.path / H5.format(split="train", kind="x"), "r") as file:
        images = file["x"]
        rows = _meta(dataset.path / META.format(split="train"))[1:]
        truths = {name: read_truth(path.with_name(f"{name}.truth.png")) for name, path in slides.items()}
        for index, (_, coord_y, coord_x, _, centre, wsi) in enumerate(rows):
            x, y = int(coord_x), int(coord_y)
            assert x % CELL_SIZE == 0 and y % CELL_SIZE == 0
            cell = truths[wsi][y // CELL_SIZE, x // CELL_SIZE]
            assert cell == (TUMOUR if centre == "True" else NORMAL)
            if index < 6:
                with open_slide(slides[wsi]) as slide:
                    assert np.array_equal(images[index], slide.read_region((x, y), 0, (96, 96)))


def test_splits_are_by_slide_and_listed(dataset):
    seen = {}
    for split in dataset.counts:
        for row in _meta(dataset.path / META.format(split=split))[1:]:
            seen.setdefault(row[5], set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())
    listed = {row[0]: row[1] for row in _meta(dataset.path / "slides.csv")[1:]}
    assert {slide: splits.pop() for slide, splits in seen.items()} == {k: v for k, v in listed.items() if k in seen}
    assert {split for split in listed.values()} == {"train", "valid"}
    # one tumour and one normal slide in each split (drawn separately per kind of slide)
    assert sorted(listed) == ["normal_001", "normal_002", "tumor_001", "tumor_002"]


def test_the_dataset_trains(dataset, tmp_path):
    assert main(["train", "--data", str(dataset.path), "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 0
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_resume_after_a_kill_gives_the_same_dataset(cohort, dataset, tmp_path):
    out = tmp_path / "data"
    plan = plan_dataset(cohort.slides, annotations=cohort.annotations_dir, options=_options(),
                        reference=read_reference(cohort.reference_csv))
    first = len(plan.slides[0].label)

    def kill_after_first_slide(done, total):
        if done >= first:  # SIGTERM as the first slide is finished
            stopping.request()

    with pytest.raises(stopping.Stopped):
        dataset_from_slides(cohort.slides, out, annotations=cohort.annotations_dir, options=_options(),
                            reference=read_reference(cohort.reference_csv), progress=kill_after_first_slide)
    stopping.clear()
    assert not out.exists()
    done = sorted(path.name for path in (tmp_path / "data.partial").glob("*.done.json"))
    assert 1 <= len(done) < len(cohort.slides)
    with pytest.raises(RunFolderError, match="unfinished run with other"):
        dataset_from_slides(cohort.slides, out, annotations=cohort.annotations_dir, options=_options(seed=9))
    # what kill -9 leaves: a half-written temporary of a file the resumed run may never write again
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "data.partial" / f".slides.csv.{int(dead.stdout)}-abc123.tmp"
    leftover.write_bytes(b"half")
    seen_at_plan = []
    result = dataset_from_slides(cohort.slides, out, annotations=cohort.annotations_dir, options=_options(),
                                 reference=read_reference(cohort.reference_csv),
                                 on_plan=lambda plan, already: seen_at_plan.append(leftover.exists()))
    assert seen_at_plan == [False]  # removed when the resume began, not only with the folder at the end
    assert result.resumed_slides == len(done) and not (tmp_path / "data.partial").exists()
    for split in result.counts:
        for kind in "xy":
            with h5py.File(out / H5.format(split=split, kind=kind), "r") as new, \
                    h5py.File(dataset.path / H5.format(split=split, kind=kind), "r") as old:
                assert np.array_equal(new[kind][:], old[kind][:])
    with pytest.raises(RunFolderError, match="exists"):
        dataset_from_slides(cohort.slides, out, annotations=cohort.annotations_dir, options=_options())


def test_split_csv_and_normal_slides(cohort, tmp_path):
    mapping = {"tumor_001": "train", "normal_001": "train", "tumor_002": "test", "normal_002": "valid"}
    plan = plan_dataset(cohort.slides, annotations=cohort.annotations_dir, options=_options(), split_map=mapping)
    assert {slide.slide_id: slide.split for slide in plan.slides} == mapping
    normal = [slide for slide in plan.slides if slide.slide_id.startswith("normal")]
    assert all(slide.annotation is None and slide.tumour_candidates == 0 and slide.counts[1] == 0 for slide in normal)
    assert any("valid has no tumour patches" in note for note in plan.notes)
    with pytest.raises(DataError, match="no split for 1 slide"):
        plan_dataset(cohort.slides, annotations=cohort.annotations_dir, options=_options(),
                     split_map={k: v for k, v in mapping.items() if k != "tumor_002"})


def test_tumour_slide_without_annotations_is_an_error_with_a_reference(cohort, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    plan = plan_dataset(cohort.slides, annotations=empty, options=_options(balance=False))
    assert all(slide.annotation is None and slide.counts[1] == 0 for slide in plan.slides)  # all normal slides
    with pytest.raises(DataError, match="'tumor_001' is a tumour slide in the reference CSV but has no annotation"):
        plan_dataset(cohort.slides, annotations=empty, options=_options(),
                     reference=read_reference(cohort.reference_csv))


def test_min_tumour_fraction_and_resampling(cohort, tmp_path):
    strict = plan_dataset(cohort.slides[2:], annotations=cohort.annotations_dir, options=_options(
        min_tumour_fraction=0.99, balance=False))
    loose = plan_dataset(cohort.slides[2:], annotations=cohort.annotations_dir, options=_options(balance=False))
    assert sum(s.tumour_candidates for s in strict.slides) < sum(s.tumour_candidates for s in loose.slides)
    # patches at 1.5 um/px: no level within 5%, read from level 0 and resampled
    coarse = dataset_from_slides(cohort.slides[2:], tmp_path / "coarse", annotations=cohort.annotations_dir,
                                 options=_options(mpp=1.5, valid_fraction=0.0))
    with h5py.File(coarse.path / H5.format(split="train", kind="x"), "r") as file:
        assert file["x"].shape[1:] == (96, 96, 3) and len(file["x"]) > 0
    assert coarse.counts["train"][1] > 0


def test_bad_annotations_leave_nothing_written(cohort, tmp_path, capsys):
    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / "tumor_001.xml").write_text('{"type": "FeatureCollection"}')
    out = tmp_path / "data"
    code = main(["data", "from-slides", *map(str, cohort.slides), "--annotations", str(folder), "--out", str(out)])
    assert code == 2
    assert "named .xml" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "data.partial").exists()


def test_cli_prints_the_plan_then_writes(cohort, tmp_path, capsys):
    out = tmp_path / "data"
    code = main(["data", "from-slides", *map(str, cohort.slides), "--annotations", str(cohort.annotations_dir),
                 "--reference", str(cohort.reference_csv), "--out", str(out), "--max-per-slide", "40",
                 "--valid-fraction", "0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.index("plan: 4 slides") < printed.index("wrote ")
    assert "none: normal slide" in printed and "tumor_001.xml" in printed
    assert (out / "slides.csv").is_file() and (out / "from_slides.json").is_file()
