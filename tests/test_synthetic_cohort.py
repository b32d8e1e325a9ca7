"""The synthetic cohort: slides of real patches, lesion annotations as ASAP XML and GeoJSON, a reference CSV."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from pcamlab.errors import ConfigError, RunFolderError
from pcamlab.slide.annotations import find_annotation_file, read_annotations
from pcamlab.slide.cohort_synthetic import LESION_CATEGORIES, lesion_cells, make_cohort
from pcamlab.slide.reader import open_slide
from pcamlab.slide.reference import read_reference
from pcamlab.slide.synthetic import CELL_SIZE, GLASS, NORMAL, TUMOUR, read_truth

COLOURS = {("train", "0"): (210, 120, 170), ("train", "1"): (90, 30, 150),
           ("valid", "0"): (120, 170, 210), ("valid", "1"): (30, 90, 60)}


@pytest.fixture(scope="module")
def coloured_patches(tmp_path_factory):
    """A pcam-jpg-like folder whose four pools are flat colours, so a slide shows where each cell came from."""
    root = tmp_path_factory.mktemp("patches")
    for (split, label), colour in COLOURS.items():
        (root / split / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.full((96, 96, 3), colour, np.uint8)).save(root / split / label / f"p{index}.png")
    return root


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("c") / "cohort", normal_slides=1, tumour_slides=3, split="train",
                       seed=3)


def test_layout_reference_and_annotations(cohort):
    assert read_reference(cohort.reference_csv) == {"normal_001": 0, "tumor_001": 1, "tumor_002": 1, "tumor_003": 1}
    assert [path.name for path in cohort.slides] == ["normal_001.tif", "tumor_001.tif", "tumor_002.tif", "tumor_003.tif"]
    assert find_annotation_file(cohort.annotations_dir, "normal_001") is None  # a normal slide has none
    for slide in cohort.slides[1:]:
        with open_slide(slide) as opened:
            assert opened.mpp == pytest.approx((0.972, 0.972)) and opened.level_count > 2
            dimensions = opened.dimensions
        xml = read_annotations(cohort.annotations_dir / f"{slide.stem}.xml", slide_dimensions=dimensions)
        geojson = read_annotations(cohort.annotations_dir / f"{slide.stem}.geojson", slide_dimensions=dimensions)
        assert xml.notes == () and geojson.notes == ()
        assert xml.tumour.area > 0
        assert xml.tumour.symmetric_difference(geojson.tumour).area < 1e-3 * xml.tumour.area
        # the truth grid is the polygons' truth: tumour cells are exactly those whose centre overlaps tumour
        truth = read_truth(slide.with_name(f"{slide.stem}.truth.png"))
        assert np.array_equal(truth == TUMOUR, lesion_cells(xml.tumour, truth.shape))


def test_lesions_cover_the_three_size_categories(cohort):
    with open(cohort.root / "lesions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(cohort.lesions) >= 3
    assert {row["category"] for row in rows} == set(LESION_CATEGORIES)
    for lesion in cohort.lesions:
        low, high = LESION_CATEGORIES[lesion.category]
        assert low * 0.99 <= lesion.diameter_mm <= high * 1.01
    slides_with_lesions = {lesion.slide for lesion in cohort.lesions}
    assert slides_with_lesions == {"tumor_001", "tumor_002", "tumor_003"}


def test_exclusion_regions_are_written_as_camelyon_2_and_geojson_holes(tmp_path):
    cohort = make_cohort(tmp_path / "c", normal_slides=0, tumour_slides=3, split="valid", seed=5,
                         lesions_per_slide=(1, 1))
    excluded = [lesion for lesion in cohort.lesions if lesion.exclusion is not None]
    assert excluded, "the first tumour slide's first lesion is a macro-metastasis, which has an `_2` region"
    lesion = excluded[0]
    text = (cohort.annotations_dir / f"{lesion.slide}.xml").read_text()
    assert 'PartOfGroup="_2"' in text and 'PartOfGroup="_0"' in text  # Camelyon16's test naming
    notes = read_annotations(cohort.annotations_dir / f"{lesion.slide}.geojson")
    assert notes.tumour.area == pytest.approx(lesion.outline.area - lesion.exclusion.area, rel=1e-6)
    assert not notes.tumour.contains(lesion.exclusion.representative_point())


def test_train_slides_use_train_patches_and_test_slides_valid_patches(tmp_path, coloured_patches):
    for split in ("train", "valid"):
        cohort = make_cohort(tmp_path / split, normal_slides=0, tumour_slides=1, split=split, seed=1,
                             patches=coloured_patches, width=2304, height=1920)
        slide = cohort.slides[0]
        truth = read_truth(slide.with_name(f"{slide.stem}.truth.png"))
        with open_slide(slide) as opened:
            for label, name in ((NORMAL, "0"), (TUMOUR, "1"), (GLASS, None)):
                rows, cols = np.nonzero(truth == label)
                assert len(rows), f"no {label} cells"
                for row, col in list(zip(rows, cols))[:5]:
                    pixel = opened.read_region((int(col * CELL_SIZE + 48), int(row * CELL_SIZE + 48)), 0, (1, 1))[0, 0]
                    if name is None:
                        assert pixel.min() > 220  # glass
                    else:
                        assert np.abs(pixel.astype(int) - COLOURS[(split, name)]).max() < 12
        assert (slide.stem.startswith("test_")) == (split == "valid")


def test_same_seed_same_files_and_refusals(tmp_path):
    digests = []
    for name in ("a", "b"):
        cohort = make_cohort(tmp_path / name, normal_slides=1, tumour_slides=1, split="valid", seed=7,
                             width=1536, height=1152)
        digests.append([hashlib.sha256(path.read_bytes()).hexdigest()
                        for path in sorted(cohort.root.rglob("*")) if path.is_file()])
    assert digests[0] == digests[1]
    with pytest.raises(RunFolderError, match="exists and is not empty"):
        make_cohort(tmp_path / "a", normal_slides=1, tumour_slides=0)
    with pytest.raises(ConfigError, match="split must be one of"):
        make_cohort(tmp_path / "x", normal_slides=1, tumour_slides=0, split="test")
    with pytest.raises(ConfigError, match="at least one slide"):
        make_cohort(tmp_path / "x", normal_slides=0, tumour_slides=0)
    assert not (tmp_path / "x").exists()


def test_cli_synth_cohort(tmp_path, capsys):
    from pcamlab.cli.main import main

    out = tmp_path / "cohort"
    assert main(["slide", "synth-cohort", str(out), "--normal", "1", "--tumour", "1", "--width", "1536",
                 "--height", "1152", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 slides (1 normal, 1 tumour)" in printed
    assert (out / "reference.csv").is_file() and len(list((out / "annotations").glob("*.xml"))) == 1
    assert main(["slide", "synth-cohort", str(out)]) == 2  # never overwritten
    tumour = next(slide for slide, label in read_reference(out / "reference.csv").items() if label)
    assert main(["slide", "info", str(out / "slides" / f"{tumour}.tif"), "--annotations",
                 str(out / "annotations" / f"{tumour}.xml"), "--thumbnail", str(tmp_path / "t.png")]) == 0
    printed = capsys.readouterr().out
    assert "annotations" in printed and "  tumour " in printed and "area mm2" in printed
    picture = np.asarray(Image.open(tmp_path / "t.png"))
    assert ((picture == (230, 20, 20)).all(axis=2)).any()  # the tumour outline drawn in red


@pytest.mark.shared
def test_cohort_from_the_real_dev_patches(tmp_path, shared_data):
    cohort = make_cohort(tmp_path / "c", normal_slides=1, tumour_slides=1, split="train", seed=0,
                         patches=shared_data / "pcam-jpg", pool_size=200, width=1536, height=1152)
    assert len(cohort.slides) == 2 and cohort.reference == {"normal_001": 0, "tumor_001": 1}


def test_patch_pools_are_listed_by_the_walker(coloured_patches, tmp_path):
    """sample_pools lists 0/ and 1/ as every command lists image files: hidden files and OS junk are skipped,
    a suffix in capitals counts."""
    from pcamlab.errors import DataError
    from pcamlab.slide.synthetic import sample_pools

    root = tmp_path / "patches"
    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
        for index, name in enumerate(["a.png", "b.JPG"]):
            Image.fromarray(np.full((96, 96, 3), 40 * index + int(label), np.uint8)).save(
                root / label / name, format="PNG" if name.endswith("png") else "JPEG")
    for junk in (".hidden.jpg", "._a.png", ".DS_Store", "Thumbs.db"):  # not images: reading one would fail
        (root / "0" / junk).write_bytes(b"\x00junk")
    normal, tumour = sample_pools(root=root)
    assert normal.shape == (2, 96, 96, 3) and tumour.shape == (2, 96, 96, 3)
    with pytest.raises(DataError, match="no patches in"):
        sample_pools(root=tmp_path / "missing")


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    """kill -9 left `.NAME.*.partial/` beside the cohort forever; the cohort now stages like every output folder."""
    import subprocess
    import sys

    code = ("import os, sys\nfrom pcamlab.fileio import staged_folder\n"
            "with staged_folder(sys.argv[1]) as s:\n    (s / 'half.tif').write_bytes(b'x')\n    os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cohort")], check=False)
    left = list(tmp_path.glob(".cohort.*.partial"))
    assert len(left) == 1  # what kill -9 leaves
    cohort = make_cohort(tmp_path / "cohort", normal_slides=1, tumour_slides=0, split="valid", seed=1,
                         width=1536, height=1152)
    assert cohort.root.is_dir() and not list(tmp_path.glob(".cohort.*.partial"))
