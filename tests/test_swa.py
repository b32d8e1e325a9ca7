"""Stochastic weight averaging over the decayed tail (train.swa_lr_fraction): what it averages, where it goes."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fixtures_data import write_tiny_h5
from safetensors.torch import load_file
from torch import nn

from pcamlab.config import load_config
from pcamlab.errors import ConfigError
from pcamlab.train.loop import train
from pcamlab.train.swa import TailAverage

TINY = [
    "model.name=simple-cnn", "model.options={width: 4}", "train.batch_size=8", "train.patience=0",
    "train.learning_rate=0.003", "train.warmup_epochs=0", "train.precision=fp32", "train.threads=1",
    "train.scheduler=cosine", "train.max_steps_per_epoch=3", "data.cache=stream",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_h5(tmp_path_factory.mktemp("h5"))


def _config(data, *extra):
    return load_config(None, [f"data.path={data}", *TINY, *extra])


def test_the_average_is_the_mean_of_the_tail_epochs_only():
    net = nn.Linear(3, 1)
    tail = TailAverage(net, lr_fraction=0.25)
    seen = []
    for epoch, (value, factor, whole) in enumerate([(1.0, 0.9, True), (2.0, 0.2, False), (3.0, 0.25, True),
                                                   (5.0, 0.1, True), (10.0, 0.0, True)], start=1):
        with torch.no_grad():
            net.weight.fill_(value)
        if tail.after_epoch(net, epoch=epoch, learning_rate_factor=factor, whole_epoch=whole):
            seen.append(value)
    assert tail.epochs == [3, 4, 5] and seen == [3.0, 5.0, 10.0]  # not the high-rate epoch, not the crop epoch
    assert torch.allclose(tail.model.weight, torch.full((1, 3), 6.0))
    restored = TailAverage(nn.Linear(3, 1), lr_fraction=0.25)
    restored.load_state_dict(tail.state_dict())
    assert restored.epochs == [3, 4, 5] and torch.equal(restored.model.weight, tail.model.weight)
    assert tail.crop_epochs_in_tail == [2] and restored.crop_epochs_in_tail == [2]  # the crop epoch in the tail, kept on resume
    with torch.no_grad():
        net.weight.fill_(0.0)
    restored.after_epoch(net, epoch=6, learning_rate_factor=0.0, whole_epoch=True)
    assert torch.allclose(restored.model.weight, torch.full((1, 3), 4.5))  # (3 + 5 + 10 + 0) / 4


def test_batch_norm_statistics_are_recomputed_for_the_average():
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    tail = TailAverage(net, lr_fraction=1.0)
    tail.after_epoch(net, epoch=1, learning_rate_factor=1.0, whole_epoch=True)
    batches = [torch.randn(16, 3, 4, 4) * 3 + 7 for _ in range(8)]
    used = tail.recompute_batch_norm(iter(batches), patches=40)
    assert used == 48  # whole batches until at least 40 patches
    with torch.no_grad():
        expected = torch.cat([tail.model[0](batch) for batch in batches[:3]]).mean(dim=(0, 2, 3))
    assert torch.allclose(tail.model[1].running_mean, expected, atol=1e-4)
    assert TailAverage(nn.Linear(2, 1), 1.0).recompute_batch_norm(iter(batches)) == 0  # no batch-norm: nothing


def test_a_run_averages_its_tail_writes_swa_and_keeps_the_better_as_best(tiny_data, tmp_path):
    epoch_weights = []

    def remember(epoch, row):
        epoch_weights.append(load_file(str(tmp_path / "run" / "last.safetensors")))

    lines: list[str] = []
    summary = train(_config(tiny_data, "train.epochs=5", "train.swa_lr_fraction=0.7"), tmp_path / "run",
                    progress=False, on_epoch=remember, log=lines.append)
    # cosine over 5 epochs of 3 steps: the last steps of epochs 1..5 are at 2/15, 5/15, 8/15, 11/15, 14/15 of it,
    # learning-rate factors 0.96, 0.75, 0.45, 0.17, 0.01 -> epochs 3-5
    assert summary["swa"]["epochs"] == [3, 4, 5] and summary["swa"]["weights"] == "model"
    average = load_file(str(tmp_path / "run" / "swa.safetensors"))
    for name, tensor in average.items():
        if "running" in name or "num_batches" in name:
            continue
        expected = torch.stack([weights[name] for weights in epoch_weights[2:]]).mean(0)
        assert torch.allclose(tensor, expected, atol=1e-6), name
    assert summary["swa"]["batch_norm_patches"] > 0
    best = load_file(str(tmp_path / "run" / "best.safetensors"))
    history_best = summary["best"]["val_auc"]
    if summary["best_is_swa"]:
        assert all(torch.equal(best[name], average[name]) for name in average)
        assert history_best == pytest.approx(summary["swa"]["val_auc"], abs=1e-6)
    else:
        assert summary["swa"]["val_auc"] <= history_best
    assert any(line.startswith("swa: the average of epochs 3-5 (3 epochs") for line in lines)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["swa"]["epochs"] == [3, 4, 5]


def test_with_ema_the_tail_averages_the_ema_weights_and_says_so(tiny_data, tmp_path):
    """train.ema_decay + train.swa_lr_fraction: last.safetensors holds the EMA's weights each epoch; the average is theirs."""
    epoch_weights = []

    def remember(epoch, row):
        epoch_weights.append(load_file(str(tmp_path / "run" / "last.safetensors")))

    lines: list[str] = []
    summary = train(_config(tiny_data, "train.epochs=5", "train.swa_lr_fraction=0.7", "train.ema_decay=0.9"),
                    tmp_path / "run", progress=False, on_epoch=remember, log=lines.append)
    assert summary["swa"]["epochs"] == [3, 4, 5] and summary["swa"]["weights"] == "ema"
    average = load_file(str(tmp_path / "run" / "swa.safetensors"))
    for name, tensor in average.items():
        if "running" not in name and "num_batches" not in name:
            expected = torch.stack([weights[name] for weights in epoch_weights[2:]]).mean(0)
            assert torch.allclose(tensor, expected, atol=1e-6), name
    assert any(line.startswith("swa: the average of epochs 3-5 (3 epochs of the EMA's weights, train.ema_decay 0.9;")
               for line in lines)


