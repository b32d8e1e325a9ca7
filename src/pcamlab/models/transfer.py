"""Transfer learning: start a pcamlab model from backbone weights in a local file.

``load_pretrained`` reads weights from disk (nothing is ever downloaded) and copies every tensor that
has a counterpart of the same shape into the model:

- ``.safetensors``: a pcamlab checkpoint (``best.safetensors``) or any plain state dict;
- ``.pt`` / ``.pth`` / ``.bin``: a torch state dict, raw or nested under ``"state_dict"`` /
  ``"model"``, read with ``torch.load(weights_only=True)`` so nothing in the file is executed;
- Keras ``.h5`` weight files (``model.save_weights`` / ``model.save`` of Keras 2, ``.weights.h5`` of
  Keras 3, or a ``.keras`` archive) for layer-for-layer ports such as the ``baseline`` model.

Names are mapped from the source's naming scheme onto pcamlab's modules:

- ``pcamlab``: the same names (a checkpoint of the same or a wider/narrower pcamlab model);
- ``torchvision`` ResNet (``conv1, bn1, layer1.0.conv1, ..., conv3, bn3, fc``) onto ``resnet18`` /
  ``resnet34`` / ``resnet50``, VGG (``features.N``, ``classifier.0/3/6``; ``vgg16`` and ``vgg16_bn``)
  onto ``vgg16`` (convolutions and batch-norms matched in order), and DenseNet (``features.conv0,
  features.denseblock1.denselayer1.norm1, ..., classifier``) onto ``densenet-small`` (dense block b /
  layer l onto the model's block b / layer l);
- ``timm``: timm's ResNet and DenseNet use torchvision's names, plus the deep stem
  (``conv1.0 ... conv1.6``, skipped: pcamlab has a one-conv stem) and the average-pool shortcut
  (``downsample.1`` conv / ``downsample.2`` batch-norm) of its "d" variants. A timm file without
  those layers is indistinguishable from a torchvision one and is detected as ``torchvision``; timm's
  VGG has torchvision's ``features.N`` and its own ``pre_logits.fc1/fc2`` and ``head.fc`` (skipped);
- ``keras``: Conv2D kernels (kh, kw, in, out) become (out, in, kh, kw), Dense kernels (in, out)
  become (out, in), and the first Dense layer after a Flatten gets its input rows reordered from
  Keras' NHWC flatten order to torch's NCHW order. Keras layers are matched to the model's
  Conv2d / Linear / BatchNorm2d modules in order, kind by kind (``VGG16``'s ``block1_conv1`` ...
  ``block5_conv3`` onto ``vgg16``), except ``keras.applications`` ResNets (``conv2_block1_1_conv``),
  matched by name onto ``resnet50``, each conv bias folded into the batch-norm's running mean.

A tensor whose shape does not fit (the ImageNet 7x7 stem vs pcamlab's 3x3 stem, the 1000-class
``fc`` vs the 1-logit head) is skipped with a reason, and so is a batch-norm that follows a skipped
convolution (its statistics describe features the model does not compute). Nothing is frozen here:
``train.freeze_backbone_epochs`` and ``train.backbone_lr_factor`` decide how the backbone trains,
and the head always trains.

Example:
    >>> from pcamlab.models import build_model
    >>> model = build_model("resnet18")
    >>> report = load_pretrained(model, "weights/resnet18-imagenet.pth")
    >>> report["source_format"], len(report["loaded"]), report["skipped"][:1]
    ('torchvision', 120, ['conv1.weight: shape (64, 3, 7, 7) does not fit stem.0.weight (64, 3, 3, 3)'])
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pcamlab.config import CHOICES
from pcamlab.errors import CheckpointError
from pcamlab.models.options import Option, check_value

__all__ = ["FORMATS", "detect_source_format", "load_pretrained", "read_weights"]

# Values accepted for ``format``: those of the config field ``model.pretrained_format``, declared once in
# pcamlab.config (not by this module: importing it loads torch, and a config is checked before that).
FORMATS = CHOICES["model.pretrained_format"]
PRETRAINED_FORMAT = Option(str, choices=FORMATS)  # what load_pretrained's ``format`` allows

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DistributedDataParallel, torch.compile, Lightning
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_COUNTER = "num_batches_tracked"  # batch-norm step counters: copied when present, never listed


@dataclass
class _KerasLayer:
    """One Keras layer's weights, in Keras' order and layout."""

    name: str
    arrays: list[np.ndarray]
    weight_names: list[str]


@dataclass
class _Candidate:
    """A source tensor with the model tensor it should fill (``target`` None = no counterpart)."""

    source: str
    tensor: torch.Tensor
    target: str | None
    reason: str = ""  # why there is no target
    depends_on: str | None = None  # a source conv weight: if that one is skipped, skip this too


# -- reading files -------------------------------------------------------------------------------


def _where(path: Path) -> str:
    return f"pretrained weights {str(path)!r} (model.pretrained)"


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop prefixes every key shares that wrappers add (``module.``, ``_orig_mod.``, ``model.``)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def _unwrap_state(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a raw state dict or of one nested under ``state_dict`` / ``model``."""
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{_where(path)} holds a {type(loaded).__name__}, not a state dict; save it with "
            "torch.save(model.state_dict(), path)"
        )
    for key in _NESTED_KEYS:
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    state = {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f"{_where(path)} holds no tensors (top-level keys {sorted(map(str, loaded))[:6]}); expected a "
            "state dict, raw or under 'state_dict' / 'model'"
        )
    return _strip_wrappers(state)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for a malformed file
        raise CheckpointError(
            f"{_where(path)} is not a readable safetensors file ({error}); re-save it with "
            "safetensors.torch.save_file(state_dict, path)"
        ) from None
    return _strip_wrappers(state), header


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refusals, zip and EOF errors: all mean "not a state dict"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{_where(path)} cannot be read as a torch state dict with weights_only=True ({first_line}); "
            "save only tensors: torch.save(model.state_dict(), path)"
        ) from None
    return _unwrap_state(loaded, path)


