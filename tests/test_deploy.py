"""Deployment: predict files/folders/h5 into a CSV, export to ONNX/TorchScript, reload, compare with torch.

The checkpoint is made without training: a seeded ``baseline`` model saved with a contract whose
threshold is the median torch probability of the test patches, so both predicted classes occur.
Patches are real ones from the shipped sample, written losslessly (PNG, h5) so that every input path
must reproduce the torch probabilities exactly.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import sample_patches, write_bad_image, write_h5
from PIL import Image

from pcamlab.cli.main import main
from pcamlab.config import ModelConfig, RunConfig
from pcamlab.deploy import export_checkpoint, load_onnx, load_predictor, predict_files
from pcamlab.errors import CheckpointError, ConfigError, DataError, RunError
from pcamlab.models import build_model
from pcamlab.runtime import InputContract, TorchPredictor, load_checkpoint, save_checkpoint
from pcamlab.runtime.predictor import ONNX_METADATA_KEYS

# onnx/onnxruntime are in the dev venv but not (yet) in pyproject's dependencies: skip, don't fail.
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install onnx onnxruntime)",
)

MEAN, STD = [0.70, 0.54, 0.69], [0.16, 0.20, 0.15]
TOLERANCE = 1e-4  # the export contract: exported model within 1e-4 of torch
CSV_DIGITS = 1e-6  # probabilities are written with 6 decimals


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return sample_patches(8, "valid", seed=3)[0]  # (8, 96, 96, 3) uint8, both classes


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory, patches) -> Path:
    config = RunConfig(model=ModelConfig(name="baseline"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config.model).eval()
    probabilities = TorchPredictor(model, InputContract(mean=MEAN, std=STD)).predict_proba(patches)
    contract = InputContract(mean=MEAN, std=STD, threshold=float(np.median(probabilities)))
    path = tmp_path_factory.mktemp("checkpoint") / "best.safetensors"
    return save_checkpoint(path, model, config, contract, {"epoch": 1})


@pytest.fixture(scope="module")
def checkpoint(checkpoint_path):
    return load_checkpoint(checkpoint_path)


@pytest.fixture(scope="module")
def reference(checkpoint, patches) -> np.ndarray:
    return TorchPredictor.from_checkpoint(checkpoint).predict_proba(patches)


@pytest.fixture(scope="module")
def onnx_path(checkpoint_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    report = export_checkpoint(checkpoint_path, out, exporter="legacy")
    assert report["path"] == out and report["exporter"] == "legacy"
    return out


def write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"patch{index:02d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# -- predict ---------------------------------------------------------------------------------------


def test_predict_nested_folder_matches_torch_and_writes_csv(tmp_path, checkpoint_path, checkpoint, patches, reference):
    root = tmp_path / "inputs"
    first = write_pngs(root / "slide_a", patches[:5])
    second = write_pngs(root / "slide_b" / "deeper", patches[5:])
    out = tmp_path / "out" / "predictions.csv"

    result = predict_files(checkpoint_path, [root], out, batch_size=3)  # batches cross folder borders

    assert result.names == [str(path) for path in first + second]
    np.testing.assert_allclose(result.probabilities, reference, atol=1e-6)
    threshold = checkpoint.contract.threshold
    assert result.threshold == threshold
    np.testing.assert_array_equal(result.predicted, (reference >= threshold).astype(int))
    assert 0 < result.predicted.sum() < len(patches)  # both classes occur at the median threshold
    rows = read_csv(out)
    assert list(rows[0]) == ["patch", "probability", "predicted", "class_name"]
    assert [row["patch"] for row in rows] == result.names
    np.testing.assert_allclose([float(row["probability"]) for row in rows], reference, atol=CSV_DIGITS)
    assert [int(row["predicted"]) for row in rows] == result.predicted.tolist()
    assert [row["class_name"] for row in rows] == [["normal", "tumour"][p] for p in result.predicted]
    assert not [path for path in out.parent.iterdir() if path.name != "predictions.csv"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's owner-only 0600


def test_predict_h5_rows_then_image_file_in_input_order(tmp_path, checkpoint_path, patches, reference):
    root = write_h5(tmp_path / "h5", {"test": (patches[:6], np.zeros(6, dtype=np.int64))})
    x_file = root / "camelyonpatch_level_2_split_test_x.h5"
    image = write_pngs(tmp_path / "single", patches[6:7])[0]

    result = predict_files(checkpoint_path, [x_file, image], batch_size=4)

    assert result.names == [f"{x_file} row {row}" for row in range(6)] + [str(image)]
    np.testing.assert_allclose(result.probabilities, reference[:7], atol=1e-6)
    assert result.out is None


def test_predict_tta_matches_torch_tta(tmp_path, checkpoint_path, checkpoint, patches):
    folder = tmp_path / "tta"
    write_pngs(folder, patches[:3])
    expected = TorchPredictor.from_checkpoint(checkpoint).predict_proba(patches[:3], tta=True)
    result = predict_files(checkpoint_path, [folder], tta=True)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    plain = TorchPredictor.from_checkpoint(checkpoint).predict_proba(patches[:3])
    assert np.abs(result.probabilities - plain).max() > 1e-6  # TTA really averaged other views


def test_predict_refuses_to_overwrite_unless_forced(tmp_path, checkpoint_path, patches):
    folder = tmp_path / "images"
    write_pngs(folder, patches[:2])
    out = tmp_path / "predictions.csv"
    out.write_text("keep me\n")
    with pytest.raises(RunError, match="already exists.*force=True"):
        predict_files(checkpoint_path, [folder], out)
    assert out.read_text() == "keep me\n"
    predict_files(checkpoint_path, [folder], out, force=True)
    assert len(read_csv(out)) == 2


@pytest.mark.parametrize("kind", ["small", "grayscale", "truncated", "rgba"])
def test_bad_image_is_one_line_data_error_naming_the_file(tmp_path, checkpoint_path, patches, kind):
    folder = tmp_path / "mixed"
    write_pngs(folder, patches[:2])
    bad = write_bad_image(folder / "zz_bad.png", kind, patches[0])
    out = tmp_path / "predictions.csv"
    with pytest.raises(DataError) as caught:
        predict_files(checkpoint_path, [folder], out)
    message = str(caught.value)
    assert str(bad) in message and "\n" not in message
    assert not out.exists() and list(tmp_path.glob(".predictions.csv.*")) == []  # atomic: nothing left

    result = predict_files(checkpoint_path, [folder], skip_bad=True)
    assert result.skipped == [str(bad)] and len(result.names) == 2


def test_bad_inputs_fail_before_the_model_runs(tmp_path, checkpoint_path, patches):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    root = write_h5(tmp_path / "h5", {"test": (patches[:2], np.zeros(2, dtype=np.int64))})
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "holds no image file",
        tmp_path / "notes.txt": "suffix '.txt'",
        root / "camelyonpatch_level_2_split_test_y.h5": "no dataset 'x'.*_x.h5",
    }
    for path, expected in cases.items():
        with pytest.raises(DataError, match=expected) as caught:
            predict_files(checkpoint_path, [path])
        assert str(path) in str(caught.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        predict_files(tmp_path / "nope.safetensors", [root])


# -- export and reload -----------------------------------------------------------------------------


@needs_onnx
def test_onnx_export_reload_matches_torch(onnx_path, checkpoint, patches, reference):
    import onnx

    model = onnx.load(str(onnx_path))
    properties = {entry.key: entry.value for entry in model.metadata_props}
    assert InputContract.from_dict(json.loads(properties[ONNX_METADATA_KEYS["contract"]])) == checkpoint.contract
    assert properties[ONNX_METADATA_KEYS["input"]] == "uint8"
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    graph_input = model.graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [dim.dim_value for dim in dims[1:]] == [96, 96, 3]  # dynamic batch, NHWC

    predictor = load_onnx(onnx_path)
    assert predictor.contract == checkpoint.contract
    for batch_size in (1, 5, 8):
        got = predictor.predict_proba(patches, batch_size=batch_size)
        assert np.abs(got - reference).max() < TOLERANCE
    tta = TorchPredictor.from_checkpoint(checkpoint).predict_proba(patches, tta=True)
    assert np.abs(predictor.predict_proba(patches, tta=True) - tta).max() < TOLERANCE
    with pytest.raises(DataError, match="96x96"):
        predictor.predict_proba(patches[:, :64, :64])


@needs_onnx
def test_predict_with_the_exported_onnx_file(tmp_path, onnx_path, patches, reference):
    write_pngs(tmp_path / "images", patches)
    result = predict_files(onnx_path, [tmp_path / "images"])
    assert np.abs(result.probabilities - reference).max() < TOLERANCE


@needs_onnx
@pytest.mark.parametrize("format, input_kind", [("onnx", "float"), ("torchscript", "uint8")])
def test_other_export_forms_reload_and_match(tmp_path, checkpoint, patches, reference, format, input_kind):
    report = export_checkpoint(checkpoint, tmp_path / f"model.{format}", format=format, input_kind=input_kind,
                               exporter="legacy")
    assert report["max_abs_diff"] <= TOLERANCE
    predictor = load_predictor(report["path"])
    assert predictor.contract == checkpoint.contract
    assert np.abs(predictor.predict_proba(patches, batch_size=3) - reference).max() < TOLERANCE


@needs_onnx
def test_export_refuses_overwrite_and_bad_options(tmp_path, checkpoint_path, onnx_path):
    before = onnx_path.read_bytes()
    with pytest.raises(RunError, match="already exists"):
        export_checkpoint(checkpoint_path, onnx_path, exporter="legacy")
    assert onnx_path.read_bytes() == before
    with pytest.raises(ConfigError, match="did you mean 'onnx'"):
        export_checkpoint(checkpoint_path, tmp_path / "m.onx", format="onx")
    with pytest.raises(ConfigError, match="opset must be 17"):
        export_checkpoint(checkpoint_path, tmp_path / "m.onnx", exporter="legacy", opset=13)


@needs_onnx
def test_failed_verification_keeps_no_file(tmp_path, checkpoint_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(RunError, match="disagrees with torch.*nothing was written"):
        export_checkpoint(checkpoint_path, out, exporter="legacy", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


@needs_onnx
def test_stain_normalised_checkpoint_round_trips_through_onnx(tmp_path, checkpoint, patches):
    from pcamlab.data.normalize import NORMALIZERS

    reference_patches = sample_patches(8, "train", seed=5)[0]
    contract = checkpoint.contract.replace(
        stain_normalization=NORMALIZERS.get("reinhard")().fit(reference_patches).to_dict())
    path = save_checkpoint(tmp_path / "stain.safetensors", checkpoint.model, checkpoint.config, contract)
    expected = TorchPredictor(checkpoint.model, contract).predict_proba(patches)  # normalises the stain first

    report = export_checkpoint(path, tmp_path / "stain.onnx", exporter="legacy")
    assert report["stain_normalization"] == "reinhard" and report["max_abs_diff"] <= TOLERANCE
    predictor = load_onnx(report["path"])
    assert np.abs(predictor.predict_proba(patches) - expected).max() < TOLERANCE
    raw = predictor.run(predictor.model_input(patches))  # the graph alone: no stain normalisation
    assert np.abs(raw - expected).max() > 1e-3  # so the normaliser really changed the input
    assert np.abs(predict_files(path, [write_pngs(tmp_path / "png", patches)[0]]).probabilities
                  - expected[:1]).max() < 1e-6


@needs_onnx
@pytest.mark.slow
def test_dynamo_exporter_matches_torch(tmp_path, checkpoint_path, patches, reference):
    report = export_checkpoint(checkpoint_path, tmp_path / "dynamo.onnx", exporter="dynamo")
    assert report["exporter"] == "dynamo" and report["max_abs_diff"] <= TOLERANCE
    assert np.abs(load_onnx(report["path"]).predict_proba(patches) - reference).max() < TOLERANCE


# -- command line ----------------------------------------------------------------------------------


@needs_onnx
def test_cli_export_then_predict(tmp_path, checkpoint_path, patches, reference, capsys):
    write_pngs(tmp_path / "images", patches)
    exported = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint_path), "--exporter", "legacy", "--out", str(exported)]) == 0
    assert "max |probability difference|" in capsys.readouterr().out
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(exported), str(tmp_path / "images"), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert np.abs(np.array([float(row["probability"]) for row in rows]) - reference).max() < TOLERANCE
    assert ", fixed by evaluate.threshold, not chosen on data)" in capsys.readouterr().out
    assert main(["predict", str(exported), str(tmp_path / "images"), "--out", str(out), "--force",
                 "--threshold", "0.3"]) == 0
    assert "(threshold 0.300, given by --threshold)" in capsys.readouterr().out  # the count says its threshold

    capsys.readouterr()
    assert main(["predict", str(checkpoint_path), str(tmp_path / "images"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("pcamlab: error:") and "--force" in error and "\n" not in error
    assert main(["predict", str(checkpoint_path), str(tmp_path / "nothing")]) == 2


@needs_onnx
@pytest.mark.parametrize("scaling", ["standardize", "unit"])
def test_the_exported_graph_normalises_like_the_contract(tmp_path, checkpoint, patches, scaling):
    """The export normalises the flattened patch (image * scale + shift); same values as the contract's."""
    from pcamlab.deploy.export import UInt8PatchModel

    contract = checkpoint.contract.replace(input_scaling=scaling)
    wrapped = UInt8PatchModel(torch.nn.Identity(), contract)
    images = torch.from_numpy(patches)
    flat = images.flatten(1).float() * wrapped.scale + wrapped.shift
    np.testing.assert_allclose(flat.view(images.shape).permute(0, 3, 1, 2).numpy(),
                               contract.to_model_input(images).numpy(), atol=1e-6)
    path = save_checkpoint(tmp_path / "unit.safetensors", checkpoint.model, checkpoint.config, contract, {})
    report = export_checkpoint(path, timing=False)
    assert report["max_abs_diff"] <= TOLERANCE and report["speed"] is None
    reference = TorchPredictor.from_checkpoint(path).predict_proba(patches)
    assert np.abs(load_predictor(report["path"]).predict_proba(patches) - reference).max() < TOLERANCE


