"""Channel statistics and the Reinhard / Macenko stain normalisers."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from PIL import Image

from pcamlab.data.normalize import (
    NORMALIZERS,
    MacenkoNormalizer,
    ReinhardNormalizer,
    _rgb_to_lab,
    channel_stats,
    normalizer_from_dict,
    tissue_mask,
)
from pcamlab.errors import CheckpointError, ConfigError, DataError, RunError

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "pcamlab" / "data" / "sample"
PATCH_COUNT = 6

# Stain optical-density directions for synthetic patches: Ruifrok-Johnston haematoxylin, and an
# eosin with more red and blue absorption than Ruifrok's (0.07, 0.99, 0.11), so that pure-eosin
# pixels pass Macenko's "OD >= beta in every channel" tissue test at realistic concentrations.
HAEMATOXYLIN = np.array([0.650, 0.704, 0.286]) / np.linalg.norm([0.650, 0.704, 0.286])
EOSIN = np.array([0.25, 0.90, 0.30]) / np.linalg.norm([0.25, 0.90, 0.30])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on the shared 2-core machine, 2 threads stall each other (seconds per call)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _stained(stains: np.ndarray, light_intensity: float = 240.0) -> np.ndarray:
    """uint8 (N, H, W, 3) from concentrations (N, H, W, 2) of the two stain vectors above."""
    optical_density = stains @ np.stack([HAEMATOXYLIN, EOSIN])  # (N, H, W, 3)
    return np.clip(np.rint(light_intensity * np.exp(-optical_density)), 0, 255).astype(np.uint8)


def _synthetic_patches(count: int, seed: int = 0) -> np.ndarray:
    """H&E-like uint8 (count, 48, 48, 3): blobs of haematoxylin and of eosin, overlapping in places."""
    rng = np.random.default_rng(seed)
    fields = torch.from_numpy(rng.random((count, 2, 6, 6)))
    fields = functional.interpolate(fields, size=(48, 48), mode="bilinear").permute(0, 2, 3, 1).numpy()
    stains = np.maximum(fields - 0.4, 0.0) * np.array([3.0, 2.0])  # (count, 48, 48, 2), zero = glass
    return _stained(stains)


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
    step = max(1, len(files) // (4 * PATCH_COUNT))
    candidates = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files[::step]])
    # The patches with the most tissue first: several PCam patches are mostly glass.
    tissue = [tissue_mask(image).mean() for image in candidates]
    return candidates[np.argsort(tissue, kind="stable")[::-1][:PATCH_COUNT]]


def _tissue_lab_stats(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(2, 3): mean and std of the l-alpha-beta colours of the tissue pixels (or of ``mask``)."""
    lab = _rgb_to_lab(image[tissue_mask(image) if mask is None else mask])
    return np.stack([lab.mean(axis=0), lab.std(axis=0)])


def _shifted_stains(image: np.ndarray) -> np.ndarray:
    """The same tissue with much paler haematoxylin and stronger eosin (a different lab's stain)."""
    optical_density = -np.log((image.astype(np.float64) + 1) / 240.0)
    basis = np.stack([HAEMATOXYLIN, EOSIN])  # (2, 3)
    concentrations = optical_density @ np.linalg.pinv(basis)  # (H, W, 2)
    return _stained(concentrations * np.array([0.5, 1.6]))


# ---------------------------------------------------------------------------------------------
# channel_stats


