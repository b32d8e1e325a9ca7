"""One prediction API over every form of a trained model: uint8 patches in, probabilities out.

A :class:`Predictor` has ``contract`` (its :class:`~pcamlab.runtime.contract.InputContract`) and
``predict_proba(images, *, batch_size=256, tta=False) -> float32 (N,)``, the probability of class 1
(tumour) for uint8 RGB patches (N, H, W, 3). Three runtimes implement it, each registered by name in
:data:`RUNTIMES` with the file suffixes it opens:

- ``torch`` (:class:`TorchPredictor`): a ``.safetensors`` checkpoint, or a model in memory.
- ``onnx`` (:class:`OnnxPredictor`): an ONNX file from ``pcamlab export``, run by onnxruntime (CPU).
- ``torchscript`` (:class:`TorchScriptPredictor`): a TorchScript file from ``pcamlab export``.

Everything but the forward pass is written once, in :class:`PatchPredictor`: the batch check, the
stain normaliser of the contract (never inside an exported graph: it is a per-image numpy estimate),
batching, and test-time augmentation (the mean probability over the 8 dihedral transforms of each
patch). A new runtime subclasses it, writes ``forward(uint8 batch) -> probabilities`` and registers
itself; ``load_predictor`` then opens its files.

Example:
    >>> predictor = load_predictor("runs/demo/best.safetensors")  # or model.onnx, model.pt
    >>> predictor.predict_proba(images, tta=True).shape  # images: uint8 (N, 96, 96, 3)
    (16,)
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from pcamlab.config import RunConfig, config_from_dict
from pcamlab.errors import CheckpointError, ConfigError, PcamlabError, RunError
from pcamlab.registry import Registry
from pcamlab.runtime.checkpoint import Checkpoint, contract_from_stored, load_checkpoint
from pcamlab.runtime.contract import INFERENCE_PRECISIONS, InputContract
from pcamlab.runtime.device import resolve_device, scoring

__all__ = [
    "CPU_FORWARD_BATCH",
    "MODEL_SUFFIXES",
    "ONNX_METADATA_KEYS",
    "RUNTIMES",
    "TORCHSCRIPT_CONFIG_FILE",
    "TORCHSCRIPT_CONTRACT_FILE",
    "TORCHSCRIPT_INPUT_FILE",
    "TORCHSCRIPT_METADATA_FILE",
    "OnnxPredictor",
    "PatchPredictor",
    "Predictor",
    "TorchPredictor",
    "TorchScriptPredictor",
    "dihedral_views",
    "load_onnx",
    "load_predictor",
    "require_onnx",
    "tensor_from_array",
]

# Keys of the ONNX ``metadata_props`` written by ``pcamlab export``.
ONNX_METADATA_KEYS = {
    "contract": "pcamlab.contract",  # the input contract (JSON)
    "config": "pcamlab.config",  # the resolved run config (JSON)
    "metadata": "pcamlab.metadata",  # run facts of the checkpoint (JSON)
    "input": "pcamlab.input",  # "uint8" (NHWC RGB patches) or "float" (normalised NCHW)
    "quantization": "pcamlab.quantization",  # absent for fp32; how the graph was quantised (e.g. int8 static)
}
TORCHSCRIPT_CONTRACT_FILE = "pcamlab_contract.json"
TORCHSCRIPT_INPUT_FILE = "pcamlab_input.txt"
TORCHSCRIPT_CONFIG_FILE = "pcamlab_config.json"  # written since pcamlab.runtime; older files lack it
TORCHSCRIPT_METADATA_FILE = "pcamlab_metadata.json"

RUNTIMES: Registry[type[PatchPredictor]] = Registry("runtime")


@runtime_checkable
class Predictor(Protocol):
    """What every command that scores patches needs from a model.

    Attributes:
        contract: the model's input contract (patch size, threshold, class names...).
    """

    contract: InputContract

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 256, tta: bool = False) -> np.ndarray:
        """float32 (N,) probabilities of class 1 for uint8 RGB patches (N, H, W, 3)."""
        ...


def _read_config(values: dict[str, Any] | None, where: str) -> RunConfig | None:
    """The RunConfig an exported file stores (None when it stores none)."""
    if values is None:
        return None
    try:
        return config_from_dict(values)
    except PcamlabError as error:
        raise CheckpointError(f"{where} holds a config this pcamlab cannot read: {error}") from None


def require_onnx() -> None:
    """Raise a one-line RunError naming the fix when onnx or onnxruntime is not installed."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise RunError(
            f"ONNX export and inference need {' and '.join(missing)}, which is not installed; "
            f"install it with: pip install {' '.join(missing)}"
        )


