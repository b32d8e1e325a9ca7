"""Batch inference: uint8 patches in, probabilities of class 1 (tumour) out.

The input transform is the checkpoint's contract: ``(image / 255 - mean) / std`` in channels_last
layout. Test-time augmentation (``tta=True``) averages the probabilities over the 8 dihedral transforms.

Example:
    >>> from pcamlab.train.checkpoint import load_checkpoint
    >>> checkpoint = load_checkpoint("runs/demo/best.safetensors")
    >>> probabilities = predict_proba(checkpoint.model, images, checkpoint.contract)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pcamlab.errors import DataError

__all__ = ["to_unit", "normalize_unit", "to_model_input", "apply_stain_normalization", "predict_proba", "predict_logits"]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]; the permuted NHWC strides are channels_last."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def normalize_unit(x: torch.Tensor, contract: dict[str, Any]) -> torch.Tensor:
    """Float images in [0, 1] (B, 3, H, W) -> ``(x - mean) / std`` with the contract's statistics."""
    mean = torch.tensor(contract["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(contract["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def to_model_input(images: torch.Tensor, contract: dict[str, Any]) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) in channels_last memory layout."""
    return normalize_unit(to_unit(images), contract)


def apply_stain_normalization(images: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    """uint8 patches through the stain normaliser the model was trained with (unchanged if none)."""
    if not contract.get("stain_normalization"):
        return images
    from pcamlab.data.normalize import normalizer_from_dict

    return normalizer_from_dict(contract["stain_normalization"]).transform(images)


def _check_images(images: np.ndarray, contract: dict[str, Any]) -> None:
    size = int(contract.get("patch_size", 96))
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(
            f"predict needs uint8 RGB patches of shape (N, H, W, 3); got {images.dtype} {images.shape}"
        )
    if images.shape[1:3] != (size, size):
        raise DataError(
            f"this model was trained on {size}x{size} patches; got {images.shape[1]}x{images.shape[2]}: "
            "crop or resize the patches first"
        )


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    contract: dict[str, Any],
    *,
    batch_size: int = 256,
    tta: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: Callable[[int, int], object] | None = None,
) -> np.ndarray:
    """Logits (N,) of class 1; with ``tta`` the mean probability over 8 dihedral views, as a logit."""
    from pcamlab.data.augment import DIHEDRAL_TRANSFORMS, dihedral
    from pcamlab.train.device import autocast

    _check_images(images, contract)
    images = apply_stain_normalization(images, contract)
    device = torch.device(device)
    model.eval()
    views = range(DIHEDRAL_TRANSFORMS) if tta else range(1)
    outputs = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        x = to_model_input(batch, contract)  # (B, 3, H, W)
        probability = torch.zeros(len(batch), dtype=torch.float64, device=device)
        for k in views:
            with autocast(device, precision):
                logits = model(dihedral(x, k) if k else x)  # (B, 1)
            probability += torch.sigmoid(logits.float().reshape(-1)).double()
        probability /= len(views)
        outputs[start : start + len(batch)] = torch.logit(probability, eps=1e-12).cpu().numpy()
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return outputs


def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    contract: dict[str, Any],
    *,
    batch_size: int = 256,
    tta: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: Callable[[int, int], object] | None = None,
) -> np.ndarray:
    """Probabilities (N,) of class 1 (tumour) for uint8 patches (N, H, W, 3)."""
    logits = predict_logits(
        model, images, contract, batch_size=batch_size, tta=tta, device=device,
        precision=precision, progress=progress,
    )
    return 1.0 / (1.0 + np.exp(-logits))