def test_channel_stats_matches_numpy_over_several_slices() -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    mean, std = channel_stats(images, batch=3)
    as_float = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, as_float.mean(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, as_float.std(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    assert len(mean) == 3 and all(isinstance(value, float) for value in mean + std)


def test_channel_stats_streams_from_a_memmap_and_an_hdf5_dataset(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    expected = channel_stats(images)
    memmap = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=images.shape)
    memmap[:] = images
    assert channel_stats(memmap, batch=2) == expected
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle.create_dataset("x", data=images, chunks=(1, 4, 4, 3))
    with h5py.File(tmp_path / "x.h5", "r") as handle:
        assert channel_stats(handle["x"], batch=4) == expected


def test_channel_stats_rejects_what_it_cannot_use() -> None:
    with pytest.raises(DataError, match="uint8"):
        channel_stats(np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"\(N, H, W, 3\)"):
        channel_stats(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="0 images"):
        channel_stats(np.zeros((0, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match="batch"):
        channel_stats(np.zeros((1, 4, 4, 3), dtype=np.uint8), batch=0)


@pytest.mark.shared
def test_channel_stats_of_the_real_hdf5_split_is_h_and_e_like(shared_data: Path) -> None:
    path = shared_data / "pcam-h5" / "camelyonpatch_level_2_split_valid_x.h5"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with h5py.File(path, "r") as handle:
        dataset = handle["x"]
        mean, std = channel_stats(dataset, batch=256)
        first = np.asarray(dataset[:100])
    # Pink-purple tissue: green is absorbed most by eosin and haematoxylin.
    assert mean[1] < mean[0] and mean[1] < mean[2]
    assert all(0.3 < value < 0.9 for value in mean) and all(0.05 < value < 0.4 for value in std)
    expected = first.reshape(-1, 3).astype(np.float64).mean(axis=0) / 255
    np.testing.assert_allclose(channel_stats(first, batch=7)[0], expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# Normalisers


@pytest.mark.parametrize("cls", [ReinhardNormalizer, MacenkoNormalizer])
def test_fitting_on_a_patch_and_transforming_it_changes_little(cls: type, patches: np.ndarray) -> None:
    normalizer = cls().fit(patches[0])
    assert normalizer.fit(patches[0]) is normalizer  # fit returns self
    difference = np.abs(normalizer.transform(patches[0]).astype(int) - patches[0]).mean()
    assert difference < 8  # Macenko drops the OD component outside the stain plane


def test_reinhard_maps_a_patch_to_the_reference_statistics(patches: np.ndarray) -> None:
    reference, source = patches[0], _shifted_stains(patches[1])
    normalizer = ReinhardNormalizer().fit(reference)
    np.testing.assert_allclose(normalizer.mean_, _tissue_lab_stats(reference)[0])
    target = _tissue_lab_stats(reference)
    mask = tissue_mask(source)  # the pixels whose statistics the transform matched
    before = np.abs(_tissue_lab_stats(source, mask) - target).sum()
    after = np.abs(_tissue_lab_stats(normalizer.transform(source), mask) - target).sum()
    assert after < 0.2 * before


def test_macenko_recovers_known_stain_vectors() -> None:
    normalizer = MacenkoNormalizer().fit(_synthetic_patches(4))
    haematoxylin, eosin = normalizer.stain_matrix_
    assert haematoxylin @ HAEMATOXYLIN > 0.99
    assert eosin @ EOSIN > 0.99
    np.testing.assert_allclose(np.linalg.norm(normalizer.stain_matrix_, axis=1), 1.0)


def test_macenko_undoes_a_change_of_stain_strength() -> None:
    # Patches that follow the stain model exactly: the original colours come back.
    for index, reference in enumerate(_synthetic_patches(3, seed=4)):
        source = _shifted_stains(reference)
        output = MacenkoNormalizer().fit(reference).transform(source)
        before = np.abs(source.astype(int) - reference).mean()
        after = np.abs(output.astype(int) - reference).mean()
        assert after < 0.25 * before, index


def test_macenko_gives_a_patch_the_reference_stains(patches: np.ndarray) -> None:
    normalizer = MacenkoNormalizer().fit(patches[0])
    output = normalizer.transform(_shifted_stains(patches[1]))
    # Re-estimating on the output finds the reference's stain vectors and concentration maxima.
    estimated = MacenkoNormalizer().fit(output)
    assert (np.sum(estimated.stain_matrix_ * normalizer.stain_matrix_, axis=1) > 0.98).all()
    # Loose: uint8 rounding and clipping of the darkest pixels lower the re-estimated maxima, but
    # without the rescaling they would be off by the factors 0.5 and 1.6 of _shifted_stains.
    np.testing.assert_allclose(estimated.max_concentrations_, normalizer.max_concentrations_, rtol=0.25)


@pytest.mark.parametrize("cls", [ReinhardNormalizer, MacenkoNormalizer])
def test_background_patches_pass_through_unchanged(cls: type, patches: np.ndarray) -> None:
    normalizer = cls().fit(patches[:2])
    white = np.full(patches.shape[1:], 255, dtype=np.uint8)
    speckled = np.full(patches.shape[1:], 236, dtype=np.uint8)
    speckled[:2, :2] = (120, 60, 140)  # a few stained pixels: under 1% of the patch
    assert np.array_equal(normalizer.transform(white), white)
    batch = np.stack([white, patches[2], speckled])
    output = normalizer.transform(batch)
    assert output.shape == batch.shape and output.dtype == np.uint8
    assert np.array_equal(output[0], white) and np.array_equal(output[2], speckled)
    assert not np.array_equal(output[1], patches[2])
    with pytest.raises(DataError, match="reference"):
        cls().fit(white)


@pytest.mark.parametrize("cls", [ReinhardNormalizer, MacenkoNormalizer])
def test_a_fitted_normalizer_survives_json(cls: type, patches: np.ndarray) -> None:
    normalizer = cls().fit(patches[:2])
    stored = json.loads(json.dumps(normalizer.to_dict()))
    restored = normalizer_from_dict(stored)
    assert type(restored) is cls and stored["method"] in NORMALIZERS
    assert np.array_equal(restored.transform(patches[2:4]), normalizer.transform(patches[2:4]))
    assert type(cls.from_dict(stored)) is cls


def test_stored_normalizers_are_checked(patches: np.ndarray) -> None:
    stored = MacenkoNormalizer().fit(patches[0]).to_dict()
    with pytest.raises(ConfigError, match="did you mean 'macenko'"):
        normalizer_from_dict({**stored, "method": "macenk"})
    with pytest.raises(CheckpointError, match=r"state\.stain_matrix .*shape \(2, 3\)"):
        normalizer_from_dict({**stored, "state": {**stored["state"], "stain_matrix": [1.0, 2.0]}})
    with pytest.raises(CheckpointError, match="method 'reinhard'"):
        ReinhardNormalizer.from_dict(stored)


def test_normalizers_check_their_inputs(patches: np.ndarray) -> None:
    with pytest.raises(RunError, match="not fitted"):
        MacenkoNormalizer().transform(patches[0])
    normalizer = ReinhardNormalizer().fit(patches[0])
    with pytest.raises(DataError, match="uint8"):
        normalizer.transform(patches.astype(np.float32) / 255)
    with pytest.raises(DataError, match=r"\(N, H, W, 3\)"):
        normalizer.transform(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ConfigError, match="alpha"):
        MacenkoNormalizer(alpha=60)
