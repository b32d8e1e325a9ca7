"""Whole-slide heatmaps on generated slides of real PCam patches: reading, tissue, tiling, outputs, errors.

The slides are pyramidal JPEG-tiled TIFFs built by ``pcamlab.slide.synthetic`` from the *valid* patches
of the sample shipped in pcamlab; the model is ``tests/assets/slide_model.safetensors``, a 10,600-
parameter CNN trained on the sample's *train* patches by ``scripts/make_slide_fixture.py``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pcamlab.cli.main import main
from pcamlab.errors import ConfigError, DataError, RunError
from pcamlab.slide import (
    MissingResolutionError,
    load_predictor,
    make_synthetic_slide,
    open_slide,
    plan_grid,
    predict_slide,
    read_truth,
    sample_pools,
    tissue_mask,
)
from pcamlab.slide.batch import shard, slide_folders
from pcamlab.slide.outputs import average_overlaps
from pcamlab.slide.synthetic import GLASS, NORMAL, TUMOUR

MODEL = Path(__file__).parent / "assets" / "slide_model.safetensors"


def tile_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


@pytest.fixture(scope="module")
def pools():
    return sample_pools("valid")


@pytest.fixture(scope="module")
def predictor():
    return load_predictor(MODEL)


@pytest.fixture(scope="module")
def slide(tmp_path_factory, pools):
    """40 x 30 cells of 96 px (3840 x 2880 at 0.972 um/px), 40% tissue, 15% of it tumour."""
    return make_synthetic_slide(tmp_path_factory.mktemp("slide") / "small.tif", *pools, width=3840, height=2880,
                                seed=0)


@pytest.fixture(scope="module")
def result(tmp_path_factory, predictor, slide):
    return predict_slide(predictor, slide.path, tmp_path_factory.mktemp("out") / "small", batch_size=128)


def truth_of_tiles(result, truth: np.ndarray) -> np.ndarray:
    """Ground-truth label of each tile's centre cell, (rows, cols)."""
    grid = result.summary["grid"]
    scale = grid["stride"] * grid["read_scale"] * grid["level_downsample"]
    size = grid["patch_size"] * grid["read_scale"] * grid["level_downsample"]
    rows = ((np.arange(grid["rows"]) * scale + size / 2) // 96).astype(int)
    cols = ((np.arange(grid["cols"]) * scale + size / 2) // 96).astype(int)
    return truth[np.clip(rows, 0, truth.shape[0] - 1)][:, np.clip(cols, 0, truth.shape[1] - 1)]


def test_synthetic_slide_is_a_pyramidal_tiff_both_readers_read_alike(slide):
    assert slide.level_dimensions[0] == (3840, 2880) and len(slide.level_dimensions) >= 3
    assert np.array_equal(read_truth(slide.truth_path), slide.truth)
    counts = np.bincount(slide.truth.ravel(), minlength=3)
    assert counts[NORMAL] + counts[TUMOUR] == 480 and counts[TUMOUR] == 72  # 40% tissue, 15% of it tumour
    with open_slide(slide.path) as first, open_slide(slide.path, backend="tiffslide") as second:
        assert (first.backend, first.vendor, second.backend) == ("openslide", "generic-tiff", "tiffslide")
        assert first.level_dimensions == second.level_dimensions == slide.level_dimensions
        assert first.mpp == pytest.approx((0.972, 0.972)) and first.mpp_source == "tiff-tags"
        assert second.mpp == pytest.approx((0.972, 0.972))
        region = first.read_region((960, 480), 1, (200, 100))
        assert region.shape == (100, 200, 3) and region.dtype == np.uint8
        assert np.array_equal(region, second.read_region((960, 480), 1, (200, 100)))


def test_heatmap_finds_the_tumour_as_well_as_the_model_scores_patches(result, slide, predictor, pools):
    normal, tumour = pools
    patch_auc = tile_auc(np.r_[np.zeros(len(normal)), np.ones(len(tumour))],
                         predictor.predict_proba(np.concatenate([normal, tumour])))
    tiles = np.load(result.files["tile_probabilities"])
    truth = truth_of_tiles(result, slide.truth)
    predicted = np.isfinite(tiles)
    auc = tile_auc(truth[predicted] == TUMOUR, tiles[predicted])
    assert auc >= patch_auc - 0.05, (auc, patch_auc)  # measured 0.87 tile vs 0.88 patch
    assert result.summary["score_max"] >= 0.9
    # Tiles in tumour score higher than tiles in normal tissue, on average by far.
    assert tiles[predicted & (truth == TUMOUR)].mean() - tiles[predicted & (truth == NORMAL)].mean() > 0.3


def test_tissue_mask_keeps_glass_out_and_tissue_in(result, slide):
    tiles = np.load(result.files["tile_probabilities"])
    predicted = np.isfinite(tiles)
    truth = slide.truth[: tiles.shape[0], : tiles.shape[1]]
    glass = truth == GLASS
    padded = np.pad(glass, 1, constant_values=True)
    interior_glass = np.all([padded[1 + dy: 1 + dy + glass.shape[0], 1 + dx: 1 + dx + glass.shape[1]]
                             for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    assert interior_glass.sum() > 300
    assert not (predicted & interior_glass).any()  # glass away from tissue is never predicted
    assert (predicted & glass).sum() <= 0.01 * glass.sum()  # and glass touching tissue hardly ever
    assert (predicted & (truth == TUMOUR)).sum() == (truth == TUMOUR).sum()  # every tumour cell is predicted
    assert (predicted & (truth == NORMAL)).sum() >= 0.9 * (truth == NORMAL).sum()  # fatty PCam patches may be pale
    mask = tissue_mask(np.full((64, 64, 3), 236, np.uint8), method="otsu")
    assert not mask.any()  # Otsu on blank glass finds nothing (floored at the saturation rule)


def test_every_output_is_written_and_consistent(result, slide):
    summary = json.loads(result.files["summary"].read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert sorted(p.name for p in result.out_dir.iterdir()) == sorted(
        ["tile_probabilities.npy", "probability_map.npy", "heatmap.png", "overlay.png", "thumbnail.png",
         "tissue_mask.png", "tiles.csv", "tumour_tiles.geojson", "summary.json", "report.html"])
    assert not list(result.out_dir.parent.glob(".*partial"))
    tiles = np.load(result.files["tile_probabilities"])
    assert tiles.dtype == np.float32 and tiles.shape == (30, 40)
    assert summary["tiles"] == int(np.isfinite(tiles).sum()) and summary["tiles_resumed"] == 0
    assert np.array_equal(np.load(result.files["probability_map"]), tiles, equal_nan=True)  # stride = patch
    with open(result.files["tiles_csv"]) as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == summary["tiles"]
    first = rows[0]
    assert int(first["width"]) == 96 and int(first["x"]) == int(first["col"]) * 96
    assert float(first["probability"]) == pytest.approx(tiles[int(first["row"]), int(first["col"])], abs=1e-6)
    geojson = json.loads(result.files["geojson"].read_text())
    assert geojson["type"] == "FeatureCollection"
    assert len(geojson["features"]) == summary["tiles_above_threshold"] > 0
    feature = geojson["features"][0]
    ring = feature["geometry"]["coordinates"][0]
    assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    assert feature["properties"]["classification"]["name"] == "Tumor"
    assert feature["properties"]["measurements"]["probability"] >= summary["threshold"]
    assert all(0 <= x <= 3840 and 0 <= y <= 2880 for x, y in ring)  # level-0 pixels
    assert summary["tumour_area_mm2"] > 0 and 0 < summary["tissue_area_mm2"] < 3840 * 2880 * 0.972**2 / 1e6
    assert summary["top_k"] == 10 and summary["score_top_k_mean"] <= summary["score_max"]
    page = result.files["report"].read_text()
    assert "<section class=\"slide\">" in page and page.count("data:image/png;base64,") == 3


def test_overlapping_stride_averages_tiles_into_a_finer_map(tmp_path, predictor, pools):
    little = make_synthetic_slide(tmp_path / "little.tif", *pools, width=1152, height=960, seed=3)
    result = predict_slide(predictor, little.path, tmp_path / "out", stride=48)
    tiles = np.load(result.files["tile_probabilities"])
    probability_map = np.load(result.files["probability_map"])
    assert tiles.shape == (19, 23) and probability_map.shape == (20, 24)  # one cell per stride
    row, col = np.argwhere(np.isfinite(tiles[:-1, :-1]) & np.isfinite(tiles[1:, 1:]))[0] + 1
    covering = tiles[row - 1: row + 1, col - 1: col + 1]
    assert probability_map[row, col] == pytest.approx(np.nanmean(covering), abs=1e-6)
    toy = np.array([[0.0, 1.0], [np.nan, 0.5]], dtype=np.float32)
    assert np.allclose(average_overlaps(toy, 2), [[0, 0.5, 1], [0, 0.5, 0.75], [np.nan, 0.5, 0.5]],
                       equal_nan=True)


def test_a_killed_run_resumes_where_it_stopped(tmp_path, predictor, slide, result, capsys):
    class Crashing:
        contract, path = predictor.contract, predictor.path

        def __init__(self):
            self.calls = 0

        def predict_proba(self, images, batch_size=256):
            self.calls += 1
            if self.calls > 2:
                raise KeyboardInterrupt  # the process dies here; what was written stays on disk
            return predictor.predict_proba(images, batch_size=batch_size)

    out = tmp_path / "small"
    with pytest.raises(KeyboardInterrupt):
        predict_slide(Crashing(), slide.path, out, batch_size=64, readers=1)
    assert not out.exists()  # nothing half-written where the result belongs
    partial = tmp_path / ".small.partial"
    assert np.isfinite(np.load(partial / "tile_probabilities.npy")).sum() == 128
    # other settings: refused, naming what differs and the flags
    assert main(["slide", "predict", str(MODEL), str(slide.path), "--out", str(tmp_path), "--stride", "48"]) == 2
    message = capsys.readouterr().err.strip()
    assert "unfinished run of other settings (differs in: grid.stride" in message, message
    assert "pass --no-resume to start again (or pass another --out)" in message and len(message.splitlines()) == 1
    # what a run killed while writing its pictures leaves: temporaries that must not reach the finished folder
    (partial / ".thumbnail.png.np3em12y.tmp").write_bytes(b"half")
    (partial / "probability_map.tmp.npy").write_bytes(b"half")
    seen = []
    resumed = predict_slide(predictor, slide.path, out, batch_size=64,
                            progress=lambda done, total: seen.append((done, total)))
    assert resumed.summary["tiles_resumed"] == 128 and seen[0] == (128, resumed.summary["tiles"])
    assert np.allclose(np.load(resumed.files["tile_probabilities"]), np.load(result.files["tile_probabilities"]),
                       atol=1e-5, equal_nan=True)
    assert not partial.exists()
    assert not [path.name for path in out.rglob("*") if ".tmp" in path.name]
    assert predict_slide(predictor, slide.path, out, batch_size=64).skipped  # same model and settings: done


@pytest.mark.slow
def test_a_sigkilled_cli_run_resumes(tmp_path, slide):
    """The real thing: kill -9 the CLI mid-slide, run it again, get the whole result."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "pcamlab", "slide", "predict", str(MODEL), str(slide.path), "--out", str(out),
               "--stride", "32", "--batch-size", "32"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    grid_file = out / ".small.partial" / "tile_probabilities.npy"
    deadline = time.time() + 120
    while time.time() < deadline:
        if grid_file.exists() and np.isfinite(np.load(grid_file)).sum() >= 256:
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = int(np.isfinite(np.load(grid_file)).sum())
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "small" / "summary.json").read_text())
    assert summary["tiles_resumed"] >= done_before > 0 and "resumed" in again.stdout


def test_level_choice_and_resampling(tmp_path, predictor, pools):
    # level 0 at 0.486 um/px: level 1 (0.972) matches the model exactly, read as is
    fine = make_synthetic_slide(tmp_path / "fine.tif", *pools, width=1920, height=1152, mpp=0.486, seed=1)
    with open_slide(fine.path) as opened:
        grid = plan_grid(opened, 96, 96, 0.972)
    assert (grid.level, grid.read_scale) == (1, 1.0) and grid.tile_size_level0 == 192
    # level 0 at 0.6 um/px, levels 0.6 / 1.2 / 2.4: none within 5% of 0.972, so read level 0 and shrink 1.62x
    odd = make_synthetic_slide(tmp_path / "odd.tif", *pools, width=3840, height=2880, mpp=0.6, seed=2)
    result = predict_slide(predictor, odd.path, tmp_path / "odd")
    summary = result.summary
    assert summary["level"] == 0 and summary["resampled"] and summary["read_scale"] == pytest.approx(1.62)
    assert summary["model_mpp"] == pytest.approx(0.972)
    tiles = np.load(result.files["tile_probabilities"])
    truth = truth_of_tiles(result, odd.truth)
    predicted = np.isfinite(tiles)
    assert tile_auc(truth[predicted] == TUMOUR, tiles[predicted]) > 0.75  # PCam patches shown at the wrong scale


def test_resolution_from_tags_given_or_a_one_line_error(tmp_path, pools, capsys):
    bare = make_synthetic_slide(tmp_path / "bare.tif", *pools, width=960, height=960, seed=1, resolution_tags=False)
    with open_slide(bare.path) as opened:
        assert (opened.mpp, opened.mpp_source) == (None, "missing")
        with pytest.raises(MissingResolutionError, match="no resolution"):
            opened.require_mpp()
    with open_slide(bare.path, mpp=0.5) as opened:
        assert (opened.mpp, opened.mpp_source) == ((0.5, 0.5), "given")
    out = tmp_path / "out"
    assert main(["slide", "predict", str(MODEL), str(bare.path), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "bare.tif" in error and "--mpp" in error and len(error.splitlines()) == 1
    assert not out.exists()


def write_tiff(path: Path, image: np.ndarray, *, tiled: bool = True) -> Path:
    import tifffile

    options = {"tile": (256, 256)} if tiled else {}
    tifffile.imwrite(path, image, photometric="rgb", resolution=(1e4 / 0.972, 1e4 / 0.972),
                     resolutionunit="CENTIMETER", metadata=None, **options)
    return path


@pytest.mark.parametrize("case", ["missing", "not-a-slide", "no-tissue", "too-small", "bad-stride"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, slide, case):
    slide_path = {
        "missing": lambda: tmp_path / "absent.svs",
        "not-a-slide": lambda: (tmp_path / "notes.svs").write_text("not a slide\n") and tmp_path / "notes.svs",
        "no-tissue": lambda: write_tiff(tmp_path / "glass.tif", np.full((1024, 1024, 3), 236, np.uint8)),
        "too-small": lambda: write_tiff(tmp_path / "tiny.tif", np.full((64, 80, 3), 200, np.uint8)),
        "bad-stride": lambda: slide.path,
    }[case]()
    expected = {"missing": "does not exist", "not-a-slide": "cannot read slide", "no-tissue": "no tissue found",
                "too-small": "smaller than the model's 96 x 96 patch", "bad-stride": "stride must divide"}[case]
    out = tmp_path / "out"
    extra = ["--stride", "50"] if case == "bad-stride" else []
    assert main(["slide", "predict", str(MODEL), str(slide_path), "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1, error
    assert not out.exists() or not any(out.iterdir())


def test_openslide_rejects_a_stripped_tiff_and_tiffslide_reads_it(tmp_path):
    stripped = write_tiff(tmp_path / "stripped.tif", np.full((300, 400, 3), 120, np.uint8), tiled=False)
    with open_slide(stripped) as opened:
        assert opened.backend == "tiffslide" and opened.dimensions == (400, 300)
        assert opened.read_region((0, 0), 0, (4, 4)).mean() == 120
    with pytest.raises(DataError, match="cannot read slide"):
        open_slide(stripped, backend="openslide")


def test_slide_info_cli(slide, tmp_path, capsys):
    thumbnail = tmp_path / "thumb.png"
    assert main(["slide", "info", str(slide.path), "--thumbnail", str(thumbnail), "--size", "300"]) == 0
    out = capsys.readouterr().out
    assert "openslide (generic-tiff)" in out and "0.972 x 0.972 um/px at level 0 (from the TIFF resolution tags)" in out
    assert "3840 x 2880" in out and "@" in out  # levels and a text thumbnail
    from PIL import Image

    assert Image.open(thumbnail).size == (300, 225)
    assert main(["slide", "info", str(slide.path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["level_dimensions"][0] == [3840, 2880] and facts["mpp_source"] == "tiff-tags"


def test_shards_split_a_list_once_and_folders_must_not_collide(capsys):
    slides = [f"s{index}.svs" for index in range(7)]
    shares = [shard(slides, index, 3) for index in (1, 2, 3)]
    assert sorted(sum(shares, [])) == sorted(slides) and shares[1] == ["s1.svs", "s4.svs"]
    assert slide_folders(["a/x.svs", "b/y.ome.tif"], Path("out")) == [Path("out/x"), Path("out/y")]
    with pytest.raises(DataError, match="same slide id .x."):
        slide_folders(["a/x.svs", "b/x.svs"], Path("out"))
    with pytest.raises(ConfigError):
        shard(slides, 4, 3)
    assert main(["slide", "predict", str(MODEL), "a.svs", "--out", "o", "--shard", "3/2"]) == 2
    assert "--shard must be I/N" in capsys.readouterr().err


def test_slide_package_does_not_import_training_code():
    probe = ("import sys, pcamlab.slide, pcamlab.cli.slide; "
             "print(sorted(m for m in sys.modules if m.startswith('pcamlab.train')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_an_output_folder_with_other_files_is_refused_untouched(tmp_path, slide, capsys):
    out = tmp_path / "out"
    (out / "small").mkdir(parents=True)
    (out / "small" / "notes.txt").write_text("mine\n")
    assert main(["slide", "predict", str(MODEL), str(slide.path), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "already holds files" in error and len(error.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["small"] and [p.name for p in (out / "small").iterdir()] == ["notes.txt"]


def test_a_finished_folder_of_other_settings_is_refused_not_skipped(tmp_path, slide, result, capsys):
    out = tmp_path / "out"
    out.mkdir()
    import shutil

    shutil.copytree(result.out_dir, out / "small")  # finished with stride 96 and the model's threshold
    assert main(["slide", "predict", str(MODEL), str(slide.path), "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    for extra in (["--stride", "48"], ["--threshold", "0.9"], ["--tissue-method", "otsu"]):
        assert main(["slide", "predict", str(MODEL), str(slide.path), "--out", str(out), *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert "finished slide result of other settings" in error and "--out" in error, error
        assert len(error.splitlines()) == 1
    from pcamlab.runtime import load_checkpoint, save_checkpoint

    same = tmp_path / "copy.safetensors"
    shutil.copy(MODEL, same)  # the same bytes under another name: the same model
    assert main(["slide", "predict", str(same), str(slide.path), "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    loaded = load_checkpoint(MODEL)
    other_model = save_checkpoint(tmp_path / "other.safetensors", loaded.model, loaded.config, loaded.contract,
                                  {"epoch": 99})  # other bytes: another model
    assert main(["slide", "predict", str(other_model), str(slide.path), "--out", str(out)]) == 2
    assert "model_sha256" in capsys.readouterr().err
    assert json.loads((out / "small" / "summary.json").read_text()) == result.summary  # untouched


def test_an_implausible_resolution_is_refused_before_anything_is_written(tmp_path, pools, capsys):
    bare = make_synthetic_slide(tmp_path / "bare.tif", *pools, width=960, height=960, seed=1, resolution_tags=False)
    coarse = make_synthetic_slide(tmp_path / "coarse.tif", *pools, width=960, height=960, seed=1, mpp=50)
    for path, extra in ((bare.path, ["--mpp", "100"]), (coarse.path, [])):
        out = tmp_path / f"out-{path.stem}"
        assert main(["slide", "predict", str(MODEL), str(path), "--out", str(out), *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert "coarser than 2x the model's 0.972 um/px" in error and len(error.splitlines()) == 1, error
        assert not out.exists()
    with open_slide(bare.path, mpp=1.9) as opened:  # up to 2x is allowed (read level 0, upsample <= 2x)
        assert plan_grid(opened, 96, 96, 0.972).read_scale == pytest.approx(0.972 / 1.9)


def test_out_naming_a_file_is_one_line(tmp_path, slide, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    assert main(["slide", "predict", str(MODEL), str(slide.path), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "is a file" in error and len(error.splitlines()) == 1, error
    with pytest.raises(RunError, match="which is a file"):
        predict_slide(load_predictor(MODEL), slide.path, out / "small")
    assert out.read_text() == "mine\n"


def test_a_closed_pipe_ends_quietly(slide):
    """`pcamlab slide info a.tif | head -3`: the reader leaves early; no BrokenPipeError traceback."""
    command = f"{sys.executable} -m pcamlab slide info {slide.path} | true"  # `true` closes the pipe at once
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_slide_predict_runs_the_runtime_asked_for_or_the_fastest_export(tmp_path, slide, capsys):
    import importlib.util
    import shutil

    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (pip install onnx onnxruntime)")
    from pcamlab.deploy import export_checkpoint

    model = tmp_path / "model.safetensors"
    shutil.copy(MODEL, model)
    out = tmp_path / "out"
    assert main(["slide", "predict", str(model), str(slide.path), "--out", str(out), "--runtime", "onnx"]) == 2
    error = capsys.readouterr().err.strip()
    assert "no model.onnx" in error and "pcamlab export" in error and len(error.splitlines()) == 1
    assert not out.exists()  # refused before anything was written
    assert main(["slide", "predict", str(model), str(slide.path), "--out", str(out)]) == 0  # torch: no export yet
    assert "runtime torch (no model.int8.onnx; no model.onnx)" in capsys.readouterr().out
    export_checkpoint(model, timing=False)
    assert main(["slide", "predict", str(model), str(slide.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out  # the same checkpoint on another runtime: the same model, finished
    assert f"runtime onnx ({tmp_path / 'model.onnx'} exported from this checkpoint" in printed
    assert "already finished" in printed
    fresh = tmp_path / "fresh"
    assert main(["slide", "predict", str(model), str(slide.path), "--out", str(fresh)]) == 0
    summary = json.loads((fresh / "small" / "summary.json").read_text())
    assert summary["tiles"] > 0 and summary["model"] == str(tmp_path / "model.onnx")  # the ONNX file ran
    torch_run = json.loads((out / "small" / "summary.json").read_text())
    assert torch_run["run"]["model_sha256"] == summary["run"]["model_sha256"]  # one model, two runtimes
    assert (torch_run["runtime"], summary["runtime"]) == ("torch", "onnx")  # the summary says which ran