def tensor_from_array(array: np.ndarray) -> torch.Tensor:
    """A torch tensor of ``array``'s values: its memory when writable and C-contiguous, else a copy's.

    ``np.asarray(PIL.Image)``, memory-mapped files and broadcast views give read-only arrays, which
    ``torch.from_numpy`` wraps only with a warning ("The given NumPy array is not writable"); every
    place in pcamlab that hands a caller's array to torch goes through here.

    Args:
        array: any numpy array, e.g. uint8 patches (N, H, W, 3).

    Returns:
        A CPU tensor of the same shape and dtype.
    """
    return torch.from_numpy(np.require(array, requirements=["C", "W"]))


def dihedral_views(images: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform ``k`` (0..7) of uint8 (N, H, W, 3) patches: the table of ``augment.dihedral``."""
    from pcamlab.data.augment import dihedral

    channels_first = tensor_from_array(images).permute(0, 3, 1, 2)  # (N, 3, H, W) view
    return np.ascontiguousarray(dihedral(channels_first, k).permute(0, 2, 3, 1).numpy())  # (N, H, W, 3)


# On a CPU a forward pass takes at most this many patches, whatever batch the caller reads: measured on the
# default CNN (simple-cnn width 16, 2 threads, quiet Intel Xeon AVX-512 VNNI; scripts/inference_table.py,
# median of 5 passes over 2,048 patches), patches/s at forward batches 16 / 32 / 64 / 128 / 256:
# torch (BN folded) 2047 / 2096 / 1536 / 1112 / 1042, ONNX Runtime fp32 3200 / 2953 / 2726 / 2611 / 2398,
# int8 3266 / 3106 / 3052 / 2778 / 2700: small batches keep the activations in the CPU's cache (the first
# layer's output alone is 590 KB a patch). On a GPU the whole batch goes in one pass.
CPU_FORWARD_BATCH = 32


class PatchPredictor:
    """The part of every predictor that is not the forward pass; subclasses write :meth:`forward`.

    Attributes:
        contract: the input contract.
        config: the run config the model was trained with (a ``RunConfig``), or None when the file
            does not carry one (a model in memory, a TorchScript file exported before pcamlab.runtime).
        metadata: run facts of the checkpoint (``epoch``, ``val_auc``...); empty when unknown.
        path: the file it was loaded from, or None.
        suffixes: file suffixes this runtime opens (class attribute, for :func:`load_predictor`).
        forward_batch_size: the most patches one forward pass gets (:data:`CPU_FORWARD_BATCH` on a CPU,
            None on a GPU = the caller's whole batch); set it to time or run other forward batches.
    """

    suffixes: tuple[str, ...] = ()
    contract: InputContract
    config: RunConfig | None = None
    metadata: dict[str, Any] = {}
    path: Path | None = None
    forward_batch_size: int | None = CPU_FORWARD_BATCH  # most patches per forward pass; None = the whole batch

    @classmethod
    def open(cls, path: Path, device: str = "cpu") -> PatchPredictor:
        """Open a file of this runtime (called by :func:`load_predictor`)."""
        raise NotImplementedError

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """float64 (B,) probabilities of class 1 for a checked, stain-normalised uint8 batch (B, H, W, 3)."""
        raise NotImplementedError

    def predict_proba(
        self,
        images: np.ndarray,
        *,
        batch_size: int = 256,
        tta: bool = False,
        progress: Callable[[int, int], object] | None = None,
    ) -> np.ndarray:
        """Probabilities of class 1 (tumour) for uint8 RGB patches.

        Args:
            images: uint8 (N, patch_size, patch_size, 3), RGB, as decoded from the files.
            batch_size: patches per step (checked, stain-normalised and reported to ``progress``
                together); each step runs as forward passes of at most ``forward_batch_size`` patches.
            tta: average the probability over the 8 dihedral transforms (flips and quarter turns).
            progress: optional ``progress(done, total)``, called after each batch.

        Returns:
            float32 (N,) in [0, 1] (averaged in float64 under ``tta``).

        Raises:
            DataError: the images are not uint8 (N, patch_size, patch_size, 3).
            ConfigError: batch_size < 1.
        """
        from pcamlab.data.augment import DIHEDRAL_TRANSFORMS

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
        images = self.contract.prepare(self.contract.check_batch(images))
        views = range(DIHEDRAL_TRANSFORMS) if tta else range(1)
        outputs = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            total = np.zeros(len(batch), dtype=np.float64)
            for k in views:
                total += self._forward_in_passes(dihedral_views(batch, k) if k else batch)
            outputs[start : start + len(batch)] = total / len(views)
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return outputs

    def _forward_in_passes(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`forward` over ``batch`` in passes of at most ``forward_batch_size`` patches; float64 (B,)."""
        size = self.forward_batch_size
        if not size or len(batch) <= size:
            return self.forward(batch)
        return np.concatenate([self.forward(batch[start : start + size]) for start in range(0, len(batch), size)])


@RUNTIMES.register("torch")
class TorchPredictor(PatchPredictor):
    """A torch model with its contract: a ``.safetensors`` checkpoint or a network in memory.

    Args:
        model: the network (logit of class 1, shape (B, 1)); put in eval mode.
        contract: its input contract (a dict is read with ``InputContract.from_dict``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; the model is moved there.
        precision: ``fp32`` | ``bf16`` (autocast); default ``contract.precision``.
        checkpoint: the Checkpoint it came from, if any (its config and metadata).
        fold_batch_norm: score with a copy whose batch-norm layers are folded into the convolutions
            and whose weights are channels_last (:func:`pcamlab.runtime.fold.fold_batch_norm`; same
            probabilities within float rounding). ``model`` itself is left as it is (Grad-CAM hooks it).

    Example:
        >>> predictor = TorchPredictor.from_checkpoint("runs/demo/best.safetensors")
    """

    suffixes = (".safetensors",)

    def __init__(
        self,
        model: nn.Module,
        contract: InputContract | dict[str, Any],
        *,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        checkpoint: Checkpoint | None = None,
        fold_batch_norm: bool = True,
    ):
        self.contract = InputContract.coerce(contract)
        self.device = device if isinstance(device, torch.device) else resolve_device(device, field="device")
        self.precision = precision or self.contract.precision
        if self.precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"precision must be one of {list(INFERENCE_PRECISIONS)}; got {self.precision!r}")
        self.model = model.to(self.device).eval()
        self.forward_batch_size = CPU_FORWARD_BATCH if self.device.type == "cpu" else None
        self.fold_batch_norm = fold_batch_norm
        self._scoring_model: nn.Module | None = None  # built at the first forward: the folded copy
        self._scoring_version: tuple | None = None  # _weights_version() the copy was built from
        self.checkpoint = checkpoint
        self.path = checkpoint.path if checkpoint is not None else None
        self.config = checkpoint.config if checkpoint is not None else None
        self.metadata = checkpoint.metadata if checkpoint is not None else {}

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str | os.PathLike, device: str = "cpu",
                        precision: str | None = None) -> TorchPredictor:
        """A predictor for a checkpoint file or a loaded :class:`Checkpoint`."""
        torch_device = resolve_device(device, field="device") if isinstance(device, str) else device
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, device=torch_device)
        return cls(checkpoint.model, checkpoint.contract, device=torch_device, precision=precision,
                   checkpoint=checkpoint)

    @classmethod
    def open(cls, path: Path, device: str = "cpu") -> TorchPredictor:
        return cls.from_checkpoint(path, device=device)

    def _weights_version(self) -> tuple:
        """Identity and in-place version of every parameter and buffer: changes when weights change."""
        return tuple((id(tensor), tensor._version) for tensor in itertools.chain(self.model.parameters(), self.model.buffers()))

    @property
    def scoring_model(self) -> nn.Module:
        """The network the forward pass runs: ``model``, or its batch-norm-folded channels_last copy.

        The copy is rebuilt whenever ``model``'s weights changed since it was made (``load_state_dict``,
        an optimiser step, replaced parameters), so a predictor built once scores the weights it is
        given at each call (the time-to-AUC benchmark loads snapshot after snapshot into one model).
        """
        version = self._weights_version() if self.fold_batch_norm else None
        if self._scoring_model is None or version != self._scoring_version:
            self._scoring_version = version
            if self.fold_batch_norm:
                from pcamlab.runtime.fold import fold_batch_norm

                with torch.inference_mode(False):  # ordinary tensors: the copy may be traced or exported later
                    self._scoring_model = fold_batch_norm(self.model).to(memory_format=torch.channels_last)
            else:
                self._scoring_model = self.model
        return self._scoring_model

    @torch.inference_mode()
    def forward(self, batch: np.ndarray) -> np.ndarray:
        x = self.contract.to_model_input(tensor_from_array(batch).to(self.device))  # (B, 3, H, W)
        with scoring(self.device, self.precision):  # IEEE fp32 on GPUs too (no TF32)
            logits = self.scoring_model(x)  # (B, 1)
        return torch.sigmoid(logits.float().reshape(-1)).double().cpu().numpy()  # (B,)


