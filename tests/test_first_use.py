"""What a new user met on first use (issue 22 item 6): each defect has a test that failed before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import sample_files

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def pil_patches() -> np.ndarray:
    """Patches as a person loads them: ``np.asarray(Image.open(...))`` is a READ-ONLY array."""
    files, _ = sample_files(4, "valid")
    images = np.asarray(Image.open(files[0]).convert("RGB"))[None]  # (1, 96, 96, 3), read-only
    assert not images.flags.writeable
    return images


@pytest.fixture()
def strict_from_numpy(monkeypatch):
    """torch.from_numpy that fails on a read-only array (torch itself warns only once per process)."""
    original = torch.from_numpy

    def strict(array):
        if not array.flags.writeable:
            raise AssertionError("torch.from_numpy got a read-only array (torch warns 'array is not writable')")
        return original(array)

    monkeypatch.setattr(torch, "from_numpy", strict)


@pytest.mark.parametrize("tta", [False, True])
def test_read_only_pil_arrays_reach_torch_as_writable_copies(pil_patches, strict_from_numpy, tta):
    from pcamlab.runtime.predictor import load_predictor

    predictor = load_predictor(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors")
    probabilities = predictor.predict_proba(pil_patches, tta=tta)
    assert probabilities.shape == (1,) and 0 <= probabilities[0] <= 1
    assert not pil_patches.flags.writeable  # the caller's array is left as it was


def test_explanations_take_read_only_arrays(pil_patches, strict_from_numpy):
    from pcamlab.explain._common import images_to_input
    from pcamlab.runtime.checkpoint import load_checkpoint

    contract = load_checkpoint(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors").contract
    assert images_to_input(pil_patches, contract).shape == (1, 3, 96, 96)
    assert images_to_input(pil_patches[0], contract).shape == (1, 3, 96, 96)  # one (H, W, 3) patch


def test_tensor_from_array_shares_writable_memory_and_copies_read_only():
    from pcamlab.runtime.predictor import tensor_from_array

    writable = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    tensor_from_array(writable)[0, 0, 0, 0] = 7
    assert writable[0, 0, 0, 0] == 7  # no copy when torch can wrap it
    read_only = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    read_only.flags.writeable = False
    assert tensor_from_array(read_only).shape == (2, 4, 4, 3)


def test_one_default_model_everywhere():
    """configs/default.yaml, the demo, `pcamlab models` and `pcamlab bench` name the same model."""
    from pcamlab.config import load_config
    from pcamlab.deploy.bench import model_label, parse_model
    from pcamlab.demo import demo_config_path
    from pcamlab.models import default_model, model_options, model_summary

    def resolved(model):  # the builder's keyword arguments: its defaults, then the config's options
        return model.name, {**model_options(model.name), **model.options}

    default = default_model()
    assert (default.name, default.options) == ("simple-cnn", {"width": 16})
    for path in (REPO / "configs" / "default.yaml", demo_config_path()):
        assert resolved(load_config(path).model) == resolved(default), path
    assert model_summary(default)["parameters"] == 97_809
    assert model_label(parse_model(model_label(default))) == "simple-cnn:width=16"


def test_models_names_the_default_and_bench_times_it_by_default(capsys, monkeypatch):
    from pcamlab.cli.main import main
    from pcamlab.deploy import bench

    assert main(["models", "simple-cnn"]) == 0
    out = capsys.readouterr().out
    assert "default model: simple-cnn with width 16 (configs/default.yaml, pcamlab demo, pcamlab bench): " \
           "97,809 parameters" in out
    timed = []
    monkeypatch.setattr(bench, "_torch_rows", lambda config, *args, **kwargs: timed.append(bench.model_label(config)) or [])
    monkeypatch.setattr(bench, "measure_peak_flops", lambda *args, **kwargs: 1e9)
    bench.run_bench(steps=1, warmup=0)
    assert timed == ["baseline", "baseline", "simple-cnn:width=16", "simple-cnn:width=16"]  # 2 layouts each


@pytest.mark.parametrize("spec, message", [
    ("simple-cnn:width", "without a value"),
    ("simple-cn", "did you mean 'simple-cnn'"),
])
def test_bench_model_specs_fail_in_one_line(spec, message):
    from pcamlab.deploy.bench import parse_model
    from pcamlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_model(spec)


def _report_text(run: Path) -> str:
    import html
    import re

    from pcamlab.evaluate.report import write_report

    page = write_report(run).read_text()
    page = re.sub(r"<style>.*?</style>|data:image/png;base64,[A-Za-z0-9+/=]+", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "\n", page))


def test_the_report_shows_the_threshold_once_and_a_picture_once(tmp_path):
    """A demo-like run: metrics at a fixed 0.5 (the 'chosen' threshold is 0.5 too) and the same filters
    picture in the run folder and in explain-valid/ (what the demo wrote before)."""
    import json

    from pcamlab.explain.filters import plot_first_layer_filters
    from pcamlab.runtime.checkpoint import load_checkpoint

    run = tmp_path / "run"
    (run / "explain-valid").mkdir(parents=True)
    at = {"threshold": 0.5, "accuracy": 0.8, "recall": 0.75, "specificity": 0.85, "tp": 75, "fp": 15, "tn": 85, "fn": 25}
    label = "0.500 (fixed by evaluate.threshold, not chosen on data)"
    metrics = {"n": 200, "n_positive": 100, **at, "roc_auc": 0.91,
               "threshold_origin": {"threshold": 0.5, "source": "fixed", "chosen_on": None, "optimistic": False,
                                    "measured_on": {"data": "sample", "split": "valid"}, "label": label},
               "at_thresholds": {"0.5": at, "chosen": at}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "summary.json").write_text(json.dumps({"threshold": 0.5, "contract": {"threshold": 0.5, "patch_size": 96}}))
    model = load_checkpoint(ASSETS / "checkpoint-v1-simple-cnn-w4.safetensors").model
    plot_first_layer_filters(model, run / "filters.png")
    plot_first_layer_filters(model, run / "explain-valid" / "first_layer_filters.png")
    text = _report_text(run)
    metrics_part = text.split("\nEvaluation metrics\n")[-1].split("\nFigures\n")[0]
    assert metrics_part.count("Decision threshold") == 2  # the metrics row and the at-thresholds column
    assert "threshold_origin" not in metrics_part and f"at least this; {label}" in metrics_part
    assert "\n0.5 = chosen\n" in metrics_part  # one row, not two identical ones
    summary_part = text.split("\nData and run summary\n")[-1].split("\nTraining\n")[0]
    assert "contract.threshold" not in summary_part and "contract.patch_size" in summary_part
    assert text.count("(explain-valid/first_layer_filters.png)") + text.count("(filters.png)") == 1
    assert "is the same picture as" in text


def test_the_augmentation_preview_draws_the_configs_label_crops():
    """`pcamlab data info --augment --config configs/default.yaml`: crop epochs' 48 px crops, then full patches."""
    from fixtures_data import sample_patches

    from pcamlab.config import AugmentConfig
    from pcamlab.data.info import augmented_versions

    originals, _ = sample_patches(2, "valid")
    config = AugmentConfig(dihedral=False, crop_size=48, crop_epochs=10)
    versions, crop_columns = augmented_versions(originals, config, per_patch=4)
    assert versions.shape == (2, 4, 96, 96, 3) and crop_columns == 2
    crops, full = versions[:, :2], versions[:, 2:]
    assert (crops[:, :, :24] == 255).all() and (crops[:, :, 24:72, 24:72] < 255).any()  # 48 px at its size
    np.testing.assert_array_equal(full, np.repeat(originals[:, None], 2, axis=1))  # nothing else is on
    every_epoch, columns = augmented_versions(originals, AugmentConfig(crop_size=64), per_patch=3)
    assert columns == 3 and (every_epoch[:, :, :16] == 255).all()
    jittered, _ = augmented_versions(originals, AugmentConfig(dihedral=False, brightness=0.5), per_patch=3)
    assert not (jittered == originals[:, None]).all()  # the config's colour jitter is drawn
