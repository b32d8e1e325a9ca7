"""Explanation tools on tiny hand-built CNNs: filters, feature maps, Grad-CAM, galleries, run_explain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pcamlab.errors import ConfigError, DataError
from pcamlab.explain import (
    GradCAM,
    conv_layers,
    feature_maps,
    overlay,
    plot_confident_mistakes,
    plot_feature_maps,
    plot_first_layer_filters,
    plot_gradcam_gallery,
    plot_layer_filters,
)
from pcamlab.explain.filters import first_layer_tiles
from pcamlab.explain.gradcam import error_groups, rank_mistakes

CONTRACT = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "threshold": 0.5, "patch_size": 24,
            "class_names": ["normal", "tumour"]}


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),  # (B, 4, 12, 12)
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),  # (B, 6, 12, 12)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 1),  # (B, 1)
    )


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.width > 50 and image.height > 50
        return image.size


def random_images(count: int, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


class RegionModel(nn.Module):
    """The logit sums a 1x1 conv's response over one fixed region only (rows 0..7, columns 16..23)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)
        mask = torch.zeros(1, 1, 24, 24)
        mask[..., 0:8, 16:24] = 1.0
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.head.weight.fill_(0.5)
            self.head.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.features(images)) * self.mask  # (B, 4, 24, 24), zero off the region
        hidden = torch.relu(self.head(hidden))  # (B, 2, 24, 24)
        return hidden.sum(dim=(1, 2, 3)).unsqueeze(1)  # (B, 1)


# ----------------------------------------------------------------------------------------- filters


def test_conv_layers_lists_every_conv_in_order():
    names = [name for name, _ in conv_layers(tiny_cnn())]
    assert names == ["0", "4"]
    assert conv_layers(nn.Sequential(nn.Flatten(), nn.Linear(3, 1))) == []


def test_first_layer_tiles_are_scaled_per_filter_and_keep_colour():
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0] = 5.0  # filter 0: red only, large
        model[0].weight[1, 2, 1, 1] = 0.01  # filter 1: one small blue centre weight
    tiles = first_layer_tiles(model)
    assert tiles.shape == (4, 3, 3, 3)
    assert np.allclose(tiles[0][..., 0], 1.0) and np.allclose(tiles[0][..., 1:], 0.0)
    assert tiles[1].max() == pytest.approx(1.0) and tiles[1][1, 1, 2] == pytest.approx(1.0)  # scale ignores size
    assert np.all(tiles[2] == 0.0)  # a constant filter is drawn black, not NaN


def test_plot_first_layer_filters_writes_png(tmp_path):
    path = plot_first_layer_filters(tiny_cnn(), tmp_path / "sub" / "filters.png")
    assert path == tmp_path / "sub" / "filters.png"
    assert_png(path)


def test_plot_first_layer_filters_rejects_models_without_rgb_conv(tmp_path):
    with pytest.raises(ConfigError, match="no nn.Conv2d"):
        plot_first_layer_filters(nn.Sequential(nn.Flatten(), nn.Linear(3, 1)), tmp_path / "a.png")
    with pytest.raises(ConfigError, match="in_channels=1"):
        plot_first_layer_filters(nn.Sequential(nn.Conv2d(1, 2, 3)), tmp_path / "b.png")


def test_plot_layer_filters_by_name_index_and_unknown_name(tmp_path):
    model = tiny_cnn()
    assert_png(plot_layer_filters(model, tmp_path / "last.png"))
    assert_png(plot_layer_filters(model, tmp_path / "named.png", layer="4", max_filters=2, reduce="first"))
    assert_png(plot_layer_filters(model, tmp_path / "index.png", layer=0))
    with pytest.raises(ConfigError, match=r"did you mean '4'"):
        plot_layer_filters(model, tmp_path / "x.png", layer="44")
    with pytest.raises(ConfigError, match="not a conv layer"):
        plot_layer_filters(model, tmp_path / "x.png", layer="2")
    with pytest.raises(ConfigError, match="reduce must be one of"):
        plot_layer_filters(model, tmp_path / "x.png", reduce="median")
    with pytest.raises(ConfigError, match="max_filters"):
        plot_layer_filters(model, tmp_path / "x.png", max_filters=0)


# ------------------------------------------------------------------------------------- feature maps


def test_feature_maps_returns_every_conv_output_and_cleans_up():
    model = tiny_cnn().train()
    inputs = torch.randn(2, 3, 24, 24)
    maps = feature_maps(model, inputs)
    assert list(maps) == ["0", "4"]
    assert maps["0"].shape == (2, 4, 24, 24) and maps["4"].shape == (2, 6, 12, 12)
    assert torch.allclose(maps["0"], model[0](inputs).detach())  # conv output, before batch norm
    assert all(not conv._forward_hooks for _, conv in conv_layers(model))
    assert model.training and model[1].training  # mode restored
    assert feature_maps(model, inputs[0])["4"].shape == (1, 6, 12, 12)  # a single (3, H, W) image