def test_the_average_chosen_as_best_is_what_best_safetensors_holds(tiny_data, tmp_path, monkeypatch):
    """Force the comparison both ways: best.safetensors follows the choice, summary.json says it."""
    import pcamlab.train.early_stopping as early_stopping

    monkeypatch.setattr(early_stopping, "is_better", lambda value, best, monitor, delta: True)
    lines: list[str] = []
    summary = train(_config(tiny_data, "train.epochs=3", "train.swa_lr_fraction=1"), tmp_path / "swa-best", progress=False,
                    log=lines.append)
    assert summary["best_is_swa"] and summary["best"]["val_auc"] == pytest.approx(summary["swa"]["val_auc"], abs=1e-6)
    done = [line for line in lines if line.startswith("done:")]
    assert len(done) == 1 and f"{summary['best']['val_auc']:.4f} from the average of epochs 1-3" in done[0], done
    best, average = (load_file(str(tmp_path / "swa-best" / name)) for name in ("best.safetensors", "swa.safetensors"))
    assert all(torch.equal(best[name], average[name]) for name in average)


def test_a_resumed_run_keeps_its_average(tiny_data, tmp_path):
    options = ["train.epochs=4", "train.swa_lr_fraction=1", "train.deterministic=true"]
    train(_config(tiny_data, *options), tmp_path / "straight", progress=False)

    class Interrupted(Exception):
        pass

    def stop_after_two(epoch, row):
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(_config(tiny_data, *options), tmp_path / "resumed", progress=False, on_epoch=stop_after_two)
    summary = train(_config(tiny_data, *options), tmp_path / "resumed", resume=True, progress=False)
    assert summary["swa"]["epochs"] == [1, 2, 3, 4]
    straight, resumed = (load_file(str(tmp_path / name / "swa.safetensors")) for name in ("straight", "resumed"))
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_too_few_tail_epochs_is_a_note_not_an_average(tiny_data, tmp_path):
    lines: list[str] = []
    summary = train(_config(tiny_data, "train.epochs=3", "train.swa_lr_fraction=0.01"), tmp_path / "run",
                    progress=False, log=lines.append)
    assert not (tmp_path / "run" / "swa.safetensors").exists()
    assert summary["swa"]["averaged"] is False and summary["best_is_swa"] is False and summary["swa"]["lr_fraction"] == 0.01
    assert any("there is no average of weights (it needs 2)" in line and "raise the fraction" in line for line in lines)


def test_crop_epochs_in_the_tail_are_named_as_the_reason(tiny_data, tmp_path):
    """Crops in every epoch (crop_epochs 0): the learning rate qualifies, the crops do not; the note says so."""
    lines: list[str] = []
    summary = train(_config(tiny_data, "train.epochs=3", "train.swa_lr_fraction=1", "augment.crop_size=48",
                            "augment.crop_epochs=0"), tmp_path / "run", progress=False, log=lines.append)
    assert summary["swa"]["averaged"] is False and summary["swa"]["crop_epochs_in_tail"]
    note = next(line for line in lines if "there is no average of weights" in line)
    assert "crop epoch" in note and "augment.crop_epochs" in note and "raise the fraction" not in note, note
    assert "set augment.crop_size=0" in note and "fewer augment.crop_epochs" not in note, note  # 0 is already fewest


def test_the_average_carries_its_own_threshold_and_where_it_was_chosen(tiny_data, tmp_path):
    """swa.safetensors: a threshold chosen on the average's validation scores, labelled, so evaluate can say so."""
    from pcamlab.evaluate.run import evaluate_checkpoint
    from pcamlab.evaluate.thresholds import choose_threshold
    from pcamlab.runtime.predictor import load_predictor

    summary = train(_config(tiny_data, "train.epochs=5", "train.swa_lr_fraction=0.7", "evaluate.threshold_method=youden"),
                    tmp_path / "run", progress=False)
    average = load_predictor(tmp_path / "run" / "swa.safetensors")
    assert average.metadata["threshold_chosen_on"]["method"] == "youden"
    assert average.contract.threshold_source == "youden"
    if summary["best_is_swa"]:
        assert load_predictor(tmp_path / "run" / "best.safetensors").contract.threshold == average.contract.threshold
    metrics = evaluate_checkpoint(tmp_path / "run" / "swa.safetensors", None, "valid", tmp_path / "eval")
    assert metrics["threshold_origin"]["optimistic"] is True  # measured on the split it was chosen on
    with open(tmp_path / "eval" / "predictions.csv") as handle:  # the average's own scores (fp32, 6 decimals)
        rows = list(csv.DictReader(handle))
    own = choose_threshold([int(row["label"]) for row in rows], [float(row["probability"]) for row in rows], "youden")
    assert average.contract.threshold == pytest.approx(own, abs=1e-5)


def test_the_fraction_is_checked():
    with pytest.raises(ConfigError, match="train.swa_lr_fraction"):
        load_config(None, ["train.swa_lr_fraction=1.5"])
