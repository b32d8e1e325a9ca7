"""Speedrun levers: random crops that keep PCam's labelled centre, and the speedrun recipe itself."""

from __future__ import annotations

import pytest
import torch
from fixtures_data import write_tiny_h5

from pcamlab.config import load_config
from pcamlab.data.augment import LABEL_REGION, random_label_crop
from pcamlab.errors import ConfigError
from pcamlab.train.loop import crops_in_epoch, train


@pytest.mark.parametrize("size", [32, 48, 64, 72, 96])
def test_every_crop_keeps_the_labelled_centre_and_its_offsets_vary(size):
    images = torch.arange(96).repeat(8, 96, 1)[..., None].expand(8, 96, 96, 3)  # pixel value = column index
    rows = torch.arange(96)[None, :, None, None].expand(8, 96, 96, 3)
    generator = torch.Generator().manual_seed(0)
    columns = random_label_crop(images.contiguous(), size, generator)
    crop_rows = random_label_crop(rows.contiguous(), size, torch.Generator().manual_seed(0))
    assert columns.shape == (8, size, size, 3) and columns.dtype == images.dtype
    centre = (96 - LABEL_REGION) // 2
    for crop in (columns[..., 0], crop_rows[..., 0].transpose(1, 2)):  # x offsets, then y offsets
        first = crop[:, 0, 0]
        assert (first <= centre).all() and (first + size >= centre + LABEL_REGION).all()
        assert (crop == first[:, None, None] + torch.arange(size)[None, None, :]).all()  # contiguous windows
    if LABEL_REGION < size < 96:
        assert columns[:, 0, 0].unique().numel() > 1  # per-sample offsets


def test_crop_size_limits_are_one_line_errors():
    with pytest.raises(ConfigError, match="augment.crop_size must be 0 .* >= 32"):
        load_config(None, ["augment.crop_size=16"])
    with pytest.raises(ConfigError, match="between 32 and the patch size 96"):
        random_label_crop(torch.zeros(1, 96, 96, 3), 100, torch.Generator())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_h5(tmp_path_factory.mktemp("h5"))


def test_speedrun_recipe_trains_on_crops_and_scores_full_patches(tiny_data, tmp_path):
    config = load_config("configs/speedrun.yaml", [
        f"data.path={tiny_data}", "model.options.width=4", "train.batch_size=8", "train.epochs=1",
        "augment.crop_size=64", "augment.crop_epochs=0",
    ])
    assert config.train.scheduler == "onecycle"
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["contract"]["patch_size"] == 96  # validated and exported on the full patch
    assert 0.0 <= summary["best"]["val_auc"] <= 1.0


def test_crop_training_needs_a_global_pooled_model(tiny_data, tmp_path):
    config = load_config(None, [f"data.path={tiny_data}", "model.name=baseline", "augment.crop_size=64",
                                "train.batch_size=8", "train.epochs=1"])
    with pytest.raises(ConfigError, match="takes any input size .* model.name 'baseline'"):
        train(config, tmp_path / "run", progress=False)


def _record_crops(monkeypatch, delay: float = 0.0) -> list[int]:
    import time

    import pcamlab.data.augment as augment

    sizes, original = [], augment.random_label_crop

    def recording(images, size, generator):
        sizes.append(size)
        time.sleep(delay)  # a slow crop step: makes a crop epoch outlast half a time budget
        return original(images, size, generator)

    monkeypatch.setattr(augment, "random_label_crop", recording)
    return sizes


@pytest.mark.parametrize("crop_epochs, cropped_epochs", [(0, 2), (1, 1), (2, 1), (10, 1)])
def test_crop_epochs_crops_only_the_first_epochs(tiny_data, tmp_path, monkeypatch, crop_epochs, cropped_epochs):
    """Progressive resizing: crops for the first ``crop_epochs`` epochs, full patches after (0 = every epoch);
    a recipe cut to fewer epochs (``train.epochs=2`` on a 10-crop-epoch recipe) still ends on full patches."""
    sizes = _record_crops(monkeypatch)
    config = load_config("configs/speedrun.yaml", [
        f"data.path={tiny_data}", "model.options.width=4", "train.batch_size=8", "train.epochs=2",
        "augment.crop_size=64", f"augment.crop_epochs={crop_epochs}", "train.max_steps_per_epoch=3",
    ])
    train(config, tmp_path / "run", progress=False)
    assert sizes == [64] * 3 * cropped_epochs


