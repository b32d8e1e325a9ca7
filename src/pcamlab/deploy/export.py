"""Export a checkpoint to ONNX or TorchScript, verified against torch before the file is kept.

The exported graph is, by default, a DEPLOYMENT model: it takes what a slide-tiling pipeline has,
**uint8 RGB patches (B, H, W, 3)** (channels last, no scaling), applies the checkpoint's
normalisation ``(image / 255 - mean) / std`` inside, and returns two outputs of shape (B,):
``probability`` (sigmoid of the logit, class 1 = tumour) and ``logit``. Nothing of pcamlab is then
needed at inference time. ``input_kind="float"`` exports the bare network instead (normalised float
(B, 3, H, W) in, same outputs), for runtimes that prepare tensors themselves.

Stain normalisation (``contract.stain_normalization``, Macenko or Reinhard fitted at training) is
NOT in the graph: it is a per-image numpy estimate. :func:`pcamlab.deploy.load_onnx` applies it from
the stored contract; any other runtime must apply it to the uint8 patches before the graph (the
report's ``stain_normalization`` names the method, None when the checkpoint has none).

The batch axis is dynamic; H and W are fixed at the contract's patch size. The ONNX file carries the
input contract, the run config and the checkpoint metadata as JSON in ``metadata_props`` (keys in
:data:`pcamlab.runtime.predictor.ONNX_METADATA_KEYS`); the TorchScript file carries the contract as
the extra files ``pcamlab_contract.json``, ``pcamlab_config.json`` and ``pcamlab_metadata.json``.

Verification: a few REAL patches of the shipped sample (``open_split("sample", "valid")``) are run
through the exported file (onnxruntime, or ``torch.jit.load``) at two batch sizes and compared with
the checkpoint's torch probabilities; the file is kept only when the largest absolute difference is
within ``tolerance`` (1e-4). The file is written beside the target and renamed into place, so a
failed export leaves nothing behind.

Exporters: ``dynamo`` is ``torch.onnx.export(..., dynamo=True)`` (torch.export based; opset 18);
``legacy`` is the TorchScript-based ``dynamo=False`` path (opset 17). ``auto`` tries dynamo and falls
back to legacy if it raises. TorchScript itself is deprecated in torch 2.13 (still works; prefer ONNX).

Quantisation (``quantize="int8"``, ONNX only): the fp32 graph is quantised by ONNX Runtime's static
post-training quantisation (:func:`quantize_onnx_int8`): weights int8 per output channel, activations
uint8 with ranges calibrated on training patches (``calibration``), batch-norm folded into the
convolutions first (``quant_pre_process``), QDQ format. Its probabilities differ from fp32 by up to a few
hundredths, so it is verified differently: the AUC on the shipped sample's 200 validation patches must
stay within ``INT8_AUC_TOLERANCE`` of the fp32 model's (the report gives both, and the largest
probability difference); measure the change on your own validation split with ``pcamlab evaluate``.

Example:
    >>> report = export_checkpoint("runs/demo/best.safetensors", "runs/demo/model.onnx")
    >>> report["max_abs_diff"] < 1e-4
    True
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcamlab.errors import ConfigError, RunError, RunFolderError, did_you_mean, plain_line
from pcamlab.fileio import json_safe, publish, temporary_file
from pcamlab.runtime.checkpoint import Checkpoint, load_checkpoint
from pcamlab.runtime.contract import InputContract
from pcamlab.runtime.fastest import SOURCE_HASH_KEY, SPEED_KEY, TIMED_PATCHES, TIMED_REPEATS, file_sha256, time_predictor
from pcamlab.runtime.predictor import (
    ONNX_METADATA_KEYS,
    TORCHSCRIPT_CONFIG_FILE,
    TORCHSCRIPT_CONTRACT_FILE,
    TORCHSCRIPT_INPUT_FILE,
    TORCHSCRIPT_METADATA_FILE,
    OnnxPredictor,
    TorchPredictor,
    TorchScriptPredictor,
    require_onnx,
)

__all__ = [
    "EXPORTERS",
    "EXPORT_FORMATS",
    "INPUT_KINDS",
    "NormalisedInputModel",
    "UInt8PatchModel",
    "default_export_path",
    "export_checkpoint",
    "export_onnx",
    "calibration_patches",
    "quantize_onnx_int8",
    "verification_patches",
]

EXPORT_FORMATS = ("onnx", "torchscript")
EXPORTERS = ("auto", "dynamo", "legacy")
INPUT_KINDS = ("uint8", "float")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
VERIFY_PATCHES = 16  # real sample patches run through the exported file
DEFAULT_TOLERANCE = 1e-4  # largest allowed |probability difference| between torch and the export
QUANTIZE_CHOICES = ("none", "int8")
INT8_AUC_TOLERANCE = 0.01  # largest |AUC change| of int8 vs fp32 on the sample's 200 validation patches
CALIBRATION_PATCHES = 512  # training patches that calibrate the int8 activation ranges
# Operators quantised to int8. Quantising only the convolutions left a dequantise -> fp32 ReLU/max-pool ->
# quantise round trip between every two of them and ran at 0.94x fp32's speed; with the activations and
# pooling in int8 too (ReLU folded into the convolution's output range) the default CNN ran at 1.30x
# (simple-cnn width 32, ONNX Runtime, 2 threads, Intel Xeon AVX-512 VNNI; same validation AUC to 0.0002).
# The input normalisation and the sigmoid stay fp32.
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool")


class UInt8PatchModel(nn.Module):
    """uint8 RGB patches (B, H, W, 3) in; ``(probability, logit)``, each (B,), out.

    Computes the contract's own transform to model input (:meth:`InputContract.to_model_input`,
    ``(image / 255 - mean) / std`` per channel, or ``image / 255``) as ``image * scale + shift`` over the
    flattened (B, H * W * 3) patch, with ``scale`` and ``shift`` tiled to that length, then the permute
    to (B, 3, H, W). Same values as the contract's to 3e-7; why flattened: per channel, the broadcast
    runs along the innermost axis of length 3 once ONNX Runtime keeps an int8 graph channels-last, and
    there the normalisation took 33% of the int8 model's time (1,887 patches/s; flattened: 2,519, and
    fp32 ONNX 2,310 -> 2,370; simple-cnn width 16, batch 256, 2 threads, Intel Xeon AVX-512 VNNI).
    """

    def __init__(self, model: nn.Module, contract: InputContract):
        super().__init__()
        self.model = model
        self.contract = contract
        # the contract's own per-channel affine map, read off at black and white (float64): no second formula
        ends = contract.normalize(torch.tensor([0.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1).expand(2, 3, 1, 1))
        shift, scale = ends[0].flatten(), (ends[1] - ends[0]).flatten() / 255.0  # (3,) each
        pixels = contract.patch_size * contract.patch_size
        self.register_buffer("scale", scale.float().repeat(pixels).view(1, -1), persistent=False)  # (1, H*W*3)
        self.register_buffer("shift", shift.float().repeat(pixels).view(1, -1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.flatten(1).float() * self.scale + self.shift  # (B, H*W*3): NHWC order, channel innermost
        x = x.view(images.shape).permute(0, 3, 1, 2)  # (B, 3, H, W), channels_last strides
        logit = self.model(x).reshape(-1)  # (B, 1) -> (B,)
        return torch.sigmoid(logit), logit


class NormalisedInputModel(nn.Module):
    """Normalised float (B, 3, H, W) in; ``(probability, logit)``, each (B,), out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.model(x).reshape(-1)  # (B, 1) -> (B,)
        return torch.sigmoid(logit), logit


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}; got {value!r}{did_you_mean(value, allowed)}",
                          parameters=(name,))
    return value


