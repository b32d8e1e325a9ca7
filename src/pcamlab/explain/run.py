"""One call that writes every explanation picture for a checkpoint on a data split.

Example:
    >>> from pcamlab.explain import run_explain
    >>> summary = run_explain("runs/demo/best.safetensors", "sample", "valid", "runs/demo/explain-valid")
    >>> summary["files"]["gradcam_gallery"]
    PosixPath('runs/demo/explain-valid/gradcam_gallery.png')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcamlab.errors import ConfigError
from pcamlab.fileio import write_json_atomic
from pcamlab.explain._common import check_contract, conv_layers, images_to_input, model_device
from pcamlab.explain.feature_maps import eval_mode, plot_feature_maps
from pcamlab.explain.filters import plot_first_layer_filters, plot_layer_filters
from pcamlab.explain.gradcam import GradCAM, error_groups, plot_confident_mistakes, plot_gradcam_gallery
from pcamlab.runtime.contract import InputContract

__all__ = ["run_explain", "predict_probabilities", "EXPLAIN_FILES"]

# File names written into out_dir (the HTML report captions them by these stems).
EXPLAIN_FILES = {
    "first_layer_filters": "first_layer_filters.png",
    "layer_filters": "layer_filters.png",
    "feature_maps": "feature_maps.png",
    "gradcam_gallery": "gradcam_gallery.png",
    "confident_mistakes": "confident_mistakes.png",
    "summary": "explain.json",
}


def predict_probabilities(
    model: torch.nn.Module, images: np.ndarray, contract: InputContract | Mapping[str, Any], batch_size: int = 128
) -> np.ndarray:
    """Tumour probabilities float32 (N,) for uint8 patches (N, H, W, 3): the model's TorchPredictor."""
    from pcamlab.runtime.predictor import TorchPredictor

    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    with eval_mode(model):  # the predictor puts the model in eval mode; restore the caller's mode
        predictor = TorchPredictor(model, check_contract(contract), device=model_device(model))
        return predictor.predict_proba(images, batch_size=batch_size)


def run_explain(
    checkpoint_path: str | Path,
    data_root: str | Path | None,
    split: str,
    out_dir: str | Path,
    *,
    n: int = 256,
    seed: int = 0,
    per_group: int = 6,
    max_channels: int = 16,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write filters, feature maps, a Grad-CAM gallery and the most confident mistakes.

    ``n`` patches are drawn at random (``numpy.random.default_rng(seed)``) from the split, scored by
    the checkpoint's model, and split into true/false positives/negatives at the checkpoint's
    threshold. The feature maps are drawn for the most confident true positive (or, when there is
    none, the patch with the highest tumour probability).

    Args:
        checkpoint_path: a ``.safetensors`` checkpoint written by ``pcamlab train``.
        data_root: dataset folder or ``"sample"``; None = the checkpoint's data (its path and format;
            a Kaggle layout's valid split is made with its ``valid_fraction`` and ``seed``, as evaluate does).
        split: split to explain, e.g. ``"valid"``.
        out_dir: folder for the PNGs and ``explain.json`` (created; files in it are replaced).
        n: patches drawn from the split (all of them when the split is smaller).
        seed: seed of the random draw.
        per_group: patches per group in the Grad-CAM gallery.
        max_channels: channels per layer in the feature-map picture.
        device: where the model runs (``"cpu"``, ``"cuda"``...).
        progress: optional ``progress(done, total)`` called while patches are read.

    Returns:
        dict with ``files`` (name -> Path), ``counts`` (true_positive, false_positive, false_negative,
        true_negative), ``threshold``, ``n``, ``indices`` (split rows used), ``gradcam_layer`` and
        ``feature_map_patch`` (name of the patch drawn); also written to ``explain.json``.

    Raises:
        ConfigError: n < 1 or per_group < 1.
        CheckpointError: the checkpoint cannot be loaded.
        DataError: the data cannot be opened or read.
    """
    from pcamlab.data.source import open_run_split
    from pcamlab.runtime import checkpoint as checkpoint_module
    from pcamlab.runtime.predictor import TorchPredictor

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive number of patches to explain; got {n!r}")
    if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1:
        raise ConfigError(f"per_group must be a positive integer; got {per_group!r}")
    checkpoint = checkpoint_module.load_checkpoint(checkpoint_path, device=device)
    model, contract = checkpoint.model, check_contract(checkpoint.contract, f"contract of {str(checkpoint_path)!r}")
    predictor = TorchPredictor(model, contract, device=device)  # Grad-CAM needs the torch model itself
    reader = open_run_split(checkpoint.config.data, split, path=data_root,  # the split evaluate sees
                            stored_in=f"checkpoint {str(checkpoint_path)!r}")
    data_root = checkpoint.config.data.path if data_root is None else data_root
    generator = np.random.default_rng(seed)
    count = min(n, len(reader))
    indices = np.sort(generator.choice(len(reader), size=count, replace=False))
    images, labels = [], []
    for done, index in enumerate(indices, start=1):
        image, label = reader[int(index)]
        images.append(image)
        labels.append(label)
        if progress is not None:
            progress(done, count)
    images_array = np.stack(images)  # (N, H, W, 3) uint8
    labels_array = np.asarray(labels, dtype=np.int64)  # (N,)
    probabilities = predictor.predict_proba(images_array)  # (N,) float32
    threshold = contract.threshold

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / file for name, file in EXPLAIN_FILES.items()}
    plot_first_layer_filters(model, files["first_layer_filters"])
    if len(conv_layers(model)) > 1:
        plot_layer_filters(model, files["layer_filters"])
    else:
        del files["layer_filters"]
    groups = error_groups(labels_array, probabilities, threshold)
    if len(groups["true_positive"]):
        shown = int(groups["true_positive"][0])
    else:
        shown = int(np.argmax(probabilities))
    plot_feature_maps(model, images_array[shown], files["feature_maps"], max_channels, contract=contract)
    layer = GradCAM(model).find_layer(images_to_input(images_array[:1], contract, model_device(model)))
    plot_gradcam_gallery(
        model, images_array, labels_array, probabilities, contract, files["gradcam_gallery"], threshold, per_group,
        layer=layer,
    )
    plot_confident_mistakes(
        images_array, labels_array, probabilities, files["confident_mistakes"], n=16, threshold=threshold,
        class_names=contract.class_names,
    )
    summary = {
        "checkpoint": str(checkpoint_path),
        "data": str(data_root),
        "split": split,
        "n": int(count),
        "seed": int(seed),
        "threshold": threshold,
        "counts": {name: int(len(group)) for name, group in groups.items()},
        "gradcam_layer": layer,
        "feature_map_patch": reader.name(int(indices[shown])),
        "indices": [int(index) for index in indices],
        "files": files,
    }
    write_json_atomic(files["summary"], {**summary, "files": {name: path.name for name, path in files.items()}})
    return summary
