"""The one place the slide package touches a trained model: loading a predictor and reading its contract.

Issue 11 moves prediction to ``pcamlab.runtime`` (``load_predictor`` and an ``InputContract`` dataclass);
until it lands, the deploy predictors are used. Switching is the import below; ``contract_value`` reads a
field from either the dict contract of today or the frozen dataclass of ``pcamlab.runtime.contract``.
"""

from __future__ import annotations

from typing import Any

from pcamlab.deploy.predictors import load_predictor

__all__ = ["load_predictor", "contract_value", "PCAM_MPP"]

PCAM_MPP = 0.972  # um/px of PCam patches: Camelyon16's 40x scans (0.243 um/px) undersampled 4x to 10x (PCam README)


def contract_value(contract: Any, name: str, default: Any) -> Any:
    """``contract[name]`` (dict) or ``contract.name`` (dataclass), else ``default`` when absent or None."""
    value = contract.get(name) if isinstance(contract, dict) else getattr(contract, name, None)
    return default if value is None else value