@needs_onnx
def test_export_refuses_an_out_that_no_runtime_opens_or_that_is_the_checkpoint(tmp_path, checkpoint_path, capsys):
    before = checkpoint_path.read_bytes()
    for out, message in ((checkpoint_path, "must end with .onnx"), (tmp_path / "model.txt", "must end with .onnx"),
                         (tmp_path, "is a folder")):
        assert main(["export", str(checkpoint_path), "--out", str(out), "--force"]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
    assert checkpoint_path.read_bytes() == before and not (tmp_path / "model.txt").exists()
    with pytest.raises(ConfigError, match="must end with .pt or .torchscript"):
        export_checkpoint(checkpoint_path, tmp_path / "model.onnx", format="torchscript")


@needs_onnx
def test_export_keeps_the_int8_name_for_int8_and_an_interrupt_is_not_an_exporter_failure(tmp_path, checkpoint_path):
    from pcamlab.deploy.export import _reraise_interrupt

    with pytest.raises(ConfigError, match=r"\.int8\.onnx is for quantize='int8' exports only"):
        export_checkpoint(checkpoint_path, tmp_path / "best.int8.onnx")
    assert not any(tmp_path.iterdir())
    try:  # torch.export wraps a Ctrl+C / SIGTERM raised inside it in its own error
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise RuntimeError("Failed to export the model with torch.export") from interrupt
    except RuntimeError as wrapped:
        with pytest.raises(KeyboardInterrupt):
            _reraise_interrupt(wrapped)
    _reraise_interrupt(RuntimeError("an ordinary exporter failure"))  # returns: the legacy fallback goes on
