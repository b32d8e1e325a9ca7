"""Looking inside a trained detector: filters, feature maps, Grad-CAM heat maps, confident mistakes.

Every function takes a plain ``torch.nn.Module`` (logits (B, 1)) and writes a PNG; ``run_explain``
ties them together for a checkpoint and a data split (``pcamlab explain``).

Example:
    >>> from pcamlab.explain import GradCAM, overlay
    >>> cams = GradCAM(model)(inputs)  # (B, H, W) in [0, 1]
"""

from pcamlab.explain.feature_maps import feature_maps, plot_feature_maps
from pcamlab.explain.filters import conv_layers, plot_first_layer_filters, plot_layer_filters
from pcamlab.explain.gradcam import GradCAM, overlay, plot_confident_mistakes, plot_gradcam_gallery
from pcamlab.explain.run import EXPLAIN_FILES, run_explain

__all__ = [
    "conv_layers",
    "plot_first_layer_filters",
    "plot_layer_filters",
    "feature_maps",
    "plot_feature_maps",
    "GradCAM",
    "overlay",
    "plot_gradcam_gallery",
    "plot_confident_mistakes",
    "run_explain",
    "EXPLAIN_FILES",
]
