"""Batch augmentation: the dihedral group, per-sample randomness, each operation on and off."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from PIL import Image

from pcamlab.config import AugmentConfig
from pcamlab.data import augment
from pcamlab.data.augment import (
    DIHEDRAL_TRANSFORMS,
    augment_batch,
    augment_is_identity,
    check_augment_config,
    dihedral,
    dihedral_inverse,
    hed_to_rgb,
    hsv_to_rgb,
    rgb_to_hed,
    rgb_to_hsv,
)
from pcamlab.errors import ConfigError, DataError

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "pcamlab" / "data" / "sample"
PATCH_COUNT = 8

ALL_OFF = AugmentConfig(dihedral=False)
ALL_ON = AugmentConfig(
    dihedral=True,
    brightness=0.2,
    contrast=0.2,
    saturation=0.2,
    hue=0.1,
    hed=0.05,
    blur=0.5,
    blur_sigma=1.0,
    crop_scale=0.6,
)
# Each operation alone, strong enough to change every patch.
SINGLE_OPERATIONS = {
    "brightness": AugmentConfig(dihedral=False, brightness=0.3),
    "contrast": AugmentConfig(dihedral=False, contrast=0.3),
    "saturation": AugmentConfig(dihedral=False, saturation=0.5),
    "hue": AugmentConfig(dihedral=False, hue=0.2),
    "hed": AugmentConfig(dihedral=False, hed=0.1),
    "blur": AugmentConfig(dihedral=False, blur=1.0, blur_sigma=1.5),
    "crop_scale": AugmentConfig(dihedral=False, crop_scale=0.3),
    "dihedral": AugmentConfig(dihedral=True),
}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on the shared 2-core machine, 2 threads stall each other (seconds per call)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _synthetic_patches(count: int) -> np.ndarray:
    """H&E-like uint8 (count, 32, 32, 3): smooth random stain concentrations through the HED model."""
    rng = np.random.default_rng(0)
    stains = rng.random((count, 3, 8, 8)) * np.array([1.2, 0.8, 0.05]).reshape(1, 3, 1, 1)
    stains = functional.interpolate(torch.from_numpy(stains), size=(32, 32), mode="bilinear")
    rgb = hed_to_rgb(stains).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def patches(request: pytest.FixtureRequest) -> np.ndarray:
    """uint8 (N, H, W, 3): the package sample, else the shared data, else synthetic patches."""
    files = sorted(SAMPLE.rglob("*.jpg"))
    if not files:
        try:
            shared = request.getfixturevalue("shared_data")
        except pytest.skip.Exception:
            shared = None
        if shared is not None:
            files = sorted((shared / "pcam-jpg" / "valid").rglob("*.jpg"))
    if not files:
        return _synthetic_patches(PATCH_COUNT)
    step = max(1, len(files) // PATCH_COUNT)  # spread over both labels
    chosen = files[::step][:PATCH_COUNT]
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in chosen])


@pytest.fixture()
def images(patches: np.ndarray) -> torch.Tensor:
    """float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(patches).permute(0, 3, 1, 2).float().div(255).contiguous()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Like torch.testing.assert_close with rtol=0, without its 3-second first import."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= atol, f"largest difference {error:.3g} exceeds {atol:.3g}"


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Dihedral group


def test_the_eight_dihedral_transforms_are_distinct() -> None:
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    outputs = [dihedral(x, k) for k in range(DIHEDRAL_TRANSFORMS)]
    for a, b in itertools.combinations(range(DIHEDRAL_TRANSFORMS), 2):
        assert not torch.equal(outputs[a], outputs[b]), (a, b)
    assert torch.equal(outputs[0], x)


