"""Training writes a complete run folder, never overwrites one, and resumes to identical weights."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from fixtures_data import write_tiny_h5
from safetensors.torch import load_file

from pcamlab.config import load_config
from pcamlab.errors import CheckpointError, RunError
from pcamlab.evaluate.metrics import roc_auc
from pcamlab.runtime import TorchPredictor, load_checkpoint, read_metadata
from pcamlab.train.loop import learning_rate_factor, train

TINY = [
    "model.name=baseline",
    "model.options={filters: [8, 16], dense_units: 16}",
    "train.batch_size=8",
    "train.epochs=3",
    "train.patience=0",
    "train.warmup_epochs=0.5",
    "train.learning_rate=0.003",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_h5(tmp_path_factory.mktemp("h5"), seeds=(1, 2))


def _config(data, *extra):
    return load_config(None, [f"data.path={data}", *TINY, *extra])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16 runs everywhere: native or emulated, tiny is cheap
def test_run_folder_is_complete_and_checkpoint_reloads(tiny_data, tmp_path, precision):
    out = tmp_path / "run"
    summary = train(_config(tiny_data, f"train.precision={precision}", "evaluate.threshold_method=youden"), out,
                    progress=False)
    assert summary["precision"] == precision
    for name in ("config.yaml", "history.csv", "best.safetensors", "last.safetensors", "summary.json", "resume.pt"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir()), "TensorBoard event file missing"
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert all(float(row["images_per_second"]) > 0 for row in rows)
    assert summary["finished"] and json.loads((out / "summary.json").read_text())["best_epoch"] == summary["best_epoch"]

    # the best checkpoint describes itself and reproduces the validation AUC it was chosen for
    checkpoint = load_checkpoint(out / "best.safetensors")
    assert checkpoint.config.model.name == "baseline"
    # every builder option is written out, defaults included, so a later default change cannot break it
    assert checkpoint.config.model.options["filters"] == [8, 16]
    assert {"dense_units", "dropout", "pool_size", "activation"} <= set(checkpoint.config.model.options)
    assert checkpoint.contract.patch_size == 96 and len(checkpoint.contract.mean) == 3
    from pcamlab.data import load_split_arrays, open_split

    images, labels, _ = load_split_arrays(open_split(tiny_data, "valid"))
    probabilities = TorchPredictor.from_checkpoint(checkpoint).predict_proba(images)
    assert roc_auc(labels, probabilities) == pytest.approx(summary["best"]["val_auc"], abs=1e-6)
    # the stored threshold is the one evaluate would choose on these fp32 scores, not a bf16-rounded one
    from pcamlab.evaluate.thresholds import choose_threshold

    assert checkpoint.contract.threshold == pytest.approx(choose_threshold(labels, probabilities), rel=1e-6)


def test_finished_run_is_never_overwritten(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_data, "train.epochs=1"), out, progress=False)
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    with pytest.raises(RunError, match="already holds a run; choose another out_dir"):
        train(_config(tiny_data, "train.epochs=1"), out, progress=False)
    with pytest.raises(RunError, match="already finished"):
        train(_config(tiny_data, "train.epochs=1"), out, resume=True, progress=False)
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_interrupted_run_resumes_to_identical_weights(tiny_data, tmp_path, precision):
    options = [f"train.precision={precision}", "train.deterministic=true"]  # deterministic: bitwise on CUDA too
    straight = tmp_path / "straight"
    train(_config(tiny_data, *options), straight, progress=False)

    interrupted = tmp_path / "interrupted"

    def stop_after_epoch_two(line: str) -> None:
        if line.startswith("epoch   2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_data, *options), interrupted, progress=False, log=stop_after_epoch_two)
    assert not (interrupted / "summary.json").exists()
    train(_config(tiny_data, *options), interrupted, resume=True, progress=False)

    expected = load_file(str(straight / "last.safetensors"))
    resumed = load_file(str(interrupted / "last.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)
    rows = list(csv.DictReader(open(interrupted / "history.csv")))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]


def test_learning_rate_schedule_shape():
    config = load_config(None, ["train.epochs=10", "train.warmup_epochs=1", "train.scheduler=cosine"])
    factors = [learning_rate_factor(config, epoch) for epoch in np.linspace(0, 10, 101)]
    assert factors[0] < 0.01 and factors[10] == pytest.approx(1.0, abs=1e-3)  # linear warm-up to the peak
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then decays monotonically
    assert factors[-1] == pytest.approx(0.01)
    step = load_config(None, ["train.scheduler=step", "train.step_size=2", "train.gamma=0.5", "train.warmup_epochs=0"])
    assert [learning_rate_factor(step, e) for e in (0, 1.9, 2, 4.5)] == [1.0, 1.0, 0.5, 0.25]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="only checkpoints written by pcamlab train"):
        load_checkpoint(foreign)


def test_tensorboard_holds_scalars_pr_curve_filters_and_gradcam(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(_config(tiny_data, "train.epochs=2"), out, progress=False)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/loss", "val/auc", "learning_rate"} <= set(tags["scalars"])
    assert [event.step for event in events.Scalars("val/auc")] == [1, 2]
    assert {"filters/first_layer", "gradcam/validation_patches"} <= {tag.split("/image/")[0] for tag in tags["images"]}
    assert any(tag.startswith("val/pr_curve") for tag in tags["tensors"])