def test_crop_size_0_turns_crops_off_whatever_crop_epochs_says():
    """So a recipe that crops (configs/default.yaml) is switched off with one setting, and a search space
    can try crop_size 0 against 48 on it."""
    config = load_config("configs/default.yaml", ["augment.crop_size=0"])
    assert config.augment.crop_epochs == 10 and not crops_in_epoch(config, 1)
    with pytest.raises(ConfigError, match="augment.crop_epochs"):
        load_config(None, ["augment.crop_size=64", "augment.crop_epochs=-1"])


@pytest.mark.parametrize("crop_epochs, stopped_after", [(0, 2), (2, 3)])
def test_patience_counts_full_patch_epochs_only(tiny_data, tmp_path, crop_epochs, stopped_after):
    """Early stopping cannot end a run in its crop epochs, before the model has met a full patch."""
    overrides = [f"data.path={tiny_data}", "model.options.width=4", "train.batch_size=8", "train.epochs=6",
                 "train.patience=1", "train.min_delta=1.0", "train.max_steps_per_epoch=2"]  # nothing improves
    if crop_epochs:
        overrides += ["augment.crop_size=64", f"augment.crop_epochs={crop_epochs}"]
    summary = train(load_config(None, overrides), tmp_path / "run", progress=False)
    assert summary["epochs_run"] == stopped_after
    assert "early stop" in summary["stop_reason"]


def test_crops_stop_at_the_last_epoch_and_half_the_budget():
    config = load_config(None, ["augment.crop_size=48", "augment.crop_epochs=10", "train.epochs=12"])
    assert [crops_in_epoch(config, epoch) for epoch in (1, 10, 11, 12)] == [True, True, False, False]
    assert crops_in_epoch(config, 3, budget_fraction=0.49) and not crops_in_epoch(config, 3, budget_fraction=0.5)
    short = load_config(None, ["augment.crop_size=48", "augment.crop_epochs=10", "train.epochs=3"])
    assert [crops_in_epoch(short, epoch) for epoch in (1, 2, 3)] == [True, True, False]
    assert not crops_in_epoch(load_config(None, ["augment.crop_size=48", "augment.crop_epochs=10", "train.epochs=1"]), 1)
    every = load_config(None, ["augment.crop_size=48", "train.epochs=3"])  # crop_epochs 0: every epoch
    assert all(crops_in_epoch(every, epoch, budget_fraction=0.9) for epoch in (1, 2, 3))
    assert not crops_in_epoch(load_config(None, ["train.epochs=3"]), 1)


def test_a_continued_run_does_not_go_back_to_crops(tiny_data, tmp_path, monkeypatch):
    """Once a run has trained on full patches, resuming or continuing it never crops again."""
    sizes = _record_crops(monkeypatch)
    settings = [f"data.path={tiny_data}", "model.options.width=4", "train.batch_size=8", "train.max_steps_per_epoch=2",
                "augment.crop_size=64", "augment.crop_epochs=10", "train.patience=0"]
    first = tmp_path / "first"
    train(load_config(None, [*settings, "train.epochs=3"]), first, progress=False)  # crops 1-2, full 3
    assert sizes == [64] * 4
    lines = []
    train(load_config(None, [*settings, "train.epochs=5"]), tmp_path / "more", continue_from=first, progress=False,
          log=lines.append)
    assert sizes == [64] * 4  # epochs 4-5 are within crop_epochs, but the run already met full patches
    assert any("already trained on full patches: full patches from epoch 4" in line for line in lines)


def test_a_crop_epoch_longer_than_half_the_budget_ends_on_full_patches(tiny_data, tmp_path, monkeypatch):
    sizes = _record_crops(monkeypatch, delay=0.7)
    lines = []
    config = load_config(None, [f"data.path={tiny_data}", "model.options.width=4", "train.batch_size=2",
                                "augment.crop_size=64", "augment.crop_epochs=2", "train.epochs=3",
                                "train.time_budget_minutes=0.3"])  # 18 s: crops stop at 9 s
    train(config, tmp_path / "run", progress=False, log=lines.append)
    steps = 32 // 2
    assert 1 <= len(sizes) < steps  # epoch 1 began on crops and switched inside itself
    notes = [line for line in lines if "full patches from step" in line]
    assert len(notes) == 1 and "of epoch 1" in notes[0], lines
    assert 2 <= int(notes[0].split("from step ")[1].split()[0]) <= steps  # a step that exists, never after the last
    state = torch.load(tmp_path / "run" / "resume.pt", weights_only=False)
    assert state["crops_over"] is True
