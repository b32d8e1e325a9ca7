"""What a person gives the slide commands, checked (fresh-eyes tester 2's defects, one test per kind):
files the user names are never replaced, odd annotation files and patches fail with one line, pixels that are
not square are refused, a split that got no slide is noted, and every message names the command's flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from slide_formats import synthetic_image, write_slide

from pcamlab.cli.main import cli_message, main
from pcamlab.errors import ConfigError, DataError, RunFolderError
from pcamlab.fileio import atomic_path, save_image_png
from pcamlab.progress import progress_bar
from pcamlab.slide import ResolutionError, open_slide, plan_grid
from pcamlab.slide.annotations import draw_annotations, read_annotations
from pcamlab.slide.batch import slide_folders
from pcamlab.slide.dataset import FromSlidesOptions, plan_dataset
from pcamlab.slide.synthetic import sample_pools

SQUARE = [[100, 100], [600, 100], [600, 500], [100, 500], [100, 100]]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """A 1152 x 960 generic TIFF at 0.972 um/px."""
    folder = tmp_path_factory.mktemp("slide")
    return write_slide(folder / "case.tif", "generic-tiff", synthetic_image(1152, 960, seed=3), mpp=0.972)


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


def geojson(path: Path, rings: list, name: str = "Tumor") -> Path:
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
               "properties": {"classification": {"name": name}}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


# 1. A file the user names is never replaced, and is written atomically.

def test_atomic_path_without_replace_never_overwrites_even_a_file_that_appears_meanwhile(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"slide")
    with pytest.raises(RunFolderError, match="already exists.*choose another thumbnail"):
        with atomic_path(target, replace=False, parameter="thumbnail"):
            pass
    late = tmp_path / "late.png"
    with pytest.raises(RunFolderError, match="already exists"):
        with atomic_path(late, replace=False) as temporary:
            Path(temporary).write_bytes(b"new")
            late.write_bytes(b"someone else's")  # appears while we write
    assert late.read_bytes() == b"someone else's" and sorted(path.name for path in tmp_path.iterdir()) == \
        ["late.png", "out.png"]  # and no temporary left behind


def test_slide_info_thumbnail_refuses_an_existing_file_and_a_suffix_other_than_png(tmp_path, slide, capsys):
    victims = [tmp_path / "victim.tif", tmp_path / "ann.xml", tmp_path / "earlier.png"]
    for victim in victims:
        victim.write_bytes(b"precious")
        assert main(["slide", "info", str(slide), "--thumbnail", str(victim)]) == 2
        error = one_line_error(capsys)
        assert victim.read_bytes() == b"precious"
        assert ("already exists" in error and "--thumbnail" in error) or "--thumbnail must end in .png" in error
    assert main(["slide", "info", str(slide), "--thumbnail", str(tmp_path / "t.jpg")]) == 2
    assert "--thumbnail must end in .png" in one_line_error(capsys) and not (tmp_path / "t.jpg").exists()
    assert main(["slide", "info", str(slide), "--thumbnail", str(tmp_path / "t.png"), "--size", "64"]) == 0
    assert Image.open(tmp_path / "t.png").size == (64, 53)
    with pytest.raises(RunFolderError):
        save_image_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "t.png")


def test_report_out_refuses_an_existing_file_without_force(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval-valid").mkdir()
    (run / "eval-valid" / "metrics.json").write_text('{"roc_auc": 0.9}')
    page = tmp_path / "notes.html"
    page.write_text("my notes")
    assert main(["report", str(run), "--out", str(page)]) == 2
    error = one_line_error(capsys)
    assert "already exists" in error and "--out" in error and "--force" in error and page.read_text() == "my notes"
    assert main(["report", str(run), "--out", str(page), "--force"]) == 0 and "<html" in page.read_text()
    assert main(["report", str(run)]) == 0 and main(["report", str(run)]) == 0  # the run's own report is refreshed


# 2, 3, 9. Odd annotation files: one line or a sensible reading, never a traceback.

def test_geojson_with_a_third_coordinate_is_read_in_two_dimensions(tmp_path, slide, capsys):
    path = geojson(tmp_path / "z.geojson", [[[x, y, 5] for x, y in SQUARE]])
    annotations = read_annotations(path, slide_dimensions=(1152, 960))
    assert annotations.tumour.area == 500 * 400 and not annotations.tumour.has_z
    assert draw_annotations(np.zeros((96, 116, 3), np.uint8), annotations, 10).any()
    assert main(["slide", "info", str(slide), "--annotations", str(path)]) == 0
    assert "tumour         1" in capsys.readouterr().out


def test_a_truncated_label_mask_is_one_line(tmp_path, slide, capsys):
    mask = np.random.default_rng(0).integers(0, 3, (200, 240), dtype=np.uint8)
    Image.fromarray(mask).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="does not decode.*truncated or damaged"):
        read_annotations(tmp_path / "cut.png", mask_downsample=4)
    assert main(["slide", "info", str(slide), "--annotations", str(tmp_path / "cut.png")]) == 2
    assert "label mask" in one_line_error(capsys)


def test_a_region_without_area_is_left_out_and_a_file_of_only_those_holds_no_regions(tmp_path):
    collinear = geojson(tmp_path / "line.geojson", [[[0, 0], [100, 100], [200, 200], [0, 0]]])
    with pytest.raises(DataError, match="holds no regions with an area.*has no area"):
        read_annotations(collinear)
    bow_tie = geojson(tmp_path / "bow.geojson", [[[600, 600], [700, 700], [700, 600], [600, 700], [600, 600]]])
    assert read_annotations(bow_tie).tumour.area == pytest.approx(5000)  # zero signed area, yet a real region


# 4. Out-of-range numbers and unusable patches are one line.

def test_synth_cohort_and_thumbnail_numbers_out_of_range_are_one_line(tmp_path, slide, capsys):
    for arguments in (["--pool-size", "0"], ["--pool-size", "-5"], ["--width", "100000"], ["--normal", "0", "--tumour",
                                                                                             "0"]):
        assert main(["slide", "synth-cohort", str(tmp_path / "c"), *arguments]) == 2
        error = one_line_error(capsys)
        assert arguments[0] in error, error
    assert not (tmp_path / "c").exists() and not list(tmp_path.iterdir())
    assert main(["slide", "info", str(slide), "--thumbnail", str(tmp_path / "t.png"), "--size", "0"]) == 2
    assert "--size" in one_line_error(capsys)
    with open_slide(slide) as opened, pytest.raises(ConfigError, match="max_size"):
        opened.thumbnail(0)


@pytest.mark.parametrize("bad", ["not-an-image", "small"])
def test_synthetic_patch_pools_refuse_an_unusable_patch_with_one_line(tmp_path, bad):
    source = Path(__file__).parents[1] / "src" / "pcamlab" / "data" / "sample" / "valid"
    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        for file in sorted((source / label).iterdir())[:2]:
            (tmp_path / label / file.name).write_bytes(file.read_bytes())
    if bad == "small":
        Image.new("RGB", (50, 50)).save(tmp_path / "1" / "small.png")
    else:
        (tmp_path / "0" / "bad.jpg").write_text("junk")
    with pytest.raises(DataError, match="patches folder") as caught:
        sample_pools(root=tmp_path)
    assert "skip_bad" not in str(caught.value)


# 5. A split asked for that got no slide is noted; so is a split mapping row that names no slide given.

def test_a_split_without_slides_and_unused_split_rows_are_noted(tmp_path, slide):
    other = tmp_path / "other.tif"
    other.write_bytes(slide.read_bytes())
    options = FromSlidesOptions(max_patches_per_slide=10, min_tissue_fraction=0.0)
    plan = plan_dataset([slide], annotations=None, options=options)  # one slide of its class: none for valid
    assert any("split valid got no slide" in note and "pcamlab train needs a valid split" in note
               for note in plan.notes), plan.notes
    plan = plan_dataset([slide, other], annotations=None, options=options,
                        split_map={"case": "train", "other": "valid", "tumor_009": "valid"})
    assert any("not given" in note and "tumor_009" in note for note in plan.notes), plan.notes
    assert not any("got no slide" in note for note in plan.notes)
    folder = tmp_path / "annotations"
    folder.mkdir()
    geojson(folder / "CASE.geojson", [SQUARE])  # ids are case-sensitive: this is not slide 'case'
    plan = plan_dataset([slide], annotations=folder, options=options)
    assert plan.slides[0].annotation is None
    assert any("match no slide given" in note and "CASE.geojson" in note for note in plan.notes), plan.notes


# 7. Pixels that are not square: a warning in info, an error wherever tiles are read.

def test_non_square_pixels_are_refused_for_tiling_and_warned_by_info(tmp_path, capsys):
    path = write_slide(tmp_path / "aniso.tif", "generic-tiff", synthetic_image(1152, 960, seed=3), mpp=0.972,
                       mpp_y=0.486)
    with open_slide(path) as opened:
        assert not opened.square_pixels and "not square" in opened.warnings[0]
        with pytest.raises(ResolutionError, match="non-square level-0 pixels"):
            plan_grid(opened, 96, 96, 0.972)
    with open_slide(path, mpp=0.972) as opened:  # a given mpp is used for both axes
        assert opened.square_pixels and plan_grid(opened, 96, 96, 0.972).rows > 0
    assert main(["slide", "info", str(path)]) == 0
    assert "warning: level-0 pixels are not square" in capsys.readouterr().out
    assert main(["data", "from-slides", str(path), "--out", str(tmp_path / "d")]) == 2
    assert "non-square" in (error := one_line_error(capsys)) and "--slide-mpp" in error


# 10. Messages name the command's flags.

def test_cli_message_shows_mappings_and_negative_flags_as_flags():
    flags = {"class_map": "--class-map", "no_repair": "--no-repair", "mask_downsample": "--mask-downsample"}
    assert cli_message("e.g. class_map={'Carcinoma in situ': 'tumour'}", ("class_map",), flags) == \
        "e.g. --class-map 'Carcinoma in situ=tumour'"
    assert cli_message("or let it repair (repair=True)", ("repair",), flags) == "or let it repair (without --no-repair)"


def test_annotation_and_from_slides_messages_name_their_flags(tmp_path, slide, capsys):
    unknown = geojson(tmp_path / "u.geojson", [SQUARE], name="Carcinoma")
    assert main(["slide", "info", str(slide), "--annotations", str(unknown)]) == 2
    assert "--class-map Carcinoma=tumour" in one_line_error(capsys)
    bow_tie = geojson(tmp_path / "b.geojson", [[[600, 600], [700, 700], [700, 600], [600, 700], [600, 600]]])
    assert main(["slide", "info", str(slide), "--annotations", str(bow_tie), "--no-repair"]) == 2
    assert "without --no-repair" in one_line_error(capsys)
    mask = tmp_path / "m.png"
    Image.fromarray(np.ones((10, 12), np.uint8)).save(mask)
    assert main(["slide", "info", str(slide), "--annotations", str(mask), "--mask-downsample", "-1"]) == 2
    assert "--mask-downsample must be" in one_line_error(capsys)
    assert main(["slide", "info", str(slide), "--class-map", "a=tumour"]) == 2
    assert "no --annotations" in one_line_error(capsys)
    assert main(["data", "from-slides", str(slide), "--out", str(tmp_path / "d"), "--slide-mpp", "2.5"]) == 2
    error = one_line_error(capsys)
    assert "--slide-mpp" in error and "the patches' 0.972" in error and "model" not in error
    assert main(["data", "from-slides", str(slide), str(slide), "--out", str(tmp_path / "d")]) == 2
    assert "is given twice" in one_line_error(capsys)
    with pytest.raises(DataError, match="same slide id 'case'"):
        slide_folders([slide, tmp_path / "case.svs"], tmp_path)


# 12. A progress bar appears only once there is progress, so an error is printed alone.

def test_a_progress_bar_draws_nothing_before_its_first_update(capsys):
    update, close = progress_bar("slides", True, unit="slide")
    close()
    assert capsys.readouterr().err == ""
