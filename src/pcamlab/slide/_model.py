"""The one place the slide package touches a trained model: loading a predictor and reading its contract.

Prediction goes through the one Predictor of ``pcamlab.runtime`` (torch checkpoint, ONNX or TorchScript).
``contract_value`` reads a field of the predictor's contract: the frozen ``InputContract`` dataclass, or a
plain dict from a Predictor written elsewhere (e.g. a test double or the web service's own wrapper).
"""

from __future__ import annotations

from typing import Any

from pcamlab.runtime import load_predictor

__all__ = ["load_predictor", "contract_value", "PCAM_MPP"]

PCAM_MPP = 0.972  # um/px of PCam patches: Camelyon16's 40x scans (0.243 um/px) undersampled 4x to 10x (PCam README)


def contract_value(contract: Any, name: str, default: Any) -> Any:
    """``contract[name]`` (dict) or ``contract.name`` (dataclass), else ``default`` when absent or None."""
    value = contract.get(name) if isinstance(contract, dict) else getattr(contract, name, None)
    return default if value is None else value
