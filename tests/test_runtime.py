"""The trained model's base layer: checkpoint, InputContract, Predictor (``pcamlab.runtime``).

The fixtures in ``tests/assets`` are checkpoints written by pcamlab before this layer existed
(``scripts/make_checkpoint_fixture.py`` at commit b57d83f); they must keep loading and predicting the
probabilities they gave then.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pcamlab.data import open_split
from pcamlab.errors import CheckpointError, ConfigError, DataError
from pcamlab.runtime import (
    MODEL_SUFFIXES,
    RUNTIMES,
    InputContract,
    PatchPredictor,
    Predictor,
    TorchPredictor,
    load_checkpoint,
    load_predictor,
    read_metadata,
    save_checkpoint,
)

ASSETS = Path(__file__).parent / "assets"
FIXTURES = ("checkpoint-v1-simple-cnn-w4", "checkpoint-v1-reinhard-w4")


@pytest.fixture(scope="module")
def fixture_patches() -> np.ndarray:
    """The 8 sample patches the fixtures' expected probabilities were computed on."""
    reader = open_split("sample", "valid")
    indices = np.linspace(0, len(reader) - 1, 8).round().astype(int)
    return np.stack([reader[int(index)][0] for index in indices])  # (8, 96, 96, 3) uint8


@pytest.mark.parametrize("name", FIXTURES)
def test_checkpoints_written_before_the_runtime_load_and_predict_as_they_did(name, fixture_patches):
    expected = np.asarray(json.loads((ASSETS / f"{name}.expected.json").read_text())["probabilities"])
    checkpoint = load_checkpoint(ASSETS / f"{name}.safetensors")
    assert isinstance(checkpoint.contract, InputContract)
    assert checkpoint.contract.patch_size == 96 and checkpoint.contract.class_names == ("normal", "tumour")
    assert checkpoint.contract.mpp == pytest.approx(0.972) and checkpoint.contract.precision == "fp32"
    assert checkpoint.metadata["epoch"] == 3 and checkpoint.config.model.options["width"] == 4
    probabilities = load_predictor(ASSETS / f"{name}.safetensors").predict_proba(fixture_patches)
    assert probabilities.dtype == np.float32 and probabilities.shape == (8,)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_fixture_contract_fields_and_threshold_source_come_from_the_old_header():
    plain = read_metadata(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors").contract
    stained = read_metadata(ASSETS / "checkpoint-v1-reinhard-w4.safetensors").contract
    assert plain.threshold == 0.5 and plain.threshold_source == "fixed" and plain.stain_normalization is None
    # written before contracts named their threshold's source: it is the config's threshold_method
    assert stained.threshold == pytest.approx(0.37) and stained.threshold_source == "youden"
    assert stained.stain_normalization["method"] == "reinhard"


def test_contract_round_trips_and_has_one_set_of_defaults():
    contract = InputContract(mean=[0.7, 0.5, 0.6], std=[0.2, 0.2, 0.1], threshold=0.3, threshold_source="f1")
    stored = json.loads(json.dumps(contract.to_dict()))
    assert stored["mean"] == [0.7, 0.5, 0.6] and stored["channels"] == "RGB"
    assert InputContract.from_dict(stored) == contract
    defaults = InputContract()
    assert (defaults.patch_size, defaults.class_names, defaults.threshold, defaults.input_scaling,
            defaults.precision, defaults.mpp) == (96, ("normal", "tumour"), 0.5, "standardize", "fp32", 0.972)
    # the oldest contract shape: only the keys pcamlab-checkpoint-1 always wrote
    old = {"patch_size": 96, "channels": "RGB", "input": "...", "mean": [0.5] * 3, "std": [0.25] * 3,
           "class_names": ["normal", "tumour"], "output": "...", "threshold": 0.5}
    assert InputContract.from_dict(old) == InputContract(mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(Exception):
        contract.threshold = 0.9  # frozen


@pytest.mark.parametrize(("values", "message"), [
    ({"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, r"contract.std must be 3 positive numbers"),
    ({"mean": [0.5] * 2, "std": [0.2] * 3}, r"contract.mean must be 3 finite numbers"),
    ({"std": [0.2] * 3}, r"has no mean"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "threshold": 50}, r"contract.threshold must be a probability"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "input_scaling": "unitt"}, r"did you mean 'unit'"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "treshold": 0.4}, r"unknown field 'treshold' \(did you mean 'threshold'"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "patch_size": 0}, r"contract.patch_size must be a positive integer"),
])
def test_a_bad_contract_fails_in_one_line_naming_the_field(values, message):
    with pytest.raises(CheckpointError, match=message):
        InputContract.from_dict(values, "checkpoint 'x.safetensors': contract")