def _natural_key(text: str) -> list[Any]:
    """Sort key that puts ``conv2d_2`` before ``conv2d_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _decode(values: Iterable[Any]) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


def _read_keras_handle(handle: Any, path: Path) -> list[_KerasLayer]:
    """Layers of an open h5py file in Keras 2 (``layer_names``) or Keras 3 (``layers/*/vars``) layout."""
    import h5py

    root = handle["model_weights"] if "model_weights" in handle else handle  # model.save() vs save_weights()
    layers: list[_KerasLayer] = []
    if "layer_names" in root.attrs:  # Keras 2: ordered layer names, each with ordered weight names
        for name in _decode(root.attrs["layer_names"]):
            group = root[name]
            weight_names = _decode(group.attrs.get("weight_names", []))
            if weight_names:
                layers.append(_KerasLayer(name, [np.asarray(group[w]) for w in weight_names], weight_names))
        return layers
    found: list[tuple[str, Any]] = []  # Keras 3: <layer path>/vars/0, 1, ... in the layer's weight order

    def visit(name: str, item: Any) -> None:
        is_vars = isinstance(item, h5py.Group) and name.split("/")[-1] == "vars" and len(item) > 0
        if is_vars and not name.startswith("optimizer"):
            found.append((name.rsplit("/", 1)[0] if "/" in name else "", item))

    root.visititems(visit)
    for name, group in sorted(found, key=lambda pair: _natural_key(pair[0])):
        keys = sorted(group.keys(), key=_natural_key)
        layers.append(_KerasLayer(name, [np.asarray(group[key]) for key in keys], keys))
    if not layers:
        raise CheckpointError(
            f"{_where(path)} is an HDF5 file but not a Keras weight file (no 'layer_names' attribute, no "
            "'layers/*/vars' groups); write it with Keras' model.save_weights(path)"
        )
    return layers


def _read_keras(path: Path) -> list[_KerasLayer]:
    import h5py

    try:
        if zipfile.is_zipfile(path):  # a Keras 3 ``.keras`` archive holds model.weights.h5
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise CheckpointError(
                        f"{_where(path)} is a zip archive without model.weights.h5; pass a Keras .h5 "
                        "weight file or a .keras archive"
                    )
                data = io.BytesIO(archive.read("model.weights.h5"))
            with h5py.File(data, "r") as handle:
                return _read_keras_handle(handle, path)
        try:
            handle = h5py.File(path, "r")
        except OSError as error:  # locked, compressed, a web page, truncated...: say which
            from pcamlab.hdf5 import diagnose_hdf5

            raise CheckpointError(f"Keras weight file: {diagnose_hdf5(path, error)}") from None
        with handle:
            return _read_keras_handle(handle, path)
    except CheckpointError:
        raise
    except Exception as error:  # h5py raises OSError, KeyError, TypeError for damaged files
        raise CheckpointError(
            f"{_where(path)} cannot be read as a Keras HDF5 weight file ({error}); write it with "
            "model.save_weights('weights.h5')"
        ) from None


