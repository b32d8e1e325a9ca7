"""Grad-CAM heat maps: which parts of a patch pushed the tumour score up.

Grad-CAM (Selvaraju et al. 2017) for a model with one logit per image (B, 1): take a conv layer's
activations A (B, C, h, w), the gradient of the logit with respect to them, average that gradient over
space to get one weight per channel, and form ``relu(sum_c weight_c * A_c)``. The map is upsampled
bilinearly to the patch size and scaled to [0, 1] per image. It highlights evidence *for* tumour
(class 1), whatever the prediction.

Example:
    >>> cam = GradCAM(model)
    >>> heat = cam(contract.to_model_input(images))  # (B, 96, 96) in [0, 1]
    >>> picture = overlay(images[0], heat[0])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pcamlab.errors import ConfigError, DataError
from pcamlab.explain._common import (
    check_contract,
    class_name,
    conv_layers,
    images_to_input,
    model_device,
    new_figure,
    resolve_layer,
    save_figure,
)
from pcamlab.explain.feature_maps import eval_mode
from pcamlab.runtime.contract import InputContract

__all__ = [
    "GradCAM",
    "overlay",
    "plot_gradcam_gallery",
    "plot_confident_mistakes",
    "error_groups",
    "rank_mistakes",
]


class GradCAM:
    """Grad-CAM for binary classifiers that return one logit per image.

    Args:
        model: a module mapping float (B, 3, H, W) to logits (B, 1) or (B,).
        layer: the layer whose activations are explained: a qualified name, an index among the conv
            layers, a module of the model, or None for the last conv layer whose output is spatial
            (h * w > 1), found on the first call by running the model once.

    Attributes:
        layer_name_: the layer used (set on the first call when ``layer`` is None).
        logits_: the logits (B,) of the last call, detached.

    The model runs in eval mode (its previous mode is restored), gradients are enabled for the call
    even inside ``torch.no_grad()``, parameter ``.grad`` fields are not touched, and every hook is
    removed before the call returns, also on error.

    Example:
        >>> cams = GradCAM(model)(inputs)  # (B, H, W) in [0, 1]
    """

    def __init__(self, model: nn.Module, layer: str | int | nn.Module | None = None):
        self.model = model
        if not conv_layers(model):
            raise ConfigError(f"GradCAM needs a model with an nn.Conv2d layer; {type(model).__name__} has none")
        self.layer_name_: str | None = None
        self.layer_: nn.Module | None = None
        if layer is not None:
            self.layer_name_, self.layer_ = resolve_layer(model, layer)
        self.logits_: torch.Tensor | None = None

    def find_layer(self, inputs: torch.Tensor) -> str:
        """The name of the layer explained, resolving the default with one forward pass on ``inputs[:1]``."""
        if self.layer_ is None:
            self._find_default_layer(inputs.to(model_device(self.model)))
        return self.layer_name_

    def _find_default_layer(self, inputs: torch.Tensor) -> None:
        """Pick the last conv layer, in execution order, whose output has more than one position."""
        shapes: list[tuple[str, nn.Module, tuple[int, ...]]] = []

        def make_hook(name: str, module: nn.Module):
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                shapes.append((name, module, tuple(output.shape)))

            return hook

        handles = [conv.register_forward_hook(make_hook(name, conv)) for name, conv in conv_layers(self.model)]
        try:
            with eval_mode(self.model), torch.no_grad():
                self.model(inputs[:1])
        finally:
            for handle in handles:
                handle.remove()
        spatial = [(name, module) for name, module, shape in shapes if len(shape) == 4 and shape[2] * shape[3] > 1]
        if not spatial:
            raise ConfigError(
                "GradCAM found no conv layer with a spatial output (h * w > 1) for this input size; "
                "pass layer= explicitly or a larger input"
            )
        self.layer_name_, self.layer_ = spatial[-1]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Grad-CAM maps for a batch.

        Args:
            inputs: float model input (B, 3, H, W), already normalised.

        Returns:
            float tensor (B, H, W) in [0, 1] on the CPU; an image whose map is flat is all zeros.

        Raises:
            DataError: the input is not a float 4-D tensor.
            ConfigError: the model does not return one logit per image.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
            raise DataError(
                f"GradCAM input must be a float tensor (B, 3, H, W); got {type(inputs).__name__} "
                f"{tuple(getattr(inputs, 'shape', ()))} (transform uint8 patches with the contract first)"
            )
        inputs = inputs.to(model_device(self.model))
        if self.layer_ is None:
            self._find_default_layer(inputs)
        captured: dict[str, torch.Tensor] = {}

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not output.requires_grad:  # frozen parameters: make this point a leaf of the graph
                leaf = output.detach().requires_grad_(True)
                captured["activations"] = leaf
                # a clone, not the leaf itself: the next layer may be an in-place ReLU, which a leaf
                # that requires grad does not allow
                return leaf.clone()
            captured["activations"] = output
            return None

        handle = self.layer_.register_forward_hook(hook)
        try:
            with eval_mode(self.model), torch.enable_grad():
                logits = self.model(inputs)
                if logits.dim() == 2 and logits.shape[1] == 1:
                    logits = logits[:, 0]  # (B,)
                if logits.dim() != 1 or logits.shape[0] != inputs.shape[0]:
                    raise ConfigError(
                        f"GradCAM needs a model returning one logit per image, shape (B, 1); got "
                        f"{tuple(logits.shape)} for a batch of {inputs.shape[0]}"
                    )
                if "activations" not in captured:
                    raise ConfigError(f"layer {self.layer_name_!r} did not run in the model's forward pass; pick another layer")
                activations = captured["activations"]  # (B, C, h, w)
                # Each image's logit depends only on its own activations (eval mode), so the gradient
                # of the sum gives every image's own gradient in one backward pass.
                (gradients,) = torch.autograd.grad(logits.sum(), activations, allow_unused=True)  # (B, C, h, w)
                if gradients is None:  # the logit does not depend on this layer at all
                    gradients = torch.zeros_like(activations)
        finally:
            handle.remove()
        self.logits_ = logits.detach().cpu()
        weights = gradients.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        cam = torch.relu((weights * activations.detach()).sum(dim=1, keepdim=True))  # (B, 1, h, w)
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)  # (B, 1, H, W)
        cam = cam[:, 0].float().cpu()  # (B, H, W)
        low = cam.flatten(1).min(dim=1).values.view(-1, 1, 1)
        high = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
        span = high - low
        return torch.where(span > 1e-12, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))


def overlay(image_uint8: np.ndarray, cam: np.ndarray | torch.Tensor, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Blend a heat map over an RGB patch.

    Args:
        image_uint8: uint8 RGB patch (H, W, 3).
        cam: map (h, w) in [0, 1]; resized bilinearly to (H, W) when its size differs.
        alpha: weight of the coloured map (0 = image only, 1 = map only); the map's weight also
            scales with its value, so cold regions keep the tissue visible.
        colormap: a matplotlib colormap name.

    Returns:
        uint8 RGB (H, W, 3).

    Raises:
        DataError: the image is not uint8 RGB or the map is not 2-D.
        ConfigError: alpha outside [0, 1] or an unknown colormap.
    """
    import matplotlib

    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DataError(f"overlay image must be uint8 RGB (H, W, 3); got dtype {image.dtype} shape {tuple(image.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"overlay alpha must be in [0, 1]; got {alpha!r}")
    if colormap not in matplotlib.colormaps:
        raise ConfigError(f"overlay colormap must be a matplotlib colormap such as 'jet' or 'inferno'; got {colormap!r}")
    heat = torch.as_tensor(np.asarray(cam.detach().cpu() if isinstance(cam, torch.Tensor) else cam), dtype=torch.float32)
    if heat.dim() != 2:
        raise DataError(f"overlay cam must be a 2-D map (h, w); got shape {tuple(heat.shape)}")
    if tuple(heat.shape) != image.shape[:2]:
        heat = F.interpolate(heat[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp(0.0, 1.0).numpy()  # (H, W)
    colours = matplotlib.colormaps[colormap](heat)[..., :3]  # (H, W, 3) in [0, 1]
    weight = float(alpha) * (0.35 + 0.65 * heat)[..., None]  # (H, W, 1)
    blended = (1.0 - weight) * (image.astype(np.float32) / 255.0) + weight * colours
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def _check_predictions(images: np.ndarray, labels: Sequence[int], probs: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"images must be uint8 RGB (N, H, W, 3); got dtype {images.dtype} shape {tuple(images.shape)}")
    if not len(images) == len(labels) == len(probs):
        raise DataError(
            f"images, labels and probs must have the same length; got {len(images)}, {len(labels)}, {len(probs)}"
        )
    if not np.all(np.isin(labels, (0, 1))):
        raise DataError(f"labels must be 0 or 1; got values {sorted(set(labels.tolist()))[:5]}")
    if np.any(~np.isfinite(probs)) or np.any((probs < 0) | (probs > 1)):
        raise DataError("probs must be probabilities in [0, 1] with no NaN; pass sigmoid(logits)")
    return images, labels, probs


def error_groups(labels: Sequence[int], probs: Sequence[float], threshold: float) -> dict[str, np.ndarray]:
    """Indices of true positives, false positives, false negatives and true negatives.

    Each group is ordered most-confident first: TP and FP by descending probability, FN and TN by
    ascending probability. A patch is called tumour when ``prob >= threshold``.
    """
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    predicted = probs >= threshold
    groups = {
        "true_positive": np.flatnonzero(predicted & (labels == 1)),
        "false_positive": np.flatnonzero(predicted & (labels == 0)),
        "false_negative": np.flatnonzero(~predicted & (labels == 1)),
        "true_negative": np.flatnonzero(~predicted & (labels == 0)),
    }
    for name, indices in groups.items():
        order = np.argsort(-probs[indices] if name in ("true_positive", "false_positive") else probs[indices], kind="stable")
        groups[name] = indices[order]
    return groups


def rank_mistakes(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> np.ndarray:
    """Indices of the misclassified patches, most confident mistake first.

    A patch is misclassified when ``(prob >= threshold) != (label == 1)``; its confidence is
    ``|label - prob|`` (a normal patch scored 0.99 comes before one scored 0.6).
    """
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    wrong = np.flatnonzero((probs >= threshold) != (labels == 1))
    error = np.abs(labels[wrong] - probs[wrong])
    return wrong[np.argsort(-error, kind="stable")]


GALLERY_GROUPS = {
    "true_positive": "True positives\n(tumour, called tumour)",
    "false_positive": "False positives\n(normal, called tumour)",
    "false_negative": "False negatives\n(tumour, missed)",
}


def _draw_centre_box(axis: Any, size: int) -> None:
    """Outline the centre 32x32 region of a 96x96 patch (scaled for other sizes): PCam's label region."""
    from matplotlib.patches import Rectangle

    side = size / 3.0
    axis.add_patch(Rectangle((side - 0.5, side - 0.5), side, side, fill=False, edgecolor="white", linewidth=0.8, linestyle="--"))


def plot_gradcam_gallery(
    model: nn.Module,
    images_uint8: np.ndarray,
    labels: Sequence[int],
    probs: Sequence[float],
    contract: InputContract | dict[str, Any],
    path: str | Path,
    threshold: float | None = None,
    per_group: int = 6,
    *,
    layer: str | int | None = None,
) -> Path:
    """A gallery of Grad-CAM overlays for true positives, false positives and false negatives.

    For each group, the ``per_group`` most confident patches are shown as two rows: the patch, and the
    patch with its Grad-CAM overlay (red = strongest evidence for tumour). The dashed square marks the
    centre 32x32 region that PCam's label describes. An empty group is drawn as a note.

    Args:
        model: the classifier (logits (B, 1)).
        images_uint8: uint8 RGB patches (N, H, W, 3).
        labels: true labels (N,) in {0, 1}.
        probs: predicted tumour probabilities (N,).
        contract: input contract (mean, std, class_names, threshold) used to build the model input.
        path: PNG file to write.
        threshold: decision threshold; None = ``contract.threshold``.
        per_group: patches per group.
        layer: Grad-CAM layer (see :class:`GradCAM`); None = last spatial conv layer.

    Returns:
        ``path`` as a Path.

    Raises:
        DataError: inconsistent images/labels/probs.
        ConfigError: per_group < 1 or a bad contract.
    """
    contract = check_contract(contract)
    images, labels, probs = _check_predictions(images_uint8, labels, probs)
    if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1:
        raise ConfigError(f"per_group must be a positive integer; got {per_group!r}")
    threshold = float(contract.threshold if threshold is None else threshold)
    groups = error_groups(labels, probs, threshold)
    chosen = {name: groups[name][:per_group] for name in GALLERY_GROUPS}
    selected = np.concatenate([chosen[name] for name in GALLERY_GROUPS]).astype(np.int64)
    cams = np.zeros((0,) + images.shape[1:3], dtype=np.float32)
    if len(selected):
        inputs = images_to_input(images[selected], contract, model_device(model))
        cams = GradCAM(model, layer)(inputs).numpy()  # (S, H, W)
    position = {int(index): row for row, index in enumerate(selected)}

    figure, axes = new_figure(2 * len(GALLERY_GROUPS), per_group, tile_inches=1.35, title_inches=0.7)
    for group_row, (name, title) in enumerate(GALLERY_GROUPS.items()):
        indices = chosen[name]
        image_axes, overlay_axes = axes[2 * group_row], axes[2 * group_row + 1]
        image_axes[0].set_ylabel(title, fontsize=7, fontweight="bold")
        overlay_axes[0].set_ylabel("Grad-CAM", fontsize=7)
        if len(indices) == 0:
            image_axes[0].text(0.05, 0.5, "none in this set", fontsize=8, transform=image_axes[0].transAxes)
        for column in range(per_group):
            if column >= len(indices):
                if column > 0 or len(indices) > 0:
                    image_axes[column].set_visible(False)
                overlay_axes[column].set_visible(False)
                continue
            index = int(indices[column])
            image_axes[column].imshow(images[index], interpolation="nearest")
            _draw_centre_box(image_axes[column], images.shape[1])
            overlay_axes[column].imshow(overlay(images[index], cams[position[index]]), interpolation="nearest")
            _draw_centre_box(overlay_axes[column], images.shape[1])
            image_axes[column].set_title(f"p={probs[index]:.2f}", fontsize=7, pad=2)
    counts = ", ".join(f"{name.replace('_', ' ')}s {len(groups[name])}" for name in GALLERY_GROUPS)
    figure.suptitle(
        f"Grad-CAM: where the network found evidence of tumour (threshold {threshold:.2f}; {counts})",
        fontsize=9,
    )
    return save_figure(figure, path, dpi=100)


def plot_confident_mistakes(
    images: np.ndarray,
    labels: Sequence[int],
    probs: Sequence[float],
    path: str | Path,
    n: int = 16,
    *,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
) -> Path:
    """The ``n`` mistakes the model was most sure of, with the true label and the probability.

    A mistake is a patch whose call (``prob >= threshold`` = tumour) differs from its label; its
    confidence is how far the probability is from the true label (``|label - prob|``).

    Args:
        images: uint8 RGB patches (N, H, W, 3).
        labels: true labels (N,) in {0, 1}.
        probs: predicted tumour probabilities (N,).
        path: PNG file to write.
        n: at most this many mistakes are drawn.
        threshold: decision threshold.
        class_names: names of label 0 and 1 (default normal, tumour).

    Returns:
        ``path`` as a Path.

    Raises:
        DataError: inconsistent images/labels/probs.
        ConfigError: n < 1.
    """
    images, labels, probs = _check_predictions(images, labels, probs)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer; got {n!r}")
    wrong = rank_mistakes(labels, probs, threshold)
    worst = wrong[:n]
    columns = min(8, max(1, len(worst)))
    rows = max(1, -(-len(worst) // columns))
    figure, axes = new_figure(rows, columns, tile_inches=1.4, title_inches=0.6)
    if len(worst) == 0:
        axes[0, 0].text(0.0, 0.5, "no mistakes at this threshold", fontsize=9, transform=axes[0, 0].transAxes)
    for position, axis in enumerate(axes.flat):
        if position >= len(worst):
            if position > 0:
                axis.set_visible(False)
            continue
        index = int(worst[position])
        axis.imshow(images[index], interpolation="nearest")
        _draw_centre_box(axis, images.shape[1])
        axis.set_title(f"true {class_name(labels[index], class_names)}\np(tumour)={probs[index]:.3f}", fontsize=7)
    figure.suptitle(
        f"Most confident mistakes: {len(worst)} of {len(wrong)} errors in {len(labels)} patches (threshold {threshold:.2f})",
        fontsize=9,
    )
    return save_figure(figure, path, dpi=100)