@RUNTIMES.register("onnx")
class OnnxPredictor(PatchPredictor):
    """An exported ONNX model run by onnxruntime on the CPU.

    Attributes:
        contract: the input contract stored in the file's metadata.
        config: the run config stored with it.
        metadata: the checkpoint's run facts stored with it.
        input_kind: ``"uint8"`` (the graph takes uint8 NHWC patches and normalises inside) or
            ``"float"`` (it takes the model input; this class builds it with the contract).
        session: the ``onnxruntime.InferenceSession``.
    """

    suffixes = (".onnx",)

    def __init__(self, path: str | os.PathLike, *, threads: int = 0):
        require_onnx()
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(
                f"ONNX file {str(self.path)!r} does not exist; write one from a checkpoint with pcamlab export "
                "(pcamlab.deploy.export_checkpoint, format 'onnx')"
            )
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise CheckpointError(
                f"onnxruntime cannot load {str(self.path)!r} ({str(error).splitlines()[0]}); export it again"
            ) from None
        properties = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEYS["contract"] not in properties:
            raise CheckpointError(
                f"ONNX file {str(self.path)!r} has no {ONNX_METADATA_KEYS['contract']!r} metadata, so its input "
                "contract is unknown; export it with pcamlab export"
            )
        stored_config = json.loads(properties.get(ONNX_METADATA_KEYS["config"], "null"))
        self.config = _read_config(stored_config, f"ONNX file {str(self.path)!r}")
        self.contract = contract_from_stored(json.loads(properties[ONNX_METADATA_KEYS["contract"]]), stored_config,
                                             f"ONNX file {str(self.path)!r}: contract")
        self.metadata = json.loads(properties.get(ONNX_METADATA_KEYS["metadata"], "{}"))
        self.input_kind = properties.get(ONNX_METADATA_KEYS["input"], "uint8")
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def open(cls, path: Path, device: str = "cpu") -> OnnxPredictor:
        return cls(path)

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """What the graph takes for uint8 patches (N, H, W, 3): them, or the float model input (N, 3, H, W)."""
        if self.input_kind == "uint8":
            return images
        return np.ascontiguousarray(self.contract.to_model_input(tensor_from_array(images)).numpy())

    def run(self, model_input: np.ndarray) -> np.ndarray:
        """float64 (N,) probabilities for an input already in the graph's form (see :meth:`model_input`)."""
        probability = self.session.run(["probability"], {self.input_name: model_input})[0]
        return probability.reshape(-1).astype(np.float64)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self.run(self.model_input(batch))


