"""A small real-model checkpoint and real PCam patches for the ``pcamlab serve`` tests.

The checkpoint is a seeded ``simple-cnn`` (width 4, untrained) whose stored threshold is the median
probability of the test patches, so both classes occur in every answer. Patches are real ones from the
shipped sample, encoded losslessly (PNG) so that server answers must equal the predictor's exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fixtures_data import sample_patches
from pcamlab.config import ModelConfig, RunConfig
from pcamlab.models import build_model
from pcamlab.runtime import InputContract, TorchPredictor, save_checkpoint

__all__ = ["MEAN", "STD", "serve_patches", "write_serve_checkpoint", "png_bytes"]

MEAN, STD = [0.70, 0.54, 0.69], [0.16, 0.20, 0.15]
METADATA = {"epoch": 3, "val_auc": 0.8765, "val_loss": 0.4321}


def serve_patches(count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Real patches, uint8 (count, 96, 96, 3), both classes, and their labels."""
    return sample_patches(count, "valid", seed=7)


def write_serve_checkpoint(path: Path, patches: np.ndarray) -> Path:
    """A seeded simple-cnn checkpoint whose threshold splits ``patches`` in half."""
    config = RunConfig(model=ModelConfig(name="simple-cnn", options={"width": 4}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config.model).eval()
    contract = InputContract(mean=MEAN, std=STD)
    probabilities = TorchPredictor(model, contract).predict_proba(patches)
    contract = contract.replace(threshold=float(np.median(probabilities)))
    return save_checkpoint(path, model, config, contract, METADATA)


def png_bytes(image: np.ndarray, mode: str | None = None) -> bytes:
    """``image`` encoded as PNG (optionally converted to another Pillow mode first)."""
    picture = Image.fromarray(image)
    if mode:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()