def default_export_path(checkpoint_path: str | os.PathLike, format: str) -> Path:
    """``runs/x/best.safetensors`` -> ``runs/x/best.onnx`` (or ``best.pt`` for TorchScript)."""
    return Path(checkpoint_path).with_suffix(SUFFIXES[format])


def verification_patches(patch_size: int, count: int = VERIFY_PATCHES) -> np.ndarray:
    """``count`` real patches of the shipped sample's valid split, both classes (uint8 (N, H, W, 3)).

    Falls back to seeded random pixels only when the model's patch size is not the sample's 96.
    """
    from pcamlab.data import PATCH_SIZE, open_split

    if patch_size != PATCH_SIZE:
        return np.random.default_rng(0).integers(0, 256, (count, patch_size, patch_size, 3), dtype=np.uint8)
    reader = open_split("sample", "valid")
    indices = np.linspace(0, len(reader) - 1, count).round().astype(int)  # spread over both class folders
    return np.stack([reader[int(index)][0] for index in indices])  # (count, 96, 96, 3)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' deprecation warnings and the 'torchvision is not installed' log lines."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                                     "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    exporter: str = "auto",
    opset: int | None = None,
    properties: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Export ``module`` (one input ``images``, outputs ``probability`` and ``logit``) to one ONNX file.

    Args:
        module: a model in eval mode whose forward takes one tensor with a leading batch axis.
        example: an example input (batch size >= 2, so the batch axis cannot be specialised to 1).
        path: the ``.onnx`` file to write (weights inside it, no external data file).
        exporter: ``dynamo``, ``legacy`` or ``auto`` (dynamo, falling back to legacy).
        opset: ONNX opset (default 18 for dynamo, 17 for legacy; at least 17).
        properties: string ``metadata_props`` to store in the file.

    Returns:
        ``{"exporter": used, "opset": int, "dynamo_error": str | None}``.
    """
    require_onnx()
    import onnx

    _choice("exporter", exporter, EXPORTERS)
    if opset is not None and opset < 17:
        raise ConfigError(f"opset must be 17 or newer; got {opset}")
    path = Path(path)
    names = {"input_names": ["images"], "output_names": ["probability", "logit"]}
    dynamo_error = None
    used = None
    if exporter in ("auto", "dynamo"):
        try:
            batch = torch.export.Dim("batch", min=1, max=1 << 20)
            with _quiet_exporter():
                torch.onnx.export(
                    module, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                    dynamic_shapes={"images": {0: batch}}, opset_version=opset or 18, **names,
                )
            used = "dynamo"
        except Exception as error:  # the dynamo exporter raises many types on unsupported graphs
            _reraise_interrupt(error)
            if exporter == "dynamo":
                raise RunError(
                    f"the dynamo ONNX exporter failed ({type(error).__name__}: {plain_line(error, 200)}); "
                    "retry with exporter='legacy'", parameters=("exporter",)
                ) from None
            dynamo_error = f"{type(error).__name__}: {plain_line(error, 200)}"
    if used is None:
        with _quiet_exporter():
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=opset or 17,
                dynamic_axes={"images": {0: "batch"}, "probability": {0: "batch"}, "logit": {0: "batch"}},
                **names,
            )
        used = "legacy"
    model = onnx.load(str(path))
    if properties:
        onnx.helper.set_model_props(model, properties)
    model.doc_string = (
        "pcamlab detector of metastases in PCam H&E patches: input 'images', outputs 'probability' and "
        "'logit' (class 1 = tumour); see metadata 'pcamlab.contract'"
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    opset_used = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return {"exporter": used, "opset": int(opset_used), "dynamo_error": dynamo_error}


def _reraise_interrupt(error: BaseException) -> None:
    """Raise the Ctrl+C / SIGTERM an exporter wrapped in its own error (torch.export does), so an interrupt
    stops the export instead of falling back to the legacy exporter."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, KeyboardInterrupt):
            raise error
        error = error.__cause__ or error.__context__


