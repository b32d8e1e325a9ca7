"""The slide reader trusts nothing blindly: vendor formats, a given mpp over the file's, implausible mpp,
slides cut short or with a tile that does not decode, and the stop flag of ``slide predict``.

Slides are written here (``tests/slide_formats.py``: Aperio SVS, generic pyramidal TIFF, OME-TIFF with
SubIFDs) from a synthetic slide of real PCam patches; the model is ``tests/assets/slide_model.safetensors``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from slide_formats import FORMATS, SUFFIXES, cut_short, damage_tile, pyramid, synthetic_image, write_slide

from pcamlab import stopping
from pcamlab.cli.main import main
from pcamlab.slide import (
    DamagedSlideError,
    ResolutionError,
    load_predictor,
    make_synthetic_slide,
    open_slide,
    predict_slide,
    sample_pools,
    slide_info,
)
from pcamlab.slide.reader import verify_slide

MODEL = Path(__file__).parent / "assets" / "slide_model.safetensors"
WIDTH, HEIGHT = 1152, 960  # 12 x 10 cells of 96 px; 5 x 4 TIFF tiles of 256 px at level 0


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_image(WIDTH, HEIGHT, seed=3)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, image) -> dict[str, Path]:
    """The same pixels in every format, level 0 at 0.25 um/px, three levels."""
    folder = tmp_path_factory.mktemp("formats")
    return {kind: write_slide(folder / f"slide{SUFFIXES[kind]}", kind, image, mpp=0.25) for kind in FORMATS}


@pytest.fixture(scope="module")
def predictor():
    return load_predictor(MODEL)


@pytest.fixture(scope="module")
def pools():
    return sample_pools("valid")


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory, pools):
    """3840 x 2880 at 0.972 um/px, levels 0-3: prediction reads level 0, the mask and thumbnail lower ones."""
    return make_synthetic_slide(tmp_path_factory.mktemp("tissue") / "case.tif", *pools, width=3840, height=2880,
                                seed=0)


@pytest.fixture(autouse=True)
def no_stop_request():
    yield
    stopping.clear()


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, captured.err
    return error


EXPECTED = {  # format -> (backend chosen, vendor, where the mpp comes from, objective power)
    "aperio-svs": ("openslide", "aperio", "metadata", 40.0),
    "generic-tiff": ("openslide", "generic-tiff", "tiff-tags", None),
    "ome-tiff": ("tiffslide", "ome-tiff", "metadata", None),  # OpenSlide sees only level 0 of SubIFD pyramids
}


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_opens_with_its_levels_mpp_and_pixels(slides, image, kind):
    backend, vendor, source, objective = EXPECTED[kind]
    with open_slide(slides[kind]) as opened:
        assert (opened.backend, opened.vendor, opened.mpp_source, opened.objective_power) == (backend, vendor,
                                                                                              source, objective)
        assert opened.mpp == pytest.approx((0.25, 0.25)) and opened.warnings == []
        assert opened.level_dimensions == ((WIDTH, HEIGHT), (WIDTH // 2, HEIGHT // 2), (WIDTH // 4, HEIGHT // 4))
        assert opened.level_downsamples == pytest.approx((1, 2, 4))
        region = opened.read_region((512, 256), 1, (200, 100))  # level-0 origin, level-1 size
    expected = pyramid(image, 3)[1][128:228, 256:456]
    assert np.abs(region.astype(int) - expected).mean() < 4  # JPEG at quality 90
    with open_slide(slides["generic-tiff"]) as reference:  # the same tiles decode alike in every format
        assert np.array_equal(region, reference.read_region((512, 256), 1, (200, 100)))
    with open_slide(slides[kind], backend="tiffslide") as other:  # and through either backend
        assert other.level_count == 3 and np.array_equal(region, other.read_region((512, 256), 1, (200, 100)))


def test_an_ome_tiff_is_read_with_tiffslide_because_openslide_sees_one_level(slides):
    with open_slide(slides["ome-tiff"], backend="openslide") as opened:
        assert opened.vendor == "generic-tiff" and opened.level_count == 1
    info = slide_info(slides["ome-tiff"])
    assert info.backend == "tiffslide" and len(info.level_dimensions) == 3
    assert any("OpenSlide sees 1 pyramid level" in note for note in info.notes), info.notes


def test_openslide_wheel_has_a_dicom_driver_but_no_dicom_writer_is_installed():
    """DICOM-WSI: OpenSlide 4 reads it, but a file cannot be generated here without pydicom/wsidicom."""
    import importlib.util

    import openslide

    assert int(openslide.__library_version__.split(".")[0]) >= 4  # the DICOM driver came with OpenSlide 4.0
    if importlib.util.find_spec("pydicom") or importlib.util.find_spec("wsidicom"):
        pytest.fail("pydicom/wsidicom are installed now: add DICOM-WSI to tests/slide_formats.py")


def test_a_given_mpp_wins_over_wrong_tags_and_slide_info_says_it_overrides(tmp_path, pools, predictor, capsys):
    """The issue's case: TIFF tags 10x too fine, predicted with --mpp 0.972, must tile at 0.972 um/px."""
    from pcamlab.slide import plan_grid

    right = make_synthetic_slide(tmp_path / "right.tif", *pools, width=WIDTH, height=HEIGHT, seed=2)
    wrong = make_synthetic_slide(tmp_path / "wrong.tif", *pools, width=WIDTH, height=HEIGHT, seed=2, mpp=0.0972)
    with open_slide(wrong.path) as opened:  # the tags' scale: 10x fewer tiles per side (the issue's 4 for 304)
        assert plan_grid(opened, 96, 96, 0.972).cols == 1
    with open_slide(wrong.path, mpp=0.972) as opened:
        assert (opened.mpp, opened.mpp_source) == ((0.972, 0.972), "given")
        assert opened.recorded_mpp == pytest.approx((0.0972, 0.0972)) and opened.recorded_mpp_source == "tiff-tags"
        assert opened.warnings == [] and "overrides the slide's own 0.0972" in opened.notes[0]
    expected = predict_slide(predictor, right.path, tmp_path / "out" / "right")
    assert main(["slide", "predict", str(MODEL), str(wrong.path), "--out", str(tmp_path / "out"),
                 "--mpp", "0.972"]) == 0
    printed = capsys.readouterr().out
    assert "note: the --mpp given, 0.972 um/px, overrides the slide's own 0.0972 x 0.0972 um/px from the TIFF " \
           "resolution tags" in printed
    summary = json.loads((tmp_path / "out" / "wrong" / "summary.json").read_text())
    assert summary["tiles"] == expected.summary["tiles"] > 30 and summary["mpp_source"] == "given"
    assert summary["tissue_area_mm2"] == pytest.approx(expected.summary["tissue_area_mm2"])
    assert np.array_equal(np.load(tmp_path / "out" / "wrong" / "tile_probabilities.npy"),
                          np.load(expected.files["tile_probabilities"]), equal_nan=True)

    assert main(["slide", "info", str(wrong.path), "--mpp", "0.972"]) == 0
    printed = capsys.readouterr().out
    assert ("0.972 x 0.972 um/px at level 0 (given with --mpp; overrides 0.0972 x 0.0972 um/px from the TIFF "
            "resolution tags)") in printed
    assert main(["slide", "info", str(wrong.path), "--mpp", "0.972", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["mpp"] == [0.972, 0.972] and facts["recorded_mpp_source"] == "tiff-tags" and facts["notes"]


def test_an_implausible_mpp_warns_naming_where_it_came_from(tmp_path, slides, image, pools, capsys):
    wrong = make_synthetic_slide(tmp_path / "wrong.tif", *pools, width=480, height=480, seed=1, mpp=0.0972)
    with open_slide(wrong.path) as opened:
        assert opened.mpp_source == "tiff-tags" and len(opened.warnings) == 1
        assert "0.0972 um/px from the TIFF resolution tags is outside what slide scanners produce" in opened.warnings[0]
    assert main(["slide", "info", str(wrong.path)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "give the right level-0 resolution as --mpp (e.g. 0.25" in warnings[0], warnings
    coarse_svs = write_slide(tmp_path / "coarse.svs", "aperio-svs", image, mpp=3.0)
    with open_slide(coarse_svs) as opened:
        assert "3 um/px from the aperio metadata is outside" in opened.warnings[0]
    with open_slide(slides["generic-tiff"], mpp=0.05) as opened:
        assert opened.mpp_source == "given" and "0.05 um/px from the mpp given is outside" in opened.warnings[0]
    with open_slide(wrong.path, mpp=0.243) as opened:  # a plausible given mpp: the file's wrong tags only noted
        assert opened.warnings == [] and opened.notes
    for bad in (0, -1, float("nan"), "0.25", True):
        with pytest.raises(ResolutionError, match="mpp must be a positive number"):
            open_slide(wrong.path, mpp=bad)
    assert main(["slide", "info", str(wrong.path), "--mpp", "-1"]) == 2  # the reader's parameter is the flag here
    assert "error: --mpp must be a positive number" in one_line_error(capsys)


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("fraction", [0.3, 0.95])
def test_a_slide_cut_short_is_one_line_exit_2_in_info_and_predict(tmp_path, slides, kind, fraction, capsys):
    short = cut_short(slides[kind], tmp_path / f"short{SUFFIXES[kind]}", fraction)
    with pytest.raises(DamagedSlideError, match="is damaged \\(cut short: .* lie past the end"):
        open_slide(short)
    for backend in ("openslide", "tiffslide"):  # found before any backend opens it
        with pytest.raises(DamagedSlideError):
            open_slide(short, backend=backend)
    assert main(["slide", "info", str(short)]) == 2
    error = one_line_error(capsys)
    assert f"slide '{short}' is damaged (cut short" in error and error.endswith("copy it again from its source")
    out = tmp_path / "out"
    assert main(["slide", "predict", str(MODEL), str(short), "--out", str(out)]) == 2
    assert "is damaged (cut short" in one_line_error(capsys) and not out.exists()


def test_a_file_whose_directories_lead_past_its_end_is_damaged(tmp_path, slides):
    """Cut inside the image directories: tifffile only logs the broken chain; it is damage, printed nowhere."""
    import tifffile

    with tifffile.TiffFile(slides["aperio-svs"]) as tiff:
        last_page = tiff.pages[-1].offset  # the last image directory's position
    short = tmp_path / "short.svs"
    short.write_bytes(slides["aperio-svs"].read_bytes()[:last_page])  # every tile before it whole
    with pytest.raises(DamagedSlideError, match="cut short: its chain of image directories leads past the end"):
        open_slide(short)
    header_only = tmp_path / "header.tif"
    header_only.write_bytes(slides["generic-tiff"].read_bytes()[:12])
    with pytest.raises(DamagedSlideError, match="its TIFF structure does not parse"):
        open_slide(header_only)


@pytest.fixture(scope="module")
def damaged_slide(tmp_path_factory, tissue_slide) -> Path:
    """``tissue_slide`` with one level-0 tile in the tissue zeroed: its JPEG does not decode."""
    row, col = 6, 7  # tiles of 256 px: level-0 x 1792-2048, y 1536-1792, inside the tissue blob
    cells = tissue_slide.truth[1536 // 96: 1792 // 96 + 1, 1792 // 96: 2048 // 96 + 1]
    assert (cells > 0).mean() > 0.5  # the tile holds tissue, so prediction would read it
    return damage_tile(tissue_slide.path, tmp_path_factory.mktemp("damaged") / "case.tif", page=0,
                       index=row * (3840 // 256) + col)


def test_a_tile_that_does_not_decode_is_damage_in_both_backends(damaged_slide):
    for backend in ("openslide", "tiffslide"):
        with open_slide(damaged_slide, backend=backend) as opened:  # opens: the bytes are all there
            assert opened.read_region((0, 0), 0, (256, 256)).shape == (256, 256, 3)  # an intact tile reads
            with pytest.raises(DamagedSlideError, match=f"level 0 .* does not decode; {backend}: "):
                opened.read_region((1792, 1536), 0, (256, 256))
            with pytest.raises(DamagedSlideError):  # and nothing is read from it afterwards
                opened.read_region((0, 0), 0, (16, 16))


def test_a_damaged_tile_stops_prediction_unscored_and_nothing_is_kept(tmp_path, damaged_slide, tissue_slide,
                                                                       predictor, capsys):
    scored = []

    class Counting:
        contract, path = predictor.contract, predictor.path

        def predict_proba(self, images, batch_size=256):
            scored.append(len(images))
            return predictor.predict_proba(images, batch_size=batch_size)

    out = tmp_path / "case"
    with pytest.raises(DamagedSlideError, match="is damaged \\(a tile of level 0"):
        predict_slide(Counting(), damaged_slide, out, batch_size=16, readers=1)
    whole = predict_slide(predictor, tissue_slide.path, tmp_path / "whole")
    assert sum(scored) < whole.summary["tiles"]  # stopped at the damaged tile, never past it
    assert not out.exists() and not (tmp_path / ".case.partial").exists()  # no tile of a damaged file is kept

    assert main(["slide", "predict", str(MODEL), str(damaged_slide), "--out", str(tmp_path / "cli")]) == 2
    error = one_line_error(capsys)
    assert f"slide '{damaged_slide}' is damaged (a tile of level 0" in error and "copy it again" in error
    assert not (tmp_path / "cli" / "case").exists()


def test_data_from_slides_stops_at_a_damaged_slide_with_one_line(tmp_path, damaged_slide, slides, capsys):
    short = cut_short(slides["generic-tiff"], tmp_path / "short.tif", 0.9)
    for slide, words in ((short, "is damaged (cut short"), (damaged_slide, "is damaged (a tile of level 0")):
        out = tmp_path / f"dataset-{slide.stem}"
        assert main(["data", "from-slides", str(slide), "--out", str(out)]) == 2
        error = one_line_error(capsys)
        assert f"slide '{slide}' {words}" in error and "copy it again" in error, error
        assert not out.exists()
    # found while planning (the file is cut short): nothing at all is written, not even OUT.partial/
    assert not (tmp_path / "dataset-short.partial").exists()


def test_a_damaged_tile_found_mid_cut_keeps_the_partial_resumable(tmp_path, damaged_slide, tissue_slide, capsys):
    """The tissue mask reads a low level (intact), so the damaged level-0 tile is met while cutting patches."""
    folder = tmp_path / "slides"
    folder.mkdir()
    whole, case = folder / "whole.tif", folder / "case.tif"
    whole.write_bytes(tissue_slide.path.read_bytes())
    case.write_bytes(damaged_slide.read_bytes())
    out = tmp_path / "data"
    command = ["data", "from-slides", str(whole), str(case), "--out", str(out), "--max-per-slide", "1000"]
    assert main(command) == 2
    error = one_line_error(capsys)
    assert f"slide '{case}' is damaged (a tile of level 0" in error and "copy it again" in error, error
    assert f"the slides cut so far stay in '{out}.partial', and running the same again resumes there" in error
    partial = out.with_name("data.partial")
    assert (partial / "whole.done.json").is_file() and not (partial / "case.done.json").exists()
    assert not out.exists() and not list(partial.glob(".case.npy.*"))  # no half-written patches of the damaged slide
    case.write_bytes(tissue_slide.path.read_bytes())  # copied again from its source
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "resuming: 1 of 2 slides already cut" in printed and f"wrote {out}" in printed
    assert not partial.exists() and (out / "slides.csv").is_file()


def test_from_slides_names_its_flag_for_the_slides_mpp(tmp_path, pools, capsys):
    """from-slides' --mpp is the patches' resolution; the slides' level-0 mpp is --slide-mpp, in every message."""
    from pcamlab.slide.dataset import FromSlidesOptions, plan_dataset

    wrong = make_synthetic_slide(tmp_path / "wrong.tif", *pools, width=1920, height=1920, seed=1, mpp=0.0972)
    bare = make_synthetic_slide(tmp_path / "bare.tif", *pools, width=960, height=960, seed=1, resolution_tags=False)
    with pytest.raises(ResolutionError, match="^slide_mpp must be a positive number") as caught:
        plan_dataset([wrong.path], annotations=None, options=FromSlidesOptions(slide_mpp=-1.0))
    assert caught.value.parameters == ("slide_mpp",)
    with pytest.raises(ResolutionError, match="give the level-0 resolution as slide_mpp"):
        plan_dataset([bare.path], annotations=None)
    for slide, extra, words in ((wrong.path, ["--slide-mpp", "-1"], "error: --slide-mpp must be a positive number"),
                                (bare.path, [], "give the level-0 resolution as --slide-mpp (um/px")):
        out = tmp_path / f"data-{slide.stem}"
        assert main(["data", "from-slides", str(slide), "--out", str(out), *extra]) == 2
        error = one_line_error(capsys)
        assert words in error and "--mpp" not in error, error
        assert not out.exists() and not out.with_name(f"{out.name}.partial").exists()
    # an implausible mpp (tags 10x too fine): the reader's warning, printed under the slide's plan row
    assert main(["data", "from-slides", str(wrong.path), "--out", str(tmp_path / "warned")]) == 0
    printed = capsys.readouterr().out
    assert "    warning: level-0 resolution 0.0972 um/px from the TIFF resolution tags is outside" in printed, printed
    assert "give the right level-0 resolution as --slide-mpp (e.g. 0.25" in printed and "as --mpp" not in printed
    facts = json.loads((tmp_path / "warned" / "from_slides.json").read_text())
    assert "give the right level-0 resolution as slide_mpp" in facts["slides"][0]["warnings"][0]
    # the right one given: a note says what it overrides, naming the flag
    assert main(["data", "from-slides", str(wrong.path), "--out", str(tmp_path / "given"), "--slide-mpp", "0.972",
                 "--valid-fraction", "0"]) == 0
    printed = capsys.readouterr().out
    assert ("    note: the --slide-mpp given, 0.972 um/px, overrides the slide's own 0.0972 x 0.0972 um/px from the "
            "TIFF resolution tags") in printed, printed
    assert "warning:" not in printed


def test_slide_info_verify_decodes_every_tile(damaged_slide, tissue_slide, capsys):
    assert main(["slide", "info", str(damaged_slide)]) == 0  # the levels info reads are intact
    capsys.readouterr()
    assert main(["slide", "info", str(damaged_slide), "--verify"]) == 2
    assert "is damaged (a tile of level 0" in one_line_error(capsys)
    assert main(["slide", "info", str(tissue_slide.path), "--verify"]) == 0
    assert "verified  every tile of the 4 level(s) decodes" in capsys.readouterr().out
    with open_slide(tissue_slide.path) as opened:
        assert verify_slide(opened) == sum(width * height for width, height in opened.level_dimensions)


def test_a_stop_request_ends_at_a_batch_and_the_same_call_resumes(tmp_path, tissue_slide, predictor):
    calls = []

    class Stopping:
        contract, path = predictor.contract, predictor.path

        def predict_proba(self, images, batch_size=256):
            calls.append(len(images))
            if len(calls) == 2:
                stopping.request(signal.SIGTERM)  # as SIGTERM does while the loop runs
            return predictor.predict_proba(images, batch_size=batch_size)

    out = tmp_path / "case"
    with pytest.raises(stopping.Stopped):
        predict_slide(Stopping(), tissue_slide.path, out, batch_size=32, readers=1)
    assert len(calls) == 2 and not out.exists()
    saved = np.load(tmp_path / ".case.partial" / "tile_probabilities.npy")
    assert np.isfinite(saved).sum() == 64  # both batches, on disk
    stopping.clear()
    resumed = predict_slide(predictor, tissue_slide.path, out, batch_size=32)
    assert resumed.summary["tiles_resumed"] == 64
    fresh = predict_slide(predictor, tissue_slide.path, tmp_path / "fresh", batch_size=32)
    assert np.allclose(np.load(resumed.files["tile_probabilities"]), np.load(fresh.files["tile_probabilities"]),
                       atol=1e-5, equal_nan=True)


def test_slide_predict_stops_on_sigterm_with_exit_143_and_resumes(tmp_path, tissue_slide, monkeypatch, capsys):
    from pcamlab.runtime.predictor import PatchPredictor

    original = PatchPredictor.predict_proba
    calls = []

    def predict_proba(self, images, **options):
        calls.append(len(images))
        if len(calls) == 3:
            stopping.request(signal.SIGTERM)
        return original(self, images, **options)

    monkeypatch.setattr(PatchPredictor, "predict_proba", predict_proba)
    command = ["slide", "predict", str(MODEL), str(tissue_slide.path), "--out", str(tmp_path), "--batch-size", "32"]
    assert main(command) == 143
    error = capsys.readouterr().err
    assert "stopped; what was predicted is kept" in error and "terminated (SIGTERM)" in error
    assert np.isfinite(np.load(tmp_path / ".case.partial" / "tile_probabilities.npy")).sum() == 96
    assert main(command) == 0
    assert "96 resumed" in capsys.readouterr().out


def test_the_slide_package_has_no_import_cycle_and_the_service_reads_the_output_list():
    import grimp

    from pcamlab.serve.slides import HEAT_LAYER_FILE, RESULT_FILES
    from pcamlab.slide import OUTPUT_FILES

    graph = grimp.build_graph("pcamlab")
    for module in ("pcamlab.slide.outputs", "pcamlab.slide.grid", "pcamlab.slide.reader"):
        assert graph.find_shortest_chain(importer=module, imported="pcamlab.slide.predict") is None, module
    assert set(RESULT_FILES.values()) <= {*OUTPUT_FILES.values(), HEAT_LAYER_FILE}