def test_feature_maps_rejects_uint8_input():
    with pytest.raises(DataError, match="float torch.Tensor"):
        feature_maps(tiny_cnn(), torch.zeros(1, 3, 24, 24, dtype=torch.uint8))


def test_plot_feature_maps_from_uint8_and_tensor(tmp_path):
    model = tiny_cnn()
    image = random_images(1)[0]
    assert_png(plot_feature_maps(model, image, tmp_path / "a.png", max_channels=3, contract=CONTRACT))
    assert_png(plot_feature_maps(model, torch.randn(3, 24, 24), tmp_path / "b.png", max_channels=2))
    with pytest.raises(DataError, match="uint8 RGB patch"):
        plot_feature_maps(model, image.astype(np.float32), tmp_path / "c.png")


# ------------------------------------------------------------------------------------------ Grad-CAM


def test_gradcam_peaks_in_the_region_the_logit_depends_on():
    model = RegionModel()
    inputs = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    cams = GradCAM(model)(inputs)
    assert cams.shape == (3, 24, 24)
    for cam in cams:
        row, column = divmod(int(cam.argmax()), 24)
        assert 0 <= row < 8 and 16 <= column < 24
        assert cam[0:8, 16:24].sum() > 0.95 * cam.sum()  # nearly all of the heat is in the region


def test_gradcam_default_layer_is_last_spatial_conv():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),  # (B, 4, 8, 8)
        nn.Conv2d(4, 4, 8),  # (B, 4, 1, 1): not spatial
        nn.Flatten(), nn.Linear(4, 1),
    )
    cam = GradCAM(model)
    assert cam.find_layer(torch.randn(1, 3, 8, 8)) == "0"
    assert GradCAM(model, layer="2").layer_name_ == "2"


def test_gradcam_batch_matches_single_images_and_scales_to_unit_range():
    model = tiny_cnn()
    inputs = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    explainer = GradCAM(model)
    batch = explainer(inputs)
    assert explainer.logits_.shape == (4,)
    for index in range(4):
        single = explainer(inputs[index : index + 1])[0]
        assert torch.allclose(batch[index], single, atol=1e-5)
        assert batch[index].min() >= 0.0 and batch[index].max() <= 1.0
        assert batch[index].max() == pytest.approx(1.0) or batch[index].max() == 0.0


def test_gradcam_restores_state_and_works_under_no_grad_and_frozen_weights():
    model = tiny_cnn().train()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    inputs = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        cams = GradCAM(model, layer="4")(inputs)
    assert cams.shape == (2, 24, 24) and torch.isfinite(cams).all() and cams.max() > 0
    assert model.training and model[1].training
    assert all(not module._forward_hooks for module in model.modules())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_gradcam_rejects_multi_logit_models_and_bad_input():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"one logit per image, shape \(B, 1\); got \(2, 2\)"):
        GradCAM(model, layer=0)(torch.randn(2, 3, 8, 8))
    with pytest.raises(DataError, match="float tensor"):
        GradCAM(tiny_cnn())(torch.zeros(3, 24, 24))
    with pytest.raises(ConfigError, match="did you mean 'features'"):
        GradCAM(RegionModel(), layer="feature")


def test_overlay_blends_colour_where_the_map_is_hot():
    image = np.full((24, 24, 3), 128, dtype=np.uint8)
    cam = np.zeros((6, 6), dtype=np.float32)
    cam[:3] = 1.0  # hot top half, at a lower resolution than the image
    blended = overlay(image, cam, alpha=0.5)
    assert blended.dtype == np.uint8 and blended.shape == (24, 24, 3)
    top, bottom = blended[:8].astype(int), blended[-8:].astype(int)
    assert np.abs(top - 128).mean() > np.abs(bottom - 128).mean() + 10
    assert np.array_equal(overlay(image, cam, alpha=0.0), image)
    with pytest.raises(ConfigError, match="alpha"):
        overlay(image, cam, alpha=2.0)
    with pytest.raises(DataError, match="uint8 RGB"):
        overlay(image[..., 0], cam)


def test_error_groups_and_rank_mistakes():
    labels = np.array([1, 1, 0, 0, 1, 0])
    probs = np.array([0.9, 0.2, 0.7, 0.1, 0.6, 0.99])
    groups = error_groups(labels, probs, threshold=0.5)
    assert groups["true_positive"].tolist() == [0, 4]
    assert groups["false_positive"].tolist() == [5, 2]
    assert groups["false_negative"].tolist() == [1]
    assert groups["true_negative"].tolist() == [3]
    assert rank_mistakes(labels, probs, 0.5).tolist() == [5, 1, 2]
    assert rank_mistakes(labels, probs, 0.95).tolist() == [5, 1, 4, 0]  # a high threshold misses tumour