def test_dihedral_transforms_form_a_group() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    outputs = [dihedral(x, k) for k in range(DIHEDRAL_TRANSFORMS)]
    table = np.zeros((DIHEDRAL_TRANSFORMS, DIHEDRAL_TRANSFORMS), dtype=int)
    for a, b in itertools.product(range(DIHEDRAL_TRANSFORMS), repeat=2):
        composed = dihedral(dihedral(x, a), b)
        matches = [c for c in range(DIHEDRAL_TRANSFORMS) if torch.equal(composed, outputs[c])]
        assert len(matches) == 1, f"{a} then {b} is not one of the 8 transforms"
        table[a, b] = matches[0]
    # Closure gives a Cayley table: every row and column is a permutation (a Latin square).
    for index in range(DIHEDRAL_TRANSFORMS):
        assert sorted(table[index]) == list(range(DIHEDRAL_TRANSFORMS))
        assert sorted(table[:, index]) == list(range(DIHEDRAL_TRANSFORMS))
    # Associativity and the documented inverses.
    for a, b, c in itertools.product(range(DIHEDRAL_TRANSFORMS), repeat=3):
        assert table[table[a, b], c] == table[a, table[b, c]]
    for k in range(DIHEDRAL_TRANSFORMS):
        assert table[k, dihedral_inverse(k)] == 0
        assert torch.equal(dihedral(dihedral(x, k), dihedral_inverse(k)), x)
    # Not abelian: the dihedral group of the square, not the cyclic group of order 8.
    assert (table != table.T).any()


def test_dihedral_numbering_matches_the_documented_table() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    assert torch.equal(dihedral(x, 1), x.flip(-1))
    assert torch.equal(dihedral(x, 2), x.flip(-2))
    assert torch.equal(dihedral(x, 3), torch.rot90(x, 2, dims=(-2, -1)))
    assert torch.equal(dihedral(x, 4), x.transpose(-2, -1))
    assert torch.equal(dihedral(x, 5), torch.rot90(x, -1, dims=(-2, -1)))  # clockwise
    assert torch.equal(dihedral(x, 6), torch.rot90(x, 1, dims=(-2, -1)))  # anticlockwise
    assert torch.equal(dihedral(x, 7), torch.rot90(x.transpose(-2, -1), 2, dims=(-2, -1)))


@pytest.mark.parametrize("k", [-1, 8, 1.5, True, "3"])
def test_dihedral_rejects_an_invalid_transform_number(k: object) -> None:
    with pytest.raises(ConfigError, match="0..7"):
        dihedral(torch.zeros(1, 1, 2, 2), k)  # type: ignore[arg-type]