def read_weights(path: str | Path) -> tuple[str, Any, dict[str, str]]:
    """Read a weight file by its content (not its suffix).

    Args:
        path: a ``.safetensors``, torch ``.pt/.pth/.bin``, Keras ``.h5`` / ``.keras`` file.

    Returns:
        ``(kind, weights, header)``: kind ``"keras"`` with a list of Keras layers, or ``"state_dict"``
        with a ``{name: tensor}`` dict; header holds safetensors metadata (empty otherwise).

    Raises:
        CheckpointError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{_where(path)} does not exist; set model.pretrained to a local .safetensors, .pt/.pth/.bin or "
            "Keras .h5 file (pcamlab never downloads weights)"
        )
    with open(path, "rb") as file:
        signature = file.read(8)
    if signature == _HDF5_SIGNATURE:
        return "keras", _read_keras(path), {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_keras_archive = "model.weights.h5" in archive.namelist()
        if is_keras_archive:
            return "keras", _read_keras(path), {}
        return "state_dict", _read_torch(path), {}  # torch.save's zip format
    if path.suffix.lower() == ".safetensors":
        state, header = _read_safetensors(path)
        return "state_dict", state, header
    if signature.startswith(b"\x80"):  # a pickle: torch.save's legacy format
        return "state_dict", _read_torch(path), {}
    try:  # a safetensors file under another suffix
        state, header = _read_safetensors(path)
    except CheckpointError:
        raise CheckpointError(
            f"{_where(path)} is not a safetensors, torch or Keras HDF5 file (it starts with {signature!r}); "
            "pass a .safetensors, .pt/.pth/.bin state dict or a Keras .h5 weight file"
        ) from None
    return "state_dict", state, header


# -- name mapping --------------------------------------------------------------------------------

_RESNET_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv1|bn1|conv2|bn2|conv3|bn3)\.(.+)$")
_VGG_FEATURE = re.compile(r"^features\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_VGG_CLASSIFIER = ("classifier.", "pre_logits.", "head.fc.")  # torchvision's fc6-8; timm's conv fc6/fc7 and head
_KERAS_RESNET = re.compile(r"^(?:conv1_(conv|bn)|conv(\d)_block(\d+)_(\d)_(conv|bn))$")
_RESNET_DOWNSAMPLE = re.compile(r"^layer(\d+)\.(\d+)\.downsample\.(\d+)\.(.+)$")
_DENSE_LAYER = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm1|conv1|norm2|conv2)\.(.+)$")
_LEGACY_DENSE = re.compile(  # torchvision's pre-0.3 files: "denselayer1.norm.1.weight" for "denselayer1.norm1.weight"
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def detect_source_format(keys: Iterable[str], header: dict[str, str] | None = None) -> str | None:
    """Guess the naming scheme of a state dict: pcamlab | torchvision | timm, or None if unknown.

    pcamlab checkpoints say so in their header; torchvision/timm ResNets have ``layer1.0.conv1``,
    DenseNets ``features.denseblock1``; timm-only layers (deep stem ``conv1.0``, average-pool
    shortcut ``downsample.2``, DenseNet deep stem ``features.conv1``) make it ``timm``.
    """
    keys = list(keys)
    # Any pcamlab checkpoint format version ("pcamlab-checkpoint-N", pcamlab.runtime.checkpoint.FORMAT);
    # matched by prefix because a network never imports the layer that loads trained models.
    if header and str(header.get("format", "")).startswith("pcamlab-checkpoint-"):
        return "pcamlab"
    if any(_RESNET_BLOCK.match(key) for key in keys):
        timm_only = any(key.startswith("conv1.0.") or ".downsample.2." in key for key in keys)
        return "timm" if timm_only else "torchvision"
    if any(key.startswith("features.denseblock") for key in keys):
        return "timm" if any(key.startswith("features.conv1.") for key in keys) else "torchvision"
    if _is_vgg(keys):
        return "timm" if any(key.startswith(("pre_logits.", "head.fc.")) for key in keys) else "torchvision"
    if any(key.startswith(("stem.", "stages.", "features.", "classifier.", "head.")) for key in keys):
        return "pcamlab"
    return None


def _is_vgg(keys: Iterable[str]) -> bool:
    """torchvision's ``vgg16(_bn)`` (``features.N`` + ``classifier.6``) or timm's (``pre_logits.fc1``, ``head.fc``)."""
    keys = list(keys)
    return any(_VGG_FEATURE.match(key) for key in keys) and any(
        key in ("classifier.6.weight", "pre_logits.fc1.weight", "head.fc.weight") for key in keys
    )


def _vgg_candidates(state: dict[str, torch.Tensor], model: nn.Module) -> list[_Candidate]:
    """torchvision/timm VGG ``features.N`` -> the model's ``features`` convolutions and batch-norms, in order.

    Matching by order, not index, takes ``vgg16`` and ``vgg16_bn`` files into either layout (a batch-norm
    the model lacks is skipped with its reason).
    """
    features = getattr(model, "features", None)
    model_convs = [f"features.{name}" for name, m in (features.named_children() if features is not None else [])
                   if isinstance(m, nn.Conv2d)]
    model_norms = [f"features.{name}" for name, m in (features.named_children() if features is not None else [])
                   if isinstance(m, nn.BatchNorm2d)]
    indices = sorted({int(match.group(1)) for match in map(_VGG_FEATURE.match, state) if match})
    conv_of, norm_of, last_conv = {}, {}, None
    for index in indices:
        weight = state.get(f"features.{index}.weight")
        if f"features.{index}.running_mean" in state:
            norm_of[index] = (len(norm_of), last_conv)
        elif weight is not None and weight.ndim == 4:
            conv_of[index] = len(conv_of)
            last_conv = f"features.{index}.weight"
    candidates = []
    for key, tensor in state.items():
        candidate = _Candidate(key, tensor, None, "has no counterpart in pcamlab's vgg16")
        match = _VGG_FEATURE.match(key)
        if key.startswith(_VGG_CLASSIFIER):
            candidate.reason = ("ImageNet's classifier (7x7x512 maps of 224 px patches, 1000 classes) has no "
                                "counterpart: the vgg16 head (global pool, dense, logit) starts new")
        elif not model_convs:
            candidate.reason = "the model is not a pcamlab VGG (use model.name=vgg16)"
        elif match and int(match.group(1)) in conv_of:
            number = conv_of[int(match.group(1))]
            if number < len(model_convs):
                candidate.target = f"{model_convs[number]}.{match.group(2)}"
            else:
                candidate.reason = f"the model has only {len(model_convs)} convolutions"
        elif match and int(match.group(1)) in norm_of:
            number, conv = norm_of[int(match.group(1))]
            candidate.depends_on = conv
            if number < len(model_norms):
                candidate.target = f"{model_norms[number]}.{match.group(2)}"
            else:
                candidate.reason = "the model has no batch-norm there (vgg16_bn weights: set model.options.batch_norm=true)"
        candidates.append(candidate)
    return candidates


def _resnet_candidates(state: dict[str, torch.Tensor]) -> list[_Candidate]:
    """torchvision/timm ResNet names -> pcamlab ``resnet18/34/50`` names (``stem``, ``stages``, ``head``)."""
    deep_stem = any(key.startswith("conv1.0.") for key in state)
    stem_conv = "conv1.6.weight" if deep_stem else "conv1.weight"
    average_down = {  # timm "d" variants: downsample = (AvgPool2d, conv, bn)
        (match.group(1), match.group(2))
        for match in map(_RESNET_DOWNSAMPLE.match, state)
        if match and match.group(3) == "2"
    }
    candidates = []
    for key, tensor in state.items():
        candidate = _Candidate(key, tensor, None, "has no counterpart in pcamlab's resnet")
        if key.startswith("conv1.") and deep_stem:
            candidate.reason = "timm's deep stem (three 3x3 convs) has no counterpart in pcamlab's one-conv stem"
        elif key == "conv1.weight":
            candidate.target = "stem.0.weight"
        elif key.startswith("bn1."):
            candidate.target, candidate.depends_on = "stem.1." + key[4:], stem_conv
        elif key.startswith("fc."):
            candidate.target = "head." + key[3:]
        elif match := _RESNET_BLOCK.match(key):
            stage, block, layer, leaf = match.groups()
            candidate.target = f"stages.{int(stage) - 1}.{block}.{layer}.{leaf}"
            if layer.startswith("bn"):
                candidate.depends_on = f"layer{stage}.{block}.conv{layer[-1]}.weight"
        elif match := _RESNET_DOWNSAMPLE.match(key):
            stage, block, index, leaf = match.groups()
            conv_index, norm_index = ("1", "2") if (stage, block) in average_down else ("0", "1")
            prefix = f"stages.{int(stage) - 1}.{block}.shortcut"
            if index == conv_index:
                candidate.target = f"{prefix}.0.{leaf}"
            elif index == norm_index:
                candidate.target = f"{prefix}.1.{leaf}"
                candidate.depends_on = f"layer{stage}.{block}.downsample.{conv_index}.weight"
        candidates.append(candidate)
    return candidates


def _densenet_layout(model: nn.Module) -> dict[str, str] | None:
    """torchvision module names -> pcamlab module names for a pcamlab DenseNet, read from its structure."""
    from pcamlab.models.densenet import DenseLayer

    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not any(isinstance(m, DenseLayer) for m in features):
        return None
    children = list(features)
    layout: dict[str, str] = {}
    if isinstance(children[0], nn.Conv2d):
        layout["features.conv0"] = "features.0"
    block, layer, index = 1, 0, 1
    while index < len(children):
        child = children[index]
        if isinstance(child, DenseLayer):
            layer += 1
            inner = list(child.layers)
            norms = [i for i, m in enumerate(inner) if isinstance(m, nn.BatchNorm2d)]
            convs = [i for i, m in enumerate(inner) if isinstance(m, nn.Conv2d)]
            for number, (norm, conv) in enumerate(zip(norms, convs), start=1):
                source = f"features.denseblock{block}.denselayer{layer}"
                layout[f"{source}.norm{number}"] = f"features.{index}.layers.{norm}"
                layout[f"{source}.conv{number}"] = f"features.{index}.layers.{conv}"
            index += 1
        elif isinstance(child, nn.BatchNorm2d):
            following = children[index + 1 : index + 4]
            conv = next((j for j, m in enumerate(following) if isinstance(m, nn.Conv2d)), None)
            if conv is not None:  # transition: BN > act > conv 1x1 > avg-pool
                layout[f"features.transition{block}.norm"] = f"features.{index}"
                layout[f"features.transition{block}.conv"] = f"features.{index + 1 + conv}"
                block, layer, index = block + 1, 0, index + 2 + conv
            else:  # the final batch-norm after the last dense block
                layout["final_norm"] = f"features.{index}"
                layout["blocks"] = str(block)
                index += 1
        else:
            index += 1
    return layout


def _densenet_candidates(state: dict[str, torch.Tensor], model: nn.Module) -> list[_Candidate]:
    """torchvision/timm DenseNet names -> pcamlab ``densenet-small`` names, block by block."""
    layout = _densenet_layout(model) or {}
    renamed = {}
    for key, tensor in state.items():  # very old torchvision files spell norm1 as "norm.1"
        match = _LEGACY_DENSE.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = tensor
    source_blocks = max((int(m.group(1)) for m in map(_DENSE_LAYER.match, renamed) if m), default=0)
    model_blocks = int(layout.get("blocks", 0))
    final_source = "features.norm5" if source_blocks == model_blocks else f"features.transition{model_blocks}.norm"
    candidates = []
    for key, tensor in renamed.items():
        candidate = _Candidate(key, tensor, None, "has no counterpart in the model")
        module, _, leaf = key.rpartition(".")
        if not layout:
            candidate.reason = "the model is not a pcamlab DenseNet (use model.name=densenet-small)"
        elif key.startswith("classifier."):
            candidate.target = "head." + leaf
        elif module == final_source and "final_norm" in layout:
            candidate.target = f"{layout['final_norm']}.{leaf}"
        elif module == "features.norm0":
            candidate.reason = "pcamlab's densenet has no batch-norm right after the stem convolution"
        elif module in layout:
            candidate.target = f"{layout[module]}.{leaf}"
        elif module == "features.norm5":
            candidate.reason = (f"follows dense block {source_blocks}; the model has {model_blocks} blocks, "
                                f"its final batch-norm takes transition{model_blocks}.norm instead")
        elif key.startswith(("features.conv1.", "features.conv2.", "features.norm1.", "features.norm2.")):
            candidate.reason = "timm's deep stem has no counterpart in pcamlab's one-conv stem"
        candidates.append(candidate)
    return candidates


def _identity_candidates(state: dict[str, torch.Tensor]) -> list[_Candidate]:
    return [_Candidate(key, tensor, key, "has no counterpart in the model") for key, tensor in state.items()]


def _keras_resnet_candidates(layers: list[_KerasLayer]) -> list[_Candidate]:
    """``keras.applications`` ResNet names (``conv2_block1_1_conv``) -> pcamlab ``resnet50`` names.

    Keras' ResNet convolutions carry a bias; pcamlab's do not, since the batch-norm after each one
    absorbs it exactly: BN(conv(x) + b) with moving mean m = BN(conv(x)) with running mean m - b. The bias
    is folded into that running mean (listed in ``skipped`` as folded, not lost).
    """
    by_name = {layer.name.rsplit("/", 1)[-1]: layer for layer in layers}
    candidates = []

    def target(name: str) -> str | None:
        match = _KERAS_RESNET.match(name)
        if match is None:
            return None
        if match.group(1):
            return f"stem.{0 if match.group(1) == 'conv' else 1}"
        stage, block, index, kind = int(match.group(2)) - 2, int(match.group(3)) - 1, match.group(4), match.group(5)
        if index == "0":
            return f"stages.{stage}.{block}.shortcut.{0 if kind == 'conv' else 1}"
        return f"stages.{stage}.{block}.{'conv' if kind == 'conv' else 'bn'}{index}"

    for name, layer in by_name.items():
        arrays = [np.asarray(array) for array in layer.arrays]
        module = target(name)
        labels = [f"{layer.name}/{weight}" for weight in layer.weight_names]
        if module is None:
            for label, array in zip(labels, arrays):
                candidates.append(_Candidate(label, torch.from_numpy(array), None,
                                             "has no counterpart in pcamlab's resnet (ImageNet's 1000-class head)"
                                             if name == "predictions" else "has no counterpart in pcamlab's resnet"))
            continue
        if name.endswith("_conv"):
            kernel = torch.from_numpy(np.ascontiguousarray(arrays[0].transpose(3, 2, 0, 1)))  # (out, in, kh, kw)
            candidates.append(_Candidate(labels[0], kernel, f"{module}.weight"))
            if len(arrays) > 1:
                candidates.append(_Candidate(labels[1], torch.from_numpy(arrays[1]), None,
                                             "folded into the running mean of the batch-norm that follows"))
            continue
        conv = by_name.get(name[: -len("bn")] + "conv")
        bias = np.asarray(conv.arrays[1]) if conv is not None and len(conv.arrays) > 1 else 0.0
        depends = f"{conv.name}/{conv.weight_names[0]}" if conv is not None else None
        for leaf, label, array in zip(("weight", "bias", "running_mean", "running_var"), labels, arrays):
            if leaf == "running_mean":
                array = array - bias  # BN(y + b) with mean m == BN(y) with mean m - b
            candidates.append(_Candidate(label, torch.from_numpy(np.ascontiguousarray(array)), f"{module}.{leaf}",
                                         depends_on=depends))
    return candidates


def _keras_candidates(layers: list[_KerasLayer], model: nn.Module) -> list[_Candidate]:
    """Keras layers -> the model's Conv2d / Linear / BatchNorm2d modules in order, kind by kind.

    ``keras.applications`` ResNets are matched by layer name instead (their file order puts a block's
    shortcut after its main path).
    """
    if sum(1 for layer in layers if _KERAS_RESNET.match(layer.name.rsplit("/", 1)[-1])) >= 3:
        return _keras_resnet_candidates(layers)
    modules = {"conv": [], "dense": [], "batch_norm": []}
    last_conv_channels: int | None = None
    flatten_channels: dict[str, int] = {}  # Linear name -> channels of the feature map it flattens
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            modules["conv"].append(name)
            last_conv_channels = module.out_channels
        elif isinstance(module, nn.BatchNorm2d):
            modules["batch_norm"].append(name)
        elif isinstance(module, nn.Linear):
            if not modules["dense"] and last_conv_channels and module.in_features != last_conv_channels:
                flatten_channels[name] = last_conv_channels
            modules["dense"].append(name)
    used = {"conv": 0, "dense": 0, "batch_norm": 0}
    candidates = []
    for layer in layers:
        arrays = [np.asarray(array) for array in layer.arrays]
        label = f"{layer.name}/{layer.weight_names[0]}" if layer.weight_names else layer.name
        if arrays[0].ndim == 4 and len(arrays) <= 2:
            kind, leaves = "conv", ["weight", "bias"]
        elif arrays[0].ndim == 2 and len(arrays) <= 2:
            kind, leaves = "dense", ["weight", "bias"]
        elif len(arrays) == 4 and all(array.ndim == 1 for array in arrays):
            kind, leaves = "batch_norm", ["weight", "bias", "running_mean", "running_var"]
        else:
            shapes = [tuple(array.shape) for array in arrays]
            candidates.append(_Candidate(label, torch.empty(0), None, f"Keras layer with weights {shapes} is not a "
                                         "Conv2D, Dense or BatchNormalization pcamlab can map"))
            continue
        if used[kind] >= len(modules[kind]):
            for weight_name, array in zip(layer.weight_names, arrays):
                candidates.append(_Candidate(f"{layer.name}/{weight_name}", torch.from_numpy(array), None,
                                             f"the model has only {len(modules[kind])} {kind} layers"))
            continue
        target = modules[kind][used[kind]]
        used[kind] += 1
        for index, (leaf, array) in enumerate(zip(leaves, arrays)):
            source = f"{layer.name}/{layer.weight_names[index]}"
            if leaf == "weight" and kind == "conv":
                array = array.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
            elif leaf == "weight" and kind == "dense":
                channels = flatten_channels.get(target)
                if channels is not None:  # rows are in Keras' NHWC flatten order: reorder them to NCHW
                    if array.shape[0] % channels:
                        candidates.append(_Candidate(source, torch.from_numpy(array.T.copy()), None,
                                          f"{array.shape[0]} inputs do not split into {channels} channels "
                                          "of the flattened feature map"))
                        continue
                    positions = array.shape[0] // channels
                    array = array.reshape(positions, channels, -1).transpose(1, 0, 2).reshape(array.shape[0], -1)
                array = array.T  # (in, out) -> (out, in)
            candidates.append(_Candidate(source, torch.from_numpy(np.ascontiguousarray(array)), f"{target}.{leaf}"))
    return candidates


# -- applying ------------------------------------------------------------------------------------


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _adapt_kernel(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Resize a conv kernel that differs only in kernel size (strict_shapes=False), else None.

    Shrinking averages regions (adaptive average pooling), growing interpolates bilinearly; both are
    scaled by the area ratio so that each filter's sum, its response to a flat patch, stays about
    the same.
    """
    if tensor.ndim != 4 or len(shape) != 4 or tuple(tensor.shape[:2]) != shape[:2]:
        return None
    kernel = tensor.float()
    if kernel.shape[2] >= shape[2] and kernel.shape[3] >= shape[3]:
        resized = F.adaptive_avg_pool2d(kernel, shape[2:])  # (out, in, kh', kw')
    else:
        resized = F.interpolate(kernel, size=shape[2:], mode="bilinear", align_corners=True)
    return resized * (kernel.shape[2] * kernel.shape[3]) / (shape[2] * shape[3])


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    format: str = "auto",
    *,
    strict_shapes: bool = True,
) -> dict[str, Any]:
    """Copy the weights of a local file into ``model`` wherever a tensor has a counterpart that fits.

    Args:
        model: a built pcamlab model (any device; tensors are copied in place).
        path: a ``.safetensors`` (pcamlab checkpoint or plain state dict), torch ``.pt/.pth/.bin``
            state dict (raw or under ``"state_dict"`` / ``"model"``), or Keras ``.h5`` / ``.keras`` file.
        format: the source's naming scheme: ``auto`` (detected from the key names) | ``pcamlab`` |
            ``torchvision`` | ``timm`` | ``keras``.
        strict_shapes: load only tensors of exactly the model's shape. ``False`` also resizes conv
            kernels that differ only in kernel size (the ImageNet 7x7 stem onto a 3x3 stem, bilinear,
            keeping each filter's sum); they are listed in ``adapted`` as well as ``loaded``.

    Returns:
        ``{"loaded": [model tensor names filled], "missing": [model tensors left at their initial
        values], "skipped": ["source name: reason", ...], "source_format": str, "adapted": [...]}``.
        Batch-norm step counters (``num_batches_tracked``) are copied when present and never listed.

    Raises:
        ConfigError: ``format`` is not one of :data:`FORMATS`.
        CheckpointError: the file is missing or unreadable, or none of its tensors fits the model.

    Example:
        >>> report = load_pretrained(build_model("baseline"), "course/baseline_weights.h5")
        >>> report["source_format"], report["missing"]
        ('keras', [])
    """
    check_value("model.pretrained_format", format, PRETRAINED_FORMAT)
    path = Path(path)
    kind, weights, header = read_weights(path)
    if kind == "keras":
        if format not in ("auto", "keras"):
            raise CheckpointError(
                f"{_where(path)} is a Keras HDF5 file but model.pretrained_format is {format!r}; "
                "set model.pretrained_format=keras (or auto)"
            )
        source_format, family = "keras", "layers"
        candidates = _keras_candidates(weights, model)
    else:
        if format == "keras":
            raise CheckpointError(
                f"{_where(path)} is a torch/safetensors state dict, not a Keras HDF5 file; "
                "set model.pretrained_format=auto"
            )
        detected = detect_source_format(weights, header)
        source_format = detected if format == "auto" else format
        if source_format is None:
            raise CheckpointError(
                f"{_where(path)}: cannot tell the naming scheme from keys like {sorted(weights)[:3]}; set "
                "model.pretrained_format to one of ['pcamlab', 'torchvision', 'timm']"
            )
        if source_format == "pcamlab":
            family, candidates = "pcamlab names", _identity_candidates(weights)
        elif _is_vgg(weights):
            family, candidates = "VGG names, for model vgg16", _vgg_candidates(weights, model)
        elif any(key.startswith("features.denseblock") or _LEGACY_DENSE.match(key) for key in weights):
            family, candidates = "DenseNet names, for model densenet-small", _densenet_candidates(weights, model)
        else:
            family, candidates = "ResNet names, for model resnet18/resnet34/resnet50", _resnet_candidates(weights)

    targets = model.state_dict()  # shares storage with the model: copy_ fills the model
    loaded: list[str] = []
    adapted: list[str] = []
    skipped: list[str] = []
    filled_from: dict[str, str] = {}
    failed_sources: set[str] = set()
    pending = sorted(candidates, key=lambda c: c.depends_on is not None)  # convs before their batch-norms
    with torch.no_grad():
        for candidate in pending:
            source, target = candidate.source, candidate.target
            reason = candidate.reason if target is None else ""
            if not reason and candidate.depends_on in failed_sources:
                reason = f"follows {candidate.depends_on}, which was skipped"
            if not reason and target not in targets:
                reason = "not in the model" if target == source else f"its counterpart {target} is not in the model"
            if not reason and target in filled_from:
                reason = f"{target} was already filled from {filled_from[target]}"
            tensor = candidate.tensor
            if not reason and _shape(tensor) != _shape(targets[target]):
                resized = None if strict_shapes else _adapt_kernel(tensor, _shape(targets[target]))
                if resized is None:
                    reason = f"shape {_shape(tensor)} does not fit {target} {_shape(targets[target])}"
                else:
                    tensor = resized
                    adapted.append(target)
            if reason:
                failed_sources.add(source)
                if not source.endswith(_COUNTER):
                    skipped.append(f"{source}: {reason}")
                continue
            targets[target].copy_(tensor.to(targets[target].dtype))
            filled_from[target] = source
            if not target.endswith(_COUNTER):
                loaded.append(target)

    head = getattr(model, "head", None) or getattr(model, "classifier", None)
    head_prefix = next((f"{name}." for name, module in model.named_modules() if module is head), None)
    if not any(head_prefix is None or not name.startswith(head_prefix) for name in loaded):
        reasons = "; ".join(skipped[:2]) or "the file holds no weights"
        raise CheckpointError(
            f"{_where(path)}: none of its backbone tensors fits {type(model).__name__} (read as {source_format} "
            f"{family}; {reasons}); make model.name/model.options match the weights or set model.pretrained_format"
        )
    order = {name: index for index, name in enumerate(targets)}
    loaded.sort(key=order.__getitem__)
    missing = [name for name in targets if name not in filled_from and not name.endswith(_COUNTER)]
    return {"loaded": loaded, "missing": missing, "skipped": skipped, "source_format": source_format,
            "adapted": sorted(adapted, key=order.__getitem__)}