def export_checkpoint(
    checkpoint: Any,
    out: str | os.PathLike | None = None,
    *,
    format: str = "onnx",
    input_kind: str = "uint8",
    exporter: str = "auto",
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    quantize: str = "none",
    calibration: np.ndarray | str | os.PathLike | None = None,
    calibration_count: int = CALIBRATION_PATCHES,
    timing: bool = True,
) -> dict[str, Any]:
    """Export a checkpoint for deployment and verify the file against torch on real patches.

    Args:
        checkpoint: a ``.safetensors`` path or a loaded :class:`pcamlab.runtime.Checkpoint`.
        out: file to write; default the checkpoint path with ``.onnx`` / ``.pt``.
        format: ``onnx`` or ``torchscript``.
        input_kind: ``uint8`` (NHWC patches, normalisation inside: the deployment form) or ``float``
            (normalised NCHW; ONNX only).
        exporter: ONNX exporter, ``auto`` | ``dynamo`` | ``legacy`` (see the module docstring).
        opset: ONNX opset (>= 17; default per exporter).
        tolerance: largest allowed absolute difference of probabilities between torch and the file.
        force: replace an existing ``out``.
        quantize: ``none`` or ``int8`` (ONNX static quantisation; default file name ``NAME.int8.onnx``).
        calibration: int8 only: uint8 ``(N, H, W, 3)`` patches, or a dataset root whose training split
            gives ``calibration_count`` seeded patches; default the checkpoint's own ``data.path``.
        calibration_count: patches drawn from a dataset root for calibration.
        timing: ONNX only: time the verified file and the checkpoint's torch predictor on this CPU
            (:func:`pcamlab.runtime.fastest.time_predictor`, a second or two for the default CNN) and store
            both in the file, so that ``predict --runtime auto`` picks the faster runtime measured here.

    Returns:
        ``{"path", "format", "input_kind", "exporter", "opset", "max_abs_diff", "patches",
        "batch_sizes", "bytes", "tolerance", "dynamo_error", "stain_normalization", "quantize"}``;
        with int8 also ``"calibration"`` (source and count), ``"fp32_bytes"``, ``"sample_auc_fp32"`` and
        ``"sample_auc_int8"``.

    Raises:
        ConfigError: unknown format, exporter or input kind, or an opset below 17.
        RunFolderError: ``out`` exists without ``force`` (exit code 2).
        RunError: the verification difference exceeds ``tolerance``
            (nothing is written then).
        CheckpointError: the checkpoint cannot be loaded.

    Example:
        >>> export_checkpoint("runs/demo/best.safetensors", format="onnx")["path"]
        PosixPath('runs/demo/best.onnx')
    """
    from pcamlab.config import config_to_dict

    _choice("format", format, EXPORT_FORMATS)
    _choice("input_kind", input_kind, INPUT_KINDS)
    _choice("exporter", exporter, EXPORTERS)
    _choice("quantize", quantize, QUANTIZE_CHOICES)
    if format == "torchscript" and input_kind != "uint8":
        raise ConfigError("TorchScript export takes uint8 patches only; use input_kind='uint8' or format='onnx'",
                          parameters=("input_kind", "format"))
    if quantize != "none" and format != "onnx":
        raise ConfigError(f"quantize={quantize!r} needs format='onnx' (ONNX Runtime quantisation); got {format!r}",
                          parameters=("quantize", "format"))
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint, device="cpu")
    if out is None:
        if checkpoint.path is None:
            raise ConfigError("pass out=... : this checkpoint was not loaded from a file, so no default name exists")
        out = default_export_path(checkpoint.path, format)
        if quantize == "int8":
            out = out.with_suffix(".int8.onnx")
    calibration_images, calibration_source = None, None
    if quantize == "int8":
        calibration_images, calibration_source = calibration_patches(
            checkpoint.config.data.path if calibration is None else calibration, calibration_count,
            checkpoint.contract.patch_size,
        )
    out = Path(out)
    if out.is_dir():
        raise RunFolderError(f"out {str(out)!r} is a folder; out names the file to write", parameters=("out",))
    allowed = {"onnx": (".onnx",), "torchscript": (".pt", ".torchscript")}[format]
    if out.suffix.lower() not in allowed:  # load_predictor opens a model file by its suffix
        raise ConfigError(f"out {str(out)!r} must end with {' or '.join(allowed)} for {'an ONNX' if format == 'onnx' else 'a TorchScript'} file, so that "
                          "pcamlab predict can open it", parameters=("out",))
    if format == "onnx" and quantize != "int8" and out.name.lower().endswith(".int8.onnx"):
        raise ConfigError(
            f"out {str(out)!r}: a name ending in .int8.onnx is for quantize='int8' exports only (predict's runtime "
            "auto and int8 look for the int8 model there); name an fp32 export NAME.onnx",
            parameters=("out", "quantize"))
    if checkpoint.path is not None and out.resolve() == Path(checkpoint.path).resolve():
        raise ConfigError(f"out {str(out)!r} is the checkpoint being exported; choose another name", parameters=("out",))
    if out.exists() and not force:
        raise RunFolderError(f"{str(out)!r} already exists; choose another out or pass force=True to replace it",
                       parameters=("out", "force"))

    contract = checkpoint.contract
    model = checkpoint.model.to("cpu").float().eval()
    wrapped = (UInt8PatchModel(model, contract) if input_kind == "uint8" else NormalisedInputModel(model)).eval()
    patches = verification_patches(contract.patch_size)  # (N, H, W, 3) uint8
    expected = TorchPredictor(model, contract, precision="fp32").predict_proba(patches)  # torch fp32 reference, (N,)
    example_uint8 = torch.from_numpy(patches[:2].copy())
    example = example_uint8 if input_kind == "uint8" else contract.to_model_input(example_uint8).contiguous()

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_file(out)  # pid in the name: a killed writer's file is removed by the next one
    os.close(handle)
    report: dict[str, Any] = {"format": format, "input_kind": input_kind, "dynamo_error": None}
    try:
        if format == "onnx":
            properties = {
                ONNX_METADATA_KEYS["contract"]: json.dumps(contract.to_dict()),
                ONNX_METADATA_KEYS["config"]: json.dumps(config_to_dict(checkpoint.config)),
                ONNX_METADATA_KEYS["metadata"]: json.dumps(json_safe(checkpoint.metadata), allow_nan=False),
                ONNX_METADATA_KEYS["input"]: input_kind,
            }
            if checkpoint.path is not None:  # lets predict's runtime=auto trust this file for this checkpoint
                properties[SOURCE_HASH_KEY] = file_sha256(checkpoint.path)
            report.update(export_onnx(wrapped, example, temporary, exporter=exporter, opset=opset,
                                      properties=properties))
            if quantize == "int8":
                report["fp32_bytes"] = Path(temporary).stat().st_size
                properties[ONNX_METADATA_KEYS["quantization"]] = "int8 static (onnxruntime QDQ, per-channel weights)"
                report.update(quantize_onnx_int8(temporary, temporary, calibration_images, properties=properties))
                report["calibration"] = {"source": calibration_source, "patches": len(calibration_images)}
            predictor = OnnxPredictor(temporary)
        else:
            with _quiet_exporter(), torch.no_grad():
                traced = torch.jit.trace(wrapped, example)
                torch.jit.save(traced, temporary, _extra_files={
                    TORCHSCRIPT_CONTRACT_FILE: json.dumps(contract.to_dict()), TORCHSCRIPT_INPUT_FILE: input_kind,
                    TORCHSCRIPT_CONFIG_FILE: json.dumps(config_to_dict(checkpoint.config)),
                    TORCHSCRIPT_METADATA_FILE: json.dumps(checkpoint.metadata),
                })
            with _quiet_exporter():
                predictor = TorchScriptPredictor(temporary)
            report.update({"exporter": "torch.jit.trace", "opset": None})
        # Two batch sizes: the whole set, and an odd size that checks the batch axis is dynamic.
        batch_sizes = [len(patches), 3]
        with _quiet_exporter():
            got = np.concatenate([predictor.predict_proba(patches, batch_size=batch_sizes[0]),
                                  predictor.predict_proba(patches, batch_size=batch_sizes[1])])
        difference = float(np.max(np.abs(got - np.concatenate([expected, expected]))))
        if quantize == "int8":
            report.update(_check_int8_auc(model, contract, predictor))
        elif not difference <= tolerance:
            raise RunError(
                f"exported {format} model disagrees with torch on {len(patches)} sample patches: max |probability "
                f"difference| {difference:.3g} > {tolerance:g}; nothing was written (try exporter='legacy')", parameters=("exporter",)
            )
        report["speed"] = None
        if format == "onnx" and timing:
            report["speed"] = _time_runtimes(predictor, model, contract, patches, checkpoint)
            properties[SPEED_KEY] = json.dumps(report["speed"])
            _store_properties(temporary, properties)
        publish(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    report.update({
        "path": out, "max_abs_diff": difference, "patches": len(patches), "batch_sizes": batch_sizes,
        "bytes": out.stat().st_size, "tolerance": tolerance,
        "stain_normalization": (contract.stain_normalization or {}).get("method"), "quantize": quantize,
    })
    return report


def _time_runtimes(predictor: OnnxPredictor, model: nn.Module, contract: InputContract, patches: np.ndarray,
                   checkpoint: Checkpoint) -> dict[str, Any]:
    """Patches/s of the exported file and of the checkpoint's torch predictor on this CPU, interleaved."""
    from pcamlab.runtime.device import cpu_signature

    timed = np.concatenate([patches] * -(-TIMED_PATCHES // len(patches)))[:TIMED_PATCHES]  # (256, H, W, 3) uint8
    torch_predictor = TorchPredictor(model, contract, checkpoint=checkpoint)  # what predict --runtime torch runs
    onnx_speed = time_predictor(predictor, timed)
    torch_speed = time_predictor(torch_predictor, timed)
    return {"patches_per_s": round(onnx_speed, 1), "torch_patches_per_s": round(torch_speed, 1), "cpu": cpu_signature(),
            "patches": len(timed), "forward_batch_size": predictor.forward_batch_size, "repeats": TIMED_REPEATS}


def _store_properties(path: str | os.PathLike, properties: dict[str, str]) -> None:
    """Replace an ONNX file's ``metadata_props`` in place (the graph and weights unchanged)."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, properties)
    onnx.save(model, str(path))


def calibration_patches(
    source: np.ndarray | str | os.PathLike, count: int = CALIBRATION_PATCHES, patch_size: int = 96, seed: int = 0,
) -> tuple[np.ndarray, str]:
    """uint8 ``(N, H, W, 3)`` patches that calibrate int8 activation ranges, and where they came from.

    Args:
        source: uint8 patches (used as given), or a dataset root (or ``sample``) whose ``train`` split
            gives ``count`` patches drawn without replacement by a seeded generator.
        count: patches to draw from a dataset root (all of them if the split is smaller).
        patch_size: the model's patch side; patches of another size are refused.
        seed: seed of the draw.

    Raises:
        ConfigError: count < 1, or the patches are not uint8 (N, patch_size, patch_size, 3).
        DataError: the dataset root cannot be opened (its message names the fix).
    """
    if isinstance(source, np.ndarray):
        images, where = source, f"{len(source)} given patches"
    else:
        from pcamlab.data import open_split

        if count < 1:
            raise ConfigError(f"calibration_count must be >= 1 patch; got {count}")
        reader = open_split(str(source), "train")
        picks = np.sort(np.random.default_rng(seed).choice(len(reader), size=min(count, len(reader)), replace=False))
        images = np.stack([reader[int(index)][0] for index in picks])  # (N, H, W, 3)
        where = f"{len(picks)} patches of {source} train (seed {seed})"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (patch_size, patch_size, 3) or not len(images):
        raise ConfigError(
            f"calibration patches must be uint8 (N, {patch_size}, {patch_size}, 3); got {images.dtype} {images.shape}"
        )
    return images, where


def quantize_onnx_int8(
    source: str | os.PathLike, target: str | os.PathLike, calibration: np.ndarray, *, batch_size: int = 64,
    properties: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Static int8 quantisation of a pcamlab uint8-input ONNX file by ONNX Runtime.

    Batch-norm is folded into the preceding convolutions and the graph optimised
    (``quant_pre_process``); then weights become int8 per output channel and activations uint8, their
    ranges the min/max seen on ``calibration`` (QDQ format: ``QuantizeLinear``/``DequantizeLinear`` pairs
    that onnxruntime fuses into integer convolutions), for the operators in :data:`INT8_OP_TYPES`
    (convolutions, matrix products, ReLU and pooling, so activations stay int8 between convolutions).
    The uint8 input, its normalisation and the sigmoid stay as they are. ``source`` and ``target`` may be the same file.

    Args:
        source: fp32 ONNX file written by :func:`export_onnx` (input ``images``: uint8 (B, H, W, 3)).
        target: where to write the int8 file.
        calibration: uint8 (N, H, W, 3) training patches, fed in batches of ``batch_size``.
        properties: ``metadata_props`` to store in the int8 file (the quantiser drops the source's).

    Returns:
        ``{"quantizer": "onnxruntime <version>", "quantized_nodes": int}``.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": np.ascontiguousarray(calibration[start : start + batch_size])}
                                 for start in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quantized = Path(folder) / "int8.onnx"
        with _quiet_exporter():
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(INT8_OP_TYPES),
            )
        model = onnx.load(str(quantized))
        if properties:
            onnx.helper.set_model_props(model, properties)
        onnx.save(model, str(target))
    nodes = sum(node.op_type == "DequantizeLinear" for node in model.graph.node)
    return {"quantizer": f"onnxruntime {onnxruntime.__version__}", "quantized_nodes": int(nodes)}


def _check_int8_auc(model: nn.Module, contract: InputContract, predictor: OnnxPredictor) -> dict[str, Any]:
    """AUC of fp32 torch and of the int8 file on the sample's validation patches; RunError past the limit."""
    from pcamlab.data import load_split_arrays, open_split
    from pcamlab.evaluate.metrics import roc_auc

    if contract.patch_size != 96 or contract.stain_normalization:
        return {"sample_auc_fp32": None, "sample_auc_int8": None}  # the sample does not fit this model
    images, labels, _ = load_split_arrays(open_split("sample", "valid"))
    reference = roc_auc(labels, TorchPredictor(model, contract, precision="fp32").predict_proba(images).astype(np.float64))
    quantized = roc_auc(labels, predictor.predict_proba(images).astype(np.float64))
    if abs(quantized - reference) > INT8_AUC_TOLERANCE:
        raise RunError(
            f"int8 quantisation changed the AUC on the {len(labels)} sample validation patches from {reference:.4f} "
            f"to {quantized:.4f} (limit {INT8_AUC_TOLERANCE}); nothing was written: calibrate on more patches "
            "(calibration_count) or keep the fp32 export"
        )
    return {"sample_auc_fp32": round(float(reference), 5), "sample_auc_int8": round(float(quantized), 5)}