def test_plot_gradcam_gallery_and_confident_mistakes(tmp_path):
    model = tiny_cnn()
    images = random_images(8)
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    probs = np.array([0.9, 0.8, 0.3, 0.1, 0.2, 0.95, 0.7, 0.4])
    assert_png(plot_gradcam_gallery(model, images, labels, probs, CONTRACT, tmp_path / "g.png", per_group=2))
    # no false positives at all: the group is drawn as a note
    assert_png(plot_gradcam_gallery(model, images, labels, probs, CONTRACT, tmp_path / "g2.png", 0.96, 2))
    assert_png(plot_confident_mistakes(images, labels, probs, tmp_path / "m.png", n=4))
    assert_png(plot_confident_mistakes(images, labels, labels.astype(float), tmp_path / "none.png"))
    with pytest.raises(DataError, match="same length"):
        plot_confident_mistakes(images, labels[:3], probs, tmp_path / "x.png")
    with pytest.raises(DataError, match="probabilities"):
        plot_gradcam_gallery(model, images, labels, probs * 3, CONTRACT, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="mean"):
        plot_gradcam_gallery(model, images, labels, probs, {"std": [1, 1, 1]}, tmp_path / "x.png")


# ------------------------------------------------------------------------------------- run_explain


def test_run_explain_with_a_stand_in_checkpoint(tmp_path, monkeypatch):
    """run_explain on the shipped sample with load_checkpoint replaced, so only this module is tested."""
    import types

    import pcamlab.runtime.checkpoint as checkpoint_module
    from pcamlab.config import RunConfig
    from pcamlab.explain import run_explain

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),  # (B, 4, 24, 24)
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1),
    )
    contract = {"mean": [0.7, 0.55, 0.7], "std": [0.15, 0.2, 0.15], "threshold": 0.5, "patch_size": 96,
                "class_names": ["normal", "tumour"]}
    loaded = []

    def fake_load(path, device="cpu"):
        loaded.append((str(path), device))
        return types.SimpleNamespace(model=model, config=RunConfig(), contract=contract, metadata={})

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", fake_load)
    summary = run_explain("fake.safetensors", "sample", "valid", tmp_path / "out", n=12, seed=3, per_group=2)
    assert loaded == [("fake.safetensors", "cpu")]
    assert summary["n"] == 12 and len(summary["indices"]) == 12
    assert sum(summary["counts"].values()) == 12
    assert summary["gradcam_layer"] == "3"
    for name in ("first_layer_filters", "layer_filters", "feature_maps", "gradcam_gallery", "confident_mistakes"):
        assert_png(summary["files"][name])
    written = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert written["indices"] == summary["indices"] and written["files"]["gradcam_gallery"] == "gradcam_gallery.png"
    with pytest.raises(ConfigError, match="n must be a positive"):
        run_explain("fake.safetensors", "sample", "valid", tmp_path / "bad", n=0)


def test_explain_cli_end_to_end_on_a_real_checkpoint(tmp_path, capsys):
    """Real checkpoint (saved and reloaded by pcamlab.runtime.checkpoint) on the shipped sample, via the CLI."""
    models = pytest.importorskip("pcamlab.models")
    if not hasattr(models, "build_model"):
        pytest.skip("pcamlab.models.build_model is not available yet")
    from pcamlab.cli.main import main
    from pcamlab.config import RunConfig
    from pcamlab.runtime import InputContract, save_checkpoint

    config = RunConfig()
    config.model.name = "baseline"
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "run" / "best.safetensors", models.build_model(config.model), config,
        InputContract(mean=[0.7, 0.55, 0.7], std=[0.15, 0.2, 0.15]),
    )
    assert main(["explain", str(checkpoint), "--data", "sample", "--n", "6", "--per-group", "1"]) == 0
    out = tmp_path / "run" / "explain-valid"
    assert "explained 6 patches of 'valid'" in capsys.readouterr().out
    assert_png(out / "gradcam_gallery.png")
    assert json.loads((out / "explain.json").read_text())["n"] == 6
    assert main(["explain", str(tmp_path / "missing.safetensors"), "--data", "sample"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gradcam_on_frozen_model_with_inplace_relu():
    """Frozen weights (EMA copies, transfer learning) followed by an in-place ReLU must still work."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    cam = GradCAM(model, layer="0")(torch.randn(2, 3, 16, 16))
    assert cam.shape == (2, 16, 16) and torch.isfinite(cam).all()
