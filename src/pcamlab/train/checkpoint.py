"""Self-describing checkpoints that load without executing pickled code.

A checkpoint is one ``.safetensors`` file: the model's tensors plus string metadata holding the resolved
run config, the input contract (patch size, normalisation, class names, decision threshold) and a few
facts about the run (epoch, monitored value). ``load_checkpoint`` rebuilds the model from the config
and loads the tensors; nothing in the file is ever executed.

Example:
    >>> checkpoint = load_checkpoint("runs/demo/best.safetensors")
    >>> checkpoint.contract["threshold"]
    0.5
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pcamlab.config import RunConfig, config_from_dict, config_to_dict
from pcamlab.errors import CheckpointError, PcamlabError
from pcamlab.fileio import atomic_path

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "read_metadata", "make_contract", "FORMAT"]

FORMAT = "pcamlab-checkpoint-1"
CLASS_NAMES = ["normal", "tumour"]


def make_contract(
    mean: list[float], std: list[float], *, patch_size: int = 96, threshold: float = 0.5
) -> dict[str, Any]:
    """The input contract a checkpoint carries: what a caller must feed the model and how to read it."""
    return {
        "patch_size": int(patch_size),
        "channels": "RGB",
        "input": "(image / 255 - mean) / std, float (B, 3, H, W)",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "class_names": list(CLASS_NAMES),
        "output": "logit of class 1 (tumour); probability = sigmoid(logit)",
        "threshold": float(threshold),
    }


@dataclass
class Checkpoint:
    model: nn.Module
    config: RunConfig
    contract: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: RunConfig,
    contract: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write model weights with config, contract and metadata, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel / compiled wrappers
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    header = {
        "format": FORMAT,
        "config": json.dumps(config_to_dict(config)),
        "contract": json.dumps(contract),
        "metadata": json.dumps(metadata or {}),
    }
    with atomic_path(path) as temporary:
        save_file(state, temporary, metadata=header)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint's header (config, contract, metadata) without loading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; pass a .safetensors file from a run folder "
            "(e.g. runs/NAME/best.safetensors)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for a malformed file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable safetensors file ({error}); "
            "was it written by pcamlab train?"
        ) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {header.get('format')!r}, expected {FORMAT!r}; "
            "only checkpoints written by pcamlab train can be loaded"
        )
    try:
        return {
            "config": json.loads(header["config"]),
            "contract": json.loads(header["contract"]),
            "metadata": json.loads(header.get("metadata", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} has a damaged header ({error})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model described by a checkpoint and load its weights (eval mode)."""
    from safetensors.torch import load_file

    from pcamlab.models import build_model

    path = Path(path)
    header = read_metadata(path)
    try:
        config = config_from_dict(header["config"])
    except PcamlabError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a config this pcamlab cannot read: {error}") from None
    model = build_model(config.model)
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit model {config.model.name!r}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; was the model code changed since it was written?"
        )
    model.to(device).eval()
    return Checkpoint(model, config, header["contract"], header["metadata"], path)