@RUNTIMES.register("torchscript")
class TorchScriptPredictor(PatchPredictor):
    """An exported TorchScript model (uint8 NHWC input, normalisation inside), run by torch."""

    suffixes = (".pt", ".torchscript")

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(
                f"TorchScript file {str(self.path)!r} does not exist; write one with: "
                "pcamlab export (pcamlab.deploy.export_checkpoint, format 'torchscript')"
            )
        extra = {name: "" for name in (TORCHSCRIPT_CONTRACT_FILE, TORCHSCRIPT_INPUT_FILE, TORCHSCRIPT_CONFIG_FILE,
                                       TORCHSCRIPT_METADATA_FILE)}
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the file still loads
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location=device, _extra_files=extra)
        except Exception as error:  # torch.jit raises several types for a foreign file
            raise CheckpointError(
                f"torch cannot load {str(self.path)!r} as TorchScript ({str(error).splitlines()[0]}); export it again"
            ) from None
        if not extra[TORCHSCRIPT_CONTRACT_FILE]:
            raise CheckpointError(
                f"TorchScript file {str(self.path)!r} carries no {TORCHSCRIPT_CONTRACT_FILE}; "
                "export it with pcamlab export"
            )
        stored_config = json.loads(extra[TORCHSCRIPT_CONFIG_FILE] or "null")
        self.config = _read_config(stored_config, f"TorchScript file {str(self.path)!r}")
        self.metadata = json.loads(extra[TORCHSCRIPT_METADATA_FILE] or "{}")
        self.contract = contract_from_stored(json.loads(extra[TORCHSCRIPT_CONTRACT_FILE]), stored_config,
                                             f"TorchScript file {str(self.path)!r}: contract")
        self.device = device
        self.forward_batch_size = CPU_FORWARD_BATCH if torch.device(device).type == "cpu" else None

    @classmethod
    def open(cls, path: Path, device: str = "cpu") -> TorchScriptPredictor:
        return cls(path, device=device)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            probability, _ = self.module(tensor_from_array(batch).to(self.device))
        return probability.double().cpu().numpy()


