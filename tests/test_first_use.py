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
