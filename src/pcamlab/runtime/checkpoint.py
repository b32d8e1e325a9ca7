"""Self-describing checkpoints that load without executing pickled code.

A checkpoint is one ``.safetensors`` file: the model's tensors plus string metadata holding the resolved
run config, the input contract (:class:`pcamlab.runtime.contract.InputContract`) and a few facts about
the run (epoch, monitored value). ``load_checkpoint`` rebuilds the model from the config and loads the
tensors; nothing in the file is ever executed.

Every checkpoint written since the first pcamlab (format ``pcamlab-checkpoint-1``) loads: contract
fields it lacks take the contract's defaults, and a missing ``threshold_source`` is the config's
``evaluate.threshold_method`` (``tests/assets`` holds checkpoints written before this module existed).

Example:
    >>> checkpoint = load_checkpoint("runs/demo/best.safetensors")
    >>> checkpoint.contract.threshold
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
from pcamlab.runtime.contract import InputContract

__all__ = ["Checkpoint", "CheckpointHeader", "save_checkpoint", "load_checkpoint", "read_metadata", "FORMAT"]

FORMAT = "pcamlab-checkpoint-1"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the rebuilt network in eval mode, float32, on the requested device.
        config: the resolved run config it was trained with.
        contract: its input contract.
        metadata: run facts (``epoch``, the monitored value, ``val_auc``, ``val_loss``...).
        path: the file it was read from (None when built in memory).
    """

    model: nn.Module
    config: RunConfig
    contract: InputContract
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


@dataclass(frozen=True)
class CheckpointHeader:
    """A checkpoint's header, read without its tensors (:func:`read_metadata`).

    Attributes:
        config: the run config as stored (nested plain values; ``config_from_dict`` checks it).
        contract: the input contract.
        metadata: run facts.
        path: the file.
    """

    config: dict[str, Any]
    contract: InputContract
    metadata: dict[str, Any]
    path: Path


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: RunConfig,
    contract: InputContract,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write model weights with config, contract and metadata, atomically (temp file + rename).

    Args:
        path: the ``.safetensors`` file to write.
        model: the network (a DistributedDataParallel or compiled wrapper is unwrapped).
        config: the resolved run config.
        contract: the input contract (an InputContract; a dict is read with ``InputContract.from_dict``).
        metadata: JSON-safe run facts.

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    contract = InputContract.coerce(contract)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel / compiled wrappers
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    header = {
        "format": FORMAT,
        "config": json.dumps(config_to_dict(config)),
        "contract": json.dumps(contract.to_dict()),
        "metadata": json.dumps(metadata or {}),
    }
    with atomic_path(path) as temporary:
        save_file(state, temporary, metadata=header)
    return path


def contract_from_stored(values: Any, config: dict[str, Any] | None, where: str) -> InputContract:
    """The InputContract of a stored contract dict; an absent ``threshold_source`` comes from the config."""
    if isinstance(values, dict) and "threshold_source" not in values:
        method = ((config or {}).get("evaluate") or {}).get("threshold_method", "fixed")
        values = {**values, "threshold_source": method}
    return InputContract.from_dict(values, where)


def read_metadata(path: str | Path) -> CheckpointHeader:
    """Read a checkpoint's header (config, contract, metadata) without loading the tensors.

    Raises:
        CheckpointError: the file is missing, not safetensors, not a pcamlab checkpoint, or its header
            is damaged.
    """
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
        config = json.loads(header["config"])
        contract = json.loads(header["contract"])
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} has a damaged header ({error})") from None
    return CheckpointHeader(config, contract_from_stored(contract, config, f"checkpoint {str(path)!r}: contract"),
                            metadata, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model described by a checkpoint and load its weights (eval mode).

    Raises:
        CheckpointError: see :func:`read_metadata`; also a config this pcamlab cannot read, or weights
            that do not fit the model the config describes.
    """
    from safetensors.torch import load_file

    from pcamlab.models import build_model

    path = Path(path)
    header = read_metadata(path)
    try:
        config = config_from_dict(header.config)
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
    return Checkpoint(model, config, header.contract, header.metadata, path)
