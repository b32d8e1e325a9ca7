"""Moved to :mod:`pcamlab.runtime.checkpoint` (the trained model's home, below training).

This module only re-exports it for code written before the move; import from ``pcamlab.runtime``.
"""

from __future__ import annotations

from pcamlab.runtime.checkpoint import FORMAT, Checkpoint, CheckpointHeader, load_checkpoint, read_metadata, save_checkpoint
from pcamlab.runtime.contract import InputContract

__all__ = ["FORMAT", "Checkpoint", "CheckpointHeader", "load_checkpoint", "make_contract", "read_metadata",
           "save_checkpoint"]


def make_contract(mean, std, *, patch_size: int = 96, threshold: float = 0.5) -> InputContract:
    """``InputContract(patch_size=..., mean=..., std=..., threshold=...)``; use InputContract directly."""
    return InputContract(patch_size=patch_size, mean=mean, std=std, threshold=threshold)
