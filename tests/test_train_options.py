"""Every training knob does what it says: losses, schedules, EMA, freezing, thresholds, stain
normalisation, and data-parallel training equal to one process."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import write_tiny_h5
from safetensors.torch import load_file

from pcamlab.config import load_config
from pcamlab.runtime import TorchPredictor, load_checkpoint, read_metadata
from pcamlab.errors import ConfigError
from pcamlab.train.loop import HISTORY_COLUMNS, compute_loss, learning_rate_factor, split_head, train

TINY = [
    "model.name=baseline", "model.options={filters: [8, 16], dense_units: 16}", "train.batch_size=8",
    "train.epochs=2", "train.patience=0", "train.learning_rate=0.003", "train.warmup_epochs=0",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_h5(tmp_path_factory.mktemp("h5"))


def _config(data, *extra):
    return load_config(None, [f"data.path={data}", *TINY, *extra])


def test_losses_match_hand_computed_values():
    logits = torch.tensor([2.0, -1.0])
    labels = torch.tensor([1.0, 0.0])
    p = torch.sigmoid(logits)
    bce = -(torch.log(p[0]) + torch.log(1 - p[1])) / 2
    assert compute_loss(logits, labels, load_config()) == pytest.approx(bce.item(), rel=1e-6)
    focal = -((1 - p[0]) ** 2 * torch.log(p[0]) + p[1] ** 2 * torch.log(1 - p[1])) / 2
    assert compute_loss(logits, labels, load_config(None, ["train.loss=focal"])) == pytest.approx(focal.item(), rel=1e-6)
    mse = ((p[0] - 1) ** 2 + p[1] ** 2) / 2
    assert compute_loss(logits, labels, load_config(None, ["train.loss=mse"])) == pytest.approx(mse.item(), rel=1e-6)
    smooth = load_config(None, ["train.label_smoothing=0.2"])  # targets 0.9 and 0.1
    expected = -(0.9 * torch.log(p[0]) + 0.1 * torch.log(1 - p[0]) + 0.1 * torch.log(p[1]) + 0.9 * torch.log(1 - p[1])) / 2
    assert compute_loss(logits, labels, smooth) == pytest.approx(expected.item(), rel=1e-6)


def test_onecycle_and_plateau_schedules():
    config = load_config(None, ["train.scheduler=onecycle", "train.epochs=10", "train.warmup_epochs=3"])
    assert learning_rate_factor(config, 0) == pytest.approx(0.04)
    assert learning_rate_factor(config, 3) == pytest.approx(1.0)
    assert learning_rate_factor(config, 10) == pytest.approx(1e-4)
    plateau = load_config(None, ["train.scheduler=plateau", "train.warmup_epochs=0"])
    assert learning_rate_factor(plateau, 5, plateau_factor=0.25) == 0.25


def test_a_frozen_backbone_needs_pretrained_weights(tiny_data, tmp_path):
    """Freezing randomly initialised tensors is refused (tests/test_transfer.py freezes loaded ones)."""
    with pytest.raises(ConfigError, match="model.pretrained, which is not set"):
        train(_config(tiny_data, "train.epochs=1", "train.freeze_backbone_epochs=1"), tmp_path / "frozen", progress=False)
    assert not (tmp_path / "frozen" / "summary.json").exists()


def test_ema_threshold_and_options_run_and_are_recorded(tiny_data, tmp_path):
    out = tmp_path / "options"
    summary = train(_config(
        tiny_data, "train.ema_decay=0.9", "train.grad_clip=1.0", "train.l1=1e-5", "train.optimizer=rmsprop",
        "train.scheduler=plateau", "train.loss=focal", "evaluate.threshold_method=youden", "data.input_scaling=unit",
    ), out, progress=False)
    contract = read_metadata(out / "best.safetensors").contract
    assert contract.input_scaling == "unit"  # x / 255 only: the course way, kept for every predictor
    assert summary["threshold"] == contract.threshold
    assert 0.0 <= contract.threshold <= 1.0 and contract.threshold != 0.5  # chosen on validation
    assert contract.threshold_source == "youden"
    assert math.isfinite(float(summary["best"]["val_loss"]))


def test_stain_normalisation_is_fitted_stored_and_applied(tiny_data, tmp_path):
    out = tmp_path / "stain"
    train(_config(tiny_data, "train.epochs=1", "data.stain_normalization=reinhard"), out, progress=False)
    checkpoint = load_checkpoint(out / "best.safetensors")
    assert checkpoint.contract.stain_normalization["method"] == "reinhard"
    from pcamlab.data import load_split_arrays, open_split
    from pcamlab.data.normalize import normalizer_from_dict
    images, _, _ = load_split_arrays(open_split(tiny_data, "valid"))
    with_stain = TorchPredictor.from_checkpoint(checkpoint).predict_proba(images)
    contract = checkpoint.contract.replace(stain_normalization=None)
    normalised = normalizer_from_dict(checkpoint.contract.stain_normalization).transform(images)
    np.testing.assert_allclose(with_stain, TorchPredictor(checkpoint.model, contract).predict_proba(normalised), atol=1e-6)

    # explanations see the same input as predictions: the stain normaliser is applied there too
    from pcamlab.explain._common import images_to_input
    from pcamlab.explain.run import predict_probabilities

    np.testing.assert_allclose(predict_probabilities(checkpoint.model, images, checkpoint.contract), with_stain, atol=1e-6)
    torch.testing.assert_close(images_to_input(images, checkpoint.contract),
                               checkpoint.contract.to_model_input(torch.from_numpy(normalised)))


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


WORKER = """
import os, sys
from pcamlab.config import load_config
from pcamlab.train.loop import train
config = load_config(None, sys.argv[3:])
train(config, sys.argv[1], progress=False)
"""


def test_two_processes_equal_one_with_the_same_global_batch(tiny_data, tmp_path):
    # fp32: N processes equal one to float rounding; under bf16 the split batch rounds differently
    options = [f"data.path={tiny_data}", *TINY, "augment.dihedral=false", "train.device=cpu", "train.threads=1",
               "train.precision=fp32"]
    single = tmp_path / "single"
    train(load_config(None, options), single, progress=False)

    double = tmp_path / "double"
    port = str(_free_port())
    processes = []
    for rank in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER, str(double), "-", *options], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert json.loads((double / "summary.json").read_text())["processes"] == 2
    expected, got = load_file(str(single / "last.safetensors")), load_file(str(double / "last.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_time_budget_stops_inside_an_epoch(tiny_data, tmp_path):
    out = tmp_path / "budget"
    config = _config(tiny_data, "train.epochs=5", "train.batch_size=2", "train.time_budget_minutes=0.0001")
    summary = train(config, out, progress=False)
    assert summary["stop_reason"].startswith("time budget") and summary["epochs_run"] == 1
    rows = (out / "history.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 1 and (out / "best.safetensors").is_file()  # the partial epoch was kept
    state = torch.load(out / "resume.pt", weights_only=True)["optimizer"]["state"]
    steps = int(next(iter(state.values()))["step"])
    assert 1 <= steps < 16  # a full epoch is 32 patches / batch 2 = 16 steps: it stopped inside it


def test_budget_schedule_decays_over_the_time_budget():
    config = load_config(None, ["train.schedule_over=budget", "train.time_budget_minutes=15", "train.warmup_epochs=0.5",
                                "train.epochs=100"])
    assert learning_rate_factor(config, 0.25, budget_fraction=0.01) == pytest.approx(0.5, rel=0.01)  # warm-up, in epochs
    assert learning_rate_factor(config, 1.0, budget_fraction=0.5) == pytest.approx(0.505)  # half-way down the cosine
    assert learning_rate_factor(config, 1.0, budget_fraction=1.2) == pytest.approx(0.01)  # the end of the budget
    # while the budget is the nearer end, the epoch count does not move the decay
    assert learning_rate_factor(config, 9.0, budget_fraction=0.25) == learning_rate_factor(config, 1.0, budget_fraction=0.25)
    onecycle = load_config(None, ["train.scheduler=onecycle"])
    assert learning_rate_factor(onecycle, 0, budget_fraction=0.3) == pytest.approx(1.0)
    assert learning_rate_factor(onecycle, 0, budget_fraction=1.0) == pytest.approx(1e-4)


def test_budget_schedule_ends_low_when_the_budget_ends(tiny_data, tmp_path):
    config = _config(tiny_data, "train.epochs=100000", "train.patience=0", "train.warmup_epochs=0",
                     "train.time_budget_minutes=0.03", "train.schedule_over=budget")
    summary = train(config, tmp_path / "budget", progress=False)
    assert summary["stop_reason"].startswith("time budget")
    rates = [float(row.split(",")[HISTORY_COLUMNS.index("learning_rate")])
             for row in (tmp_path / "budget" / "history.csv").read_text().strip().splitlines()[1:]]
    peak = config.train.learning_rate
    assert rates[-1] < 0.05 * peak  # the schedule reached its end with the budget, not with the 100,000 epochs
    assert rates == sorted(rates, reverse=True)


def test_budget_schedule_needs_a_budget(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        train(_config(tiny_data, "train.schedule_over=budget"), tmp_path / "nobudget", progress=False)