def load_onnx(path: str | os.PathLike, *, threads: int = 0) -> OnnxPredictor:
    """Load an ONNX file written by ``pcamlab export`` as a predictor.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (0 = its default).

    Example:
        >>> load_onnx("model.onnx").predict_proba(images).shape
        (16,)
    """
    return OnnxPredictor(path, threads=threads)


MODEL_SUFFIXES = tuple(suffix for name in RUNTIMES.names() for suffix in RUNTIMES.get(name).suffixes)


def load_predictor(model: Any, device: str = "cpu") -> Predictor:
    """A predictor for a model file, a loaded checkpoint, or a predictor (returned as is).

    Args:
        model: a ``.safetensors`` checkpoint, an ``.onnx`` or TorchScript (``.pt``) file written by
            ``pcamlab export``, a loaded :class:`Checkpoint`, or any :class:`Predictor`.
        device: where torch runtimes run (``auto``, ``cpu``, ``cuda[:N]``); ONNX runs on the CPU.

    Returns:
        A :class:`Predictor`; its runtime is chosen by the file suffix (:data:`RUNTIMES`).

    Raises:
        CheckpointError: the file is missing, its suffix belongs to no runtime, or it cannot be read.

    Example:
        >>> load_predictor("model.onnx").predict_proba(images).dtype
        dtype('float32')
    """
    if isinstance(model, Predictor):
        return model
    if isinstance(model, Checkpoint):
        return TorchPredictor.from_checkpoint(model, device=device)
    path = Path(model)
    suffix = path.suffix.lower()
    for name in RUNTIMES.names():
        runtime = RUNTIMES.get(name)
        if suffix in runtime.suffixes:
            return runtime.open(path, device=device)
    if not path.exists():
        raise CheckpointError(f"model file {str(path)!r} does not exist; pass a checkpoint (.safetensors) "
                              "or a file written by pcamlab export")
    raise CheckpointError(
        f"model file {str(path)!r} has suffix {suffix or '(none)'!r}; pass one of {list(MODEL_SUFFIXES)}: a "
        "checkpoint (.safetensors), an ONNX file (.onnx) or a TorchScript file (.pt) written by pcamlab export"
    )
