"""``fcn``: a fully convolutional classifier, no dense layers: conv stages, a 1x1 conv head, mean logit.

The head maps every position of the last feature map to a logit (a coarse tumour map, handy for
sliding over larger tiles); the patch logit is the mean of that map. Accepts any input >= 8 px.
"""

from __future__ import annotations

import torch
from torch import nn

from pcamlab.models.factory import register_model
from pcamlab.models.layers import ConvBlock, initialise
from pcamlab.models.options import ACTIVATION, DROPOUT, INIT, POSITIVE

__all__ = ["FullyConvolutional", "build_fcn"]


class FullyConvolutional(nn.Module):
    """Conv-bn-act stages with max-pool between them > spatial dropout > 1x1 conv to one logit map."""

    def __init__(self, widths: list[int], depth: int, dropout: float, activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for index, width in enumerate(widths):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(ConvBlock(in_channels, width, 3, activation=activation))
                in_channels = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(in_channels, 1, kernel_size=1)

    def logit_map(self, images: torch.Tensor) -> torch.Tensor:
        """Per-position logits (B, 1, H/8, W/8) for 4 stages."""
        return self.head(self.dropout(self.features(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_map(images).mean(dim=(2, 3))  # (B, 1, h, w) -> (B, 1)


@register_model("fcn", options={
    "width": POSITIVE, "stages": POSITIVE, "depth": POSITIVE, "dropout": DROPOUT, "activation": ACTIVATION, "init": INIT,
})
def build_fcn(
    width: int = 32,
    stages: int = 4,
    depth: int = 1,
    dropout: float = 0.1,
    activation: str = "relu",
    init: str = "kaiming",
) -> nn.Module:
    """Fully convolutional: conv-bn-act stages (32-64-128-256), 1x1 conv logit map, its mean.

    Args:
        width: channels of the first stage, doubled at each stage.
        stages: number of stages (max-pool 2 between them).
        depth: conv blocks per stage.
        dropout: spatial dropout (whole channels) before the 1x1 head.
        activation: activation after each batch-norm.
        init: weight initialisation (default | kaiming | xavier | orthogonal).
    """
    widths = [width * 2**index for index in range(stages)]
    return initialise(FullyConvolutional(widths, depth, dropout, activation), init)
