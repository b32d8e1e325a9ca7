"""``vgg-small``: VGG-style stages of two 3x3 convolutions, max-pool, then a dense classifier."""

from __future__ import annotations

import torch
from torch import nn

from pcamlab.errors import ConfigError
from pcamlab.models.factory import register_model
from pcamlab.models.layers import check_activation, initialise, make_activation

__all__ = ["VGGSmall", "build_vgg_small"]


class VGGSmall(nn.Module):
    """[conv(-bn)-act x depth > max-pool] per stage > flatten > dense > dropout > logit."""

    def __init__(self, widths: list[int], depth: int, batch_norm: bool, dense_units: int,
                 dropout: float, activation: str, input_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, size = 3, input_size
        for width in widths:
            for _ in range(depth):
                layers.append(nn.Conv2d(in_channels, width, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(make_activation(activation))
                in_channels = width
            layers.append(nn.MaxPool2d(2))
            size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_channels * size * size, dense_units),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(dense_units, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, 8*width, 6, 6) for 96x96 and 4 stages
        return self.classifier(features)  # (B, 1) logits


@register_model("vgg-small")
def build_vgg_small(
    width: int = 32,
    stages: int = 4,
    depth: int = 2,
    batch_norm: bool = True,
    dense_units: int = 256,
    dropout: float = 0.5,
    activation: str = "relu",
    input_size: int = 96,
    init: str = "kaiming",
) -> nn.Module:
    """VGG-style: 4 stages of 2 x conv3x3 (32-64-128-256) + max-pool, dense 256, logit (fixed input size).

    Args:
        width: channels of the first stage, doubled at each stage.
        stages: conv stages, each ending in a 2x2 max-pool.
        depth: 3x3 convolutions per stage.
        batch_norm: batch-norm after each convolution.
        dense_units: width of the hidden dense layer.
        dropout: dropout before each dense layer.
        activation: activation after each conv and the hidden dense layer.
        input_size: patch side the flatten layer is sized for.
        init: weight initialisation (default | kaiming | xavier | orthogonal).
    """
    for key, value in (("width", width), ("stages", stages), ("depth", depth), ("dense_units", dense_units)):
        if value < 1:
            raise ConfigError(f"model.options.{key} must be >= 1; got {value}")
    if input_size // 2**stages < 1:
        raise ConfigError(
            f"model.options.stages: {stages} max-pools shrink a {input_size}px patch to nothing; use fewer stages"
        )
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.options.dropout must be in [0, 1); got {dropout}")
    check_activation(activation, "model.options.activation")
    widths = [width * 2**index for index in range(stages)]
    model = VGGSmall(widths, depth, batch_norm, dense_units, dropout, activation, input_size)
    return initialise(model, init)