def test_batch_check_and_transform_to_model_input():
    contract = InputContract(patch_size=8, mean=(0.5, 0.25, 0.75), std=(0.5, 0.25, 0.25))
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = contract.to_model_input(torch.from_numpy(images))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = (images.transpose(0, 3, 1, 2) / 255.0 - np.array([0.5, 0.25, 0.75]).reshape(1, 3, 1, 1)) \
        / np.array([0.5, 0.25, 0.25]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    unit = contract.replace(input_scaling="unit").to_model_input(torch.from_numpy(images))
    np.testing.assert_allclose(unit.numpy(), images.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    with pytest.raises(DataError, match=r"uint8 RGB patches of shape \(N, 8, 8, 3\); got float64"):
        contract.check_batch(images.astype(float))
    with pytest.raises(DataError, match="this model takes 8x8 patches; got 4x4"):
        contract.check_batch(images[:, :4, :4])


class _Constant(PatchPredictor):
    """A toy runtime: probability = mean red value of the patch's top-left pixel row, so views differ."""

    def __init__(self):
        self.contract = InputContract(patch_size=4)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return batch[:, 0, :, 0].mean(axis=1) / 255.0


def test_tta_is_written_once_for_any_runtime():
    images = np.random.default_rng(1).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    predictor = _Constant()
    assert isinstance(predictor, Predictor)
    plain = predictor.predict_proba(images, batch_size=2)
    np.testing.assert_allclose(plain, images[:, 0, :, 0].mean(axis=1) / 255.0, atol=1e-7)
    # the 8 dihedral views put each of the 4 borders of the patch first, each twice
    borders = [images[:, 0, :, 0], images[:, -1, :, 0], images[:, :, 0, 0], images[:, :, -1, 0]]
    expected = np.mean([border.mean(axis=1) for border in borders], axis=0) / 255.0
    np.testing.assert_allclose(predictor.predict_proba(images, batch_size=3, tta=True), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        predictor.predict_proba(images, batch_size=0)


def test_torch_predictor_tta_equals_averaging_flipped_batches(fixture_patches):
    checkpoint = load_checkpoint(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors")
    predictor = TorchPredictor.from_checkpoint(checkpoint)
    views = [np.ascontiguousarray(np.rot90(fixture_patches, k, axes=(1, 2))) for k in range(4)]
    views += [np.ascontiguousarray(view[:, :, ::-1]) for view in views]
    manual = np.mean([predictor.predict_proba(view) for view in views], axis=0)
    np.testing.assert_allclose(predictor.predict_proba(fixture_patches, tta=True), manual, atol=1e-6)


def test_load_predictor_names_the_runtimes_it_knows(tmp_path):
    assert set(RUNTIMES.names()) >= {"torch", "onnx", "torchscript"}
    assert {".safetensors", ".onnx", ".pt"} <= set(MODEL_SUFFIXES)
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"suffix '.h5'; pass one of \['.onnx', '.safetensors'"):
        load_predictor(tmp_path / "model.h5")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_predictor(tmp_path / "missing.safetensors")


def test_save_then_load_keeps_every_contract_field(tmp_path):
    checkpoint = load_checkpoint(ASSETS / "checkpoint-v1-reinhard-w4.safetensors")
    contract = checkpoint.contract.replace(threshold=0.42, threshold_source="sensitivity", precision="bf16",
                                           mpp=0.486, class_names=("benign", "metastasis"))
    path = save_checkpoint(tmp_path / "x.safetensors", checkpoint.model, checkpoint.config, contract, {"epoch": 1})
    assert load_checkpoint(path).contract == contract
    assert TorchPredictor.from_checkpoint(path).precision == "bf16"


def test_the_runtime_imports_without_the_training_package():
    code = ("import sys, pcamlab.runtime, pcamlab.runtime.predictor; "
            "print(sorted(m for m in sys.modules if m.startswith(('pcamlab.train', 'pcamlab.cli'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- every command that scores patches goes through the Predictor -----------------------------------

needs_onnx = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed"
)


@needs_onnx
def test_evaluate_scores_an_onnx_file_like_the_checkpoint_it_was_exported_from(tmp_path, capsys):
    from pcamlab.cli.main import main
    from pcamlab.deploy import export_checkpoint
    from pcamlab.evaluate.run import evaluate_checkpoint

    checkpoint = ASSETS / "checkpoint-v1-reinhard-w4.safetensors"  # with a stain normaliser, outside the graph
    onnx_path = export_checkpoint(checkpoint, tmp_path / "model.onnx", exporter="legacy")["path"]
    torch_metrics = evaluate_checkpoint(checkpoint, "sample", "valid", tmp_path / "eval-torch")
    assert main(["evaluate", str(onnx_path), "--out", str(tmp_path / "eval-onnx")]) == 0  # data: the model's own
    onnx_metrics = json.loads((tmp_path / "eval-onnx" / "metrics.json").read_text())
    assert onnx_metrics["n"] == torch_metrics["n"] == 200
    assert abs(onnx_metrics["roc_auc"] - torch_metrics["roc_auc"]) < 1e-5
    assert onnx_metrics["threshold"] == torch_metrics["threshold"] == pytest.approx(0.37)
    assert onnx_metrics["model"] == "simple-cnn" and onnx_metrics["epoch"] == 3
    assert "ROC AUC" in capsys.readouterr().out


def test_evaluate_and_explain_of_one_checkpoint_see_the_same_kaggle_split(tmp_path):
    from fixtures_data import sample_patches, write_kaggle

    from pcamlab.config import load_config
    from pcamlab.evaluate.run import evaluate_checkpoint
    from pcamlab.explain import run_explain

    images, labels = sample_patches(40, "valid", seed=2)
    root = write_kaggle(tmp_path / "kaggle", images, labels)
    fixture = load_checkpoint(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors")
    config = load_config(overrides=["model.name=simple-cnn", "model.options={width: 4}", f"data.path={root}",
                                    "data.format=kaggle", "data.valid_fraction=0.3", "data.seed=7"])
    path = save_checkpoint(tmp_path / "run" / "best.safetensors", fixture.model, config, fixture.contract)

    metrics = evaluate_checkpoint(path, None, "valid", tmp_path / "run" / "eval-valid")
    assert metrics["n"] == 12  # 30% of 40, the checkpoint's fraction (the default 0.1 would give 4)
    evaluated = (tmp_path / "run" / "eval-valid" / "predictions.csv").read_text().splitlines()[1:]
    names = [line.split(",")[0] for line in evaluated]
    summary = run_explain(path, None, "valid", tmp_path / "run" / "explain-valid", n=5, per_group=1)
    reader = open_split(root, "valid", "kaggle", valid_fraction=0.3, seed=7)
    assert [reader.name(i) for i in range(len(reader))] == names
    assert summary["feature_map_patch"] in names and max(summary["indices"]) < len(names)


def test_bench_times_a_model_file_end_to_end_through_its_predictor(tmp_path, capsys):
    from pcamlab.cli.main import main
    from pcamlab.deploy.bench import bench_model_file

    rows = bench_model_file(ASSETS / "checkpoint-v1-reinhard-w4.safetensors", batch_sizes=[16, 32], patches=32,
                            repeats=1)  # with its stain normaliser
    assert [(row["runtime"], row["batch_size"], row["patches"]) for row in rows] == [("torch", 16, 32), ("torch", 32, 32)]
    assert all(row["images_per_second"] > 0 and row["ms_per_patch"] > 0 for row in rows)
    out = tmp_path / "bench.csv"
    assert main(["bench", "--model", str(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors"), "--batch-size", "8",
                 "--tta", "--patches", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "patches/s" in printed and "checkpoint-v1-simple-cnn-w4.safetensors  torch" in printed
    assert out.read_text().splitlines()[0].startswith("model,runtime,batch_size,tta,patches,images_per_second")


@pytest.mark.parametrize("name", ["simple-cnn", "fcn", "vgg-small", "densenet-small", "resnet18"])
def test_torch_predictor_scores_with_batch_norm_folded_and_leaves_the_model_alone(name, fixture_patches):
    from pcamlab.models import build_model
    from pcamlab.runtime.fold import count_batch_norms

    torch.manual_seed(0)
    model = build_model(name).train()
    with torch.no_grad():  # running statistics away from their initial 0/1, so folding has work to do
        for _ in range(2):
            model(torch.randn(4, 3, 96, 96) * 2 + 0.5)
    model.eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded = TorchPredictor(model, InputContract(), fold_batch_norm=True)
    plain = TorchPredictor(model, InputContract(), fold_batch_norm=False)
    np.testing.assert_allclose(folded.predict_proba(fixture_patches), plain.predict_proba(fixture_patches), atol=2e-5)
    assert count_batch_norms(folded.scoring_model) < count_batch_norms(model)  # it did fold
    assert plain.scoring_model is model and folded.model is model
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_folding_keeps_a_network_without_a_conv_then_batch_norm_pair_as_it_is():
    from torch import nn

    from pcamlab.runtime.fold import count_batch_norms, fold_batch_norm

    pre_activation = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.Flatten())  # BN before the conv
    pre_activation.eval()
    x = torch.randn(2, 3, 8, 8)
    folded = fold_batch_norm(pre_activation)
    assert count_batch_norms(folded) == 1 and torch.allclose(folded(x), pre_activation(x))


def test_scoring_leaves_a_model_without_batch_norm_traceable_and_unchanged(fixture_patches):
    """The course baseline has no batch norm: the predictor must still copy it, not convert it in place."""
    from pcamlab.models import build_model

    model = build_model("baseline").eval()
    layouts = [parameter.is_contiguous() for parameter in model.parameters()]
    TorchPredictor(model, InputContract()).predict_proba(fixture_patches)
    assert not any(parameter.is_inference() for parameter in model.parameters())
    assert [parameter.is_contiguous() for parameter in model.parameters()] == layouts
    torch.jit.trace(model, torch.zeros(1, 3, 96, 96))  # what export does next with the same model


def test_one_predictor_scores_new_weights_loaded_into_its_model(fixture_patches):
    """The time-to-AUC benchmark loads snapshot after snapshot into one model behind one predictor."""
    from pcamlab.models import build_model

    torch.manual_seed(0)
    model = build_model("simple-cnn", width=4).eval()
    first = {key: value.clone() for key, value in model.state_dict().items()}
    torch.manual_seed(1)
    second = build_model("simple-cnn", width=4).state_dict()
    predictor = TorchPredictor(model, InputContract())
    before = predictor.predict_proba(fixture_patches)
    model.load_state_dict(second)
    after = predictor.predict_proba(fixture_patches)
    np.testing.assert_allclose(after, TorchPredictor(model, InputContract(), fold_batch_norm=False).predict_proba(fixture_patches), atol=2e-5)
    assert not np.allclose(before, after, atol=1e-4)
    model.load_state_dict(first)
    np.testing.assert_allclose(predictor.predict_proba(fixture_patches), before, atol=1e-6)


def test_a_step_runs_as_forward_passes_of_at_most_forward_batch_size(fixture_patches):
    from pcamlab.runtime.predictor import CPU_FORWARD_BATCH

    images = np.random.default_rng(2).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    predictor = _Constant()
    sizes = []
    forward = predictor.forward
    predictor.forward = lambda batch: sizes.append(len(batch)) or forward(batch)
    predictor.forward_batch_size = 4
    chunked = predictor.predict_proba(images, batch_size=7, tta=True)
    assert sizes == [4, 3] * 8 + [3] * 8  # step of 7 in passes of <= 4, each of the 8 views; then the last 3
    sizes.clear()
    predictor.forward_batch_size = None
    np.testing.assert_array_equal(predictor.predict_proba(images, batch_size=7, tta=True), chunked)
    assert sizes == [7] * 8 + [3] * 8
    checkpoint = load_checkpoint(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors")
    on_cpu = TorchPredictor.from_checkpoint(checkpoint)
    assert on_cpu.forward_batch_size == CPU_FORWARD_BATCH == 32  # measured fastest on a CPU (predictor.py)
    whole = on_cpu.predict_proba(fixture_patches, batch_size=len(fixture_patches))
    on_cpu.forward_batch_size = 3
    np.testing.assert_allclose(on_cpu.predict_proba(fixture_patches, batch_size=len(fixture_patches)), whole, atol=1e-6)
