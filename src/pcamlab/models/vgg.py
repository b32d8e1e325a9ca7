"""VGG networks: ``vgg-small`` (stages of two 3x3 convolutions, max-pool, dense classifier) and ``vgg16``.

``vgg16`` is Simonyan & Zisserman's configuration D (13 convolutions in 5 stages, 64-128-256-512-512) with
its ``features`` laid out exactly as torchvision's ``vgg16`` (``batch_norm=True``: ``vgg16_bn``), so
ImageNet weights from torchvision, timm or Keras (``keras.applications.VGG16``) load into every
convolution (``pcamlab.models.transfer``). The ImageNet classifier (7x7x512 maps of 224 px patches,
1000 classes) does not fit 96 px patches; the head is the course's instead: global average pool, dense
256 + ReLU, dropout, logit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pcamlab.config_ranges import Range
from pcamlab.models.factory import register_model
from pcamlab.models.layers import initialise, make_activation
from pcamlab.models.options import ACTIVATION, DROPOUT, FLAG, INIT, INPUT_SIZE, POSITIVE, Option

__all__ = ["VGGSmall", "VGG16", "VGG16_STAGES", "build_vgg_small", "build_vgg16"]


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


def stages_leave_a_pixel(values: Mapping[str, Any], where: str) -> str | None:
    """Rule: ``stages`` 2 x 2 max-pools leave at least 1 x 1 of an ``input_size`` patch."""
    if values["input_size"] // 2 ** values["stages"] < 1:
        return (f"{where}.stages: {values['stages']} max-pools shrink a {values['input_size']}px patch to nothing; "
                "use fewer stages")
    return None


@register_model("vgg-small", rules=[stages_leave_a_pixel], options={
    "width": POSITIVE,
    "stages": POSITIVE,
    "depth": POSITIVE,
    "batch_norm": FLAG,
    "dense_units": POSITIVE,
    "dropout": DROPOUT,
    "activation": ACTIVATION,
    "input_size": INPUT_SIZE,
    "init": INIT,
})
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
    widths = [width * 2**index for index in range(stages)]
    model = VGGSmall(widths, depth, batch_norm, dense_units, dropout, activation, input_size)
    return initialise(model, init)


VGG16_STAGES = (2, 2, 3, 3, 3)  # convolutions per stage (configuration D); widths 1, 2, 4, 8, 8 x width


class VGG16(nn.Module):
    """torchvision-layout ``features`` (conv(-bn)-ReLU ..., max-pool per stage) > GAP > dense > dropout > logit."""

    def __init__(self, width: int, batch_norm: bool, dense_units: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for stage, count in enumerate(VGG16_STAGES):
            out_channels = width * min(2**stage, 8)
            for _ in range(count):
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))  # bias, as torchvision's
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = [nn.Linear(in_channels, dense_units), nn.ReLU(inplace=True), nn.Dropout(dropout)] if dense_units else []
        self.head = nn.Sequential(*hidden, nn.Linear(dense_units or in_channels, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, 8*width, 3, 3) for 96x96
        return self.head(self.pool(features).flatten(1))  # (B, 1) logits


@register_model("vgg16", options={
    "width": POSITIVE,
    "batch_norm": FLAG,
    "dense_units": Option(range=Range(0, meaning="0 = no hidden layer")),
    "dropout": DROPOUT,
    "init": INIT,
})
def build_vgg16(
    width: int = 64,
    batch_norm: bool = False,
    dense_units: int = 256,
    dropout: float = 0.5,
    init: str = "kaiming",
) -> nn.Module:
    """VGG-16 (13 conv3x3 in 5 stages, 64-512) for ImageNet transfer; GAP, dense 256, logit (any input size).

    Args:
        width: channels of the first stage (64 = the standard widths, which ImageNet weights need).
        batch_norm: batch-norm after each convolution (torchvision's ``vgg16_bn`` layout).
        dense_units: width of the hidden dense layer of the head (0 = the logit right after the pool).
        dropout: dropout after the hidden dense layer.
        init: weight initialisation (default | kaiming | xavier | orthogonal) before any weights are loaded.
    """
    return initialise(VGG16(width, batch_norm, dense_units, dropout), init)