@pytest.mark.parametrize("channels_last", [False, True])
def test_per_sample_dihedral_applies_each_samples_own_transform(channels_last: bool) -> None:
    x = torch.rand(DIHEDRAL_TRANSFORMS, 3, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    k = torch.tensor([3, 0, 7, 5, 1, 6, 2, 4])
    out = augment._dihedral_per_sample(x, k)
    for index in range(DIHEDRAL_TRANSFORMS):
        assert torch.equal(out[index], dihedral(x[index : index + 1], int(k[index]))[0])


def test_crop_sampling_matrices_reproduce_the_dihedral_transforms() -> None:
    x = torch.rand(2, 3, 6, 6)
    matrices = augment._dihedral_matrices(torch.float32, x.device)
    for k in range(DIHEDRAL_TRANSFORMS):
        theta = torch.cat((matrices[k].expand(2, 2, 2), torch.zeros(2, 2, 1)), dim=2)
        grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
        sampled = functional.grid_sample(x, grid, align_corners=False)
        _assert_close(sampled, dihedral(x, k), atol=1e-5)


def test_broadcast_affine_grid_equals_torch_affine_grid() -> None:
    linear = torch.rand(3, 2, 2, generator=_generator(9)) * 2 - 1
    translation = torch.rand(3, 2, generator=_generator(10)) - 0.5
    theta = torch.cat((linear, translation.unsqueeze(2)), dim=2)
    expected = functional.affine_grid(theta, [3, 3, 5, 7], align_corners=False)
    _assert_close(augment._affine_grid(linear, translation, 5, 7), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# augment_batch contract


@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON], ids=["default", "all-on"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_augment_batch_keeps_shape_dtype_range_and_memory_format(
    images: torch.Tensor, config: AugmentConfig, memory_format: torch.memory_format, dtype: torch.dtype
) -> None:
    x = images.to(dtype).contiguous(memory_format=memory_format)
    before = x.clone()
    out = augment_batch(x, config, _generator())
    assert out.shape == x.shape
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=memory_format)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.isfinite(out.float()).all()
    assert torch.equal(x, before), "the input must not be modified in place"


def test_augment_batch_is_reproducible_with_a_seed(images: torch.Tensor) -> None:
    first = augment_batch(images, ALL_ON, _generator(7))
    again = augment_batch(images, ALL_ON, _generator(7))
    other = augment_batch(images, ALL_ON, _generator(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_augment_batch_with_everything_off_is_the_identity(images: torch.Tensor) -> None:
    assert augment_is_identity(ALL_OFF)
    assert not augment_is_identity(AugmentConfig())  # the default flips and rotates
    assert torch.equal(augment_batch(images, ALL_OFF, _generator()), images)


@pytest.mark.parametrize("name", sorted(SINGLE_OPERATIONS))
def test_each_operation_changes_every_patch_when_on(images: torch.Tensor, name: str) -> None:
    config = SINGLE_OPERATIONS[name]
    assert not augment_is_identity(config)
    out = augment_batch(images, config, _generator(1))
    changed = (out - images).abs().flatten(1).amax(dim=1) > 1e-3
    if name == "dihedral":  # k = 0 (identity) has probability 1/8 per patch
        assert changed.sum() >= len(images) // 2
    else:
        assert changed.all(), f"{name} left {int((~changed).sum())} patches unchanged"


@pytest.mark.parametrize("name", sorted(SINGLE_OPERATIONS))
def test_each_operation_draws_its_parameters_per_sample(images: torch.Tensor, name: str) -> None:
    same = images[:1].expand(16, -1, -1, -1).contiguous()
    out = augment_batch(same, SINGLE_OPERATIONS[name], _generator(2))
    distinct = {tuple(sample.flatten()[::97].tolist()) for sample in out}
    assert len(distinct) >= 3, f"{name} gave the same result to every sample of the batch"


@pytest.mark.parametrize("name", sorted(SINGLE_OPERATIONS))
def test_each_operation_leaves_patches_alone_when_off(images: torch.Tensor, name: str) -> None:
    off_value = {"dihedral": False, "crop_scale": 1.0}.get(name, 0.0)
    config = dataclasses.replace(SINGLE_OPERATIONS[name], **{name: off_value})
    assert augment_is_identity(config)
    assert torch.equal(augment_batch(images, config, _generator(1)), images)


def test_blur_smooths_and_crop_zooms_in() -> None:
    # Blur lowers the total variation of noise.
    noise = torch.rand(4, 3, 32, 32, generator=_generator(3))
    blurred = augment_batch(noise, SINGLE_OPERATIONS["blur"], _generator(4))
    variation = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert variation(blurred) < 0.7 * variation(noise)
    assert abs(blurred.mean() - noise.mean()) < 0.01
    # A crop of a left-to-right ramp without flips stays increasing but spans less of the ramp.
    ramp = torch.linspace(0, 1, 32).expand(16, 3, 32, 32).contiguous()
    cropped = augment_batch(ramp, SINGLE_OPERATIONS["crop_scale"], _generator(5))
    assert (cropped[..., 1:] - cropped[..., :-1] >= -1e-6).all()
    span = (cropped[..., -1] - cropped[..., 0]).mean(dim=(1, 2))  # (B,) fraction of the ramp kept
    assert span.median() < 0.9
    assert span.min() > math.sqrt(0.3 * 3 / 4) - 0.1  # smallest area at the widest aspect


def test_non_square_images_get_flips_only() -> None:
    x = torch.rand(16, 3, 8, 12)
    out = augment_batch(x, AugmentConfig(crop_scale=0.8, hue=0.1), _generator())
    assert out.shape == x.shape
    flips_only = augment_batch(x, AugmentConfig(), _generator())
    for sample, original in zip(flips_only, x, strict=True):
        assert any(torch.equal(sample, dihedral(original, k)) for k in range(4))


def test_invalid_inputs_raise_one_line_errors() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"augment\.hue .*got 0\.7"):
        augment_batch(x, AugmentConfig(hue=0.7), _generator())
    with pytest.raises(ConfigError, match=r"augment\.crop_scale"):
        check_augment_config(AugmentConfig(crop_scale=0.0))
    with pytest.raises(ConfigError, match=r"augment\.brightness"):
        check_augment_config(AugmentConfig(brightness=-0.1))
    with pytest.raises(ConfigError, match=r"augment\.blur "):
        check_augment_config(AugmentConfig(blur=1.5))
    with pytest.raises(DataError, match="float"):
        augment_batch((x * 255).to(torch.uint8), AugmentConfig(), _generator())
    with pytest.raises(DataError, match=r"\(B, 3, H, W\)"):
        augment_batch(x.permute(0, 2, 3, 1), AugmentConfig(), _generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_batch_runs_on_the_gpu(images: torch.Tensor) -> None:
    x = images.cuda().contiguous(memory_format=torch.channels_last)
    out = augment_batch(x, ALL_ON, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == x.device and out.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, x)
    with pytest.raises(ConfigError, match="generator"):
        augment_batch(x, ALL_ON, _generator())


# ---------------------------------------------------------------------------------------------
# Colour spaces


def test_hed_round_trip_returns_the_input(images: torch.Tensor) -> None:
    _assert_close(hed_to_rgb(rgb_to_hed(images)), images, atol=1e-4)
    jittered = augment._hed_jitter(images.clone(), 0.0, _generator())  # zero strength
    _assert_close(jittered, images, atol=1e-4)


def test_hed_separates_a_pure_haematoxylin_colour() -> None:
    concentration = torch.tensor([0.0, 0.3, 0.8])
    haematoxylin = augment._RGB_FROM_HED[0].float()
    rgb = torch.exp(-concentration.view(3, 1) * haematoxylin).T.reshape(1, 3, 1, 3)
    stains = rgb_to_hed(rgb)[0, :, 0, :]  # (3 stains, 3 pixels)
    _assert_close(stains[0], concentration, atol=1e-5)
    _assert_close(stains[1:], torch.zeros(2, 3), atol=1e-5)


def test_hed_jitter_changes_stain_amounts_within_the_strength() -> None:
    stains = torch.zeros(64, 3, 4, 4)
    stains[:, 0] = 0.5  # haematoxylin only
    images = hed_to_rgb(stains)
    out = augment._hed_jitter(images, 0.05, _generator())
    haematoxylin = rgb_to_hed(out)[:, 0]
    # alpha * 0.5 + beta with alpha in [0.95, 1.05] and beta in [-0.05, 0.05].
    assert haematoxylin.min() >= 0.5 * 0.95 - 0.05 - 1e-4
    assert haematoxylin.max() <= 0.5 * 1.05 + 0.05 + 1e-4
    assert haematoxylin.std() > 0.01


def test_fused_brightness_contrast_saturation_equal_the_sequential_steps() -> None:
    # Mid-range colours and small factors: no clamping, where fused and sequential agree exactly.
    x = torch.rand(16, 3, 8, 8, generator=_generator(11)) * 0.5 + 0.25
    config = AugmentConfig(dihedral=False, brightness=0.1, contrast=0.1, saturation=0.1)
    fused = augment._colour_jitter(x, config, _generator(12))
    generator = _generator(12)
    brightness, contrast, saturation = (
        augment._uniform(0.9, 1.1, (16, 1, 1, 1), x, generator) for _ in range(3)
    )
    expected = x * brightness
    expected = contrast * expected + (1 - contrast) * augment._grayscale(expected).mean(
        dim=(2, 3), keepdim=True
    )
    expected = saturation * expected + (1 - saturation) * augment._grayscale(expected)
    _assert_close(fused, expected, atol=1e-6)


def test_hsv_round_trip_and_known_colours(images: torch.Tensor) -> None:
    _assert_close(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-5)
    colours = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0]], dtype=torch.float32)
    hsv = rgb_to_hsv(colours.T.reshape(1, 3, 1, 5))[0, :, 0].T
    expected = torch.tensor([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5], [0, 0, 0]])
    _assert_close(hsv, expected, atol=1e-6)


@pytest.mark.parametrize("shift", [0.0, 0.13, -0.4, 0.5])
def test_fused_hue_shift_equals_the_hsv_round_trip(images: torch.Tensor, shift: float) -> None:
    x = images.clone()
    x[0, :, :4] = 0.5  # grey pixels
    x[0, 1, 4:8] = x[0, 0, 4:8]  # ties between the maximum channels
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + shift, 1.0)
    expected = hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))
    shifted = augment._shift_hue(x, torch.full((len(x), 1, 1), shift))
    _assert_close(shifted, expected, atol=1e-5)


def test_half_a_turn_of_hue_turns_red_into_cyan() -> None:
    red = torch.tensor([0.9, 0.2, 0.2]).view(1, 3, 1, 1)
    cyan = augment._shift_hue(red, torch.full((1, 1, 1), 0.5))
    _assert_close(cyan.flatten(), torch.tensor([0.2, 0.9, 0.9]), atol=1e-6)
    assert math.isclose(float(rgb_to_hsv(cyan)[0, 0]), 0.5, abs_tol=1e-6)
