"""``densenet-small``: a DenseNet-BC (Huang et al. 2017) sized for 96x96 patches on a small budget.

Each dense layer is BN-ReLU-conv1x1 (bottleneck, 4 x growth) > BN-ReLU-conv3x3 (growth channels) and
its output is concatenated to its input; transitions BN-ReLU-conv1x1 (compression) > avg-pool 2.
Layout: 3x3 stem > max-pool 2 (48 px) > dense block > transition (24 px) > dense block > transition
(12 px) > dense block > BN-ReLU > global average pool > logit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pcamlab.config_ranges import Range
from pcamlab.models.factory import register_model
from pcamlab.models.layers import initialise, make_activation
from pcamlab.models.options import ACTIVATION, DROPOUT, FLAG, INIT, POSITIVE, Option

__all__ = ["DENSENET_OPTIONS", "DenseLayer", "DenseNet", "build_densenet_small", "dense_blocks"]

# The options of every DenseNet here (densenet-small and p4m-densenet).
DENSENET_OPTIONS: dict[str, Option] = {
    "growth_rate": POSITIVE,
    "block_layers": Option(range=Range(1), length=(1, None)),
    "initial_channels": POSITIVE,
    "compression": Option(range=Range(0, 1, low_open=True, meaning="the fraction of channels a transition keeps")),
    "dropout": DROPOUT,
}


def dense_blocks(block_layers: list[int], growth_rate: int, channels: int, compression: float,
                 dense_layer: Callable[[int], nn.Module],
                 transition: Callable[[int, int], list[nn.Module]]) -> tuple[list[nn.Module], int]:
    """The dense blocks of a DenseNet, a compressing transition between each two (Huang et al. 2017).

    Args:
        block_layers: dense layers per block.
        growth_rate: channels each dense layer adds.
        channels: channels entering the first block.
        compression: fraction of channels a transition keeps (at least 1 channel).
        dense_layer: ``dense_layer(in_channels)``, a module that adds ``growth_rate`` channels.
        transition: ``transition(in_channels, out_channels)``, the modules of one transition.

    Returns:
        ``(modules in order, channels leaving the last block)``.
    """
    layers: list[nn.Module] = []
    for index, count in enumerate(block_layers):
        for _ in range(count):
            layers.append(dense_layer(channels))
            channels += growth_rate
        if index < len(block_layers) - 1:
            reduced = max(1, int(channels * compression))
            layers += transition(channels, reduced)
            channels = reduced
    return layers, channels


class DenseLayer(nn.Module):
    """(BN-act-conv1x1 bottleneck) > BN-act-conv3x3 producing ``growth_rate`` new channels."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck: bool, activation: str, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        if bottleneck:
            layers += [nn.BatchNorm2d(channels), make_activation(activation),
                       nn.Conv2d(channels, 4 * growth_rate, 1, bias=False)]
            channels = 4 * growth_rate
        layers += [nn.BatchNorm2d(channels), make_activation(activation),
                   nn.Conv2d(channels, growth_rate, 3, padding=1, bias=False)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, self.layers(features)], dim=1)  # (B, C + growth_rate, H, W)


class DenseNet(nn.Module):
    """Stem > [dense block > transition] x (n-1) > dense block > BN-act > GAP > logit."""

    def __init__(self, block_layers: list[int], growth_rate: int, initial_channels: int, compression: float,
                 bottleneck: bool, dropout: float, activation: str):
        super().__init__()
        blocks, channels = dense_blocks(
            block_layers, growth_rate, initial_channels, compression,
            lambda channels: DenseLayer(channels, growth_rate, bottleneck, activation, dropout),
            lambda channels, reduced: [nn.BatchNorm2d(channels), make_activation(activation),
                                       nn.Conv2d(channels, reduced, 1, bias=False), nn.AvgPool2d(2)],
        )
        self.features = nn.Sequential(
            nn.Conv2d(3, initial_channels, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            *blocks,
            nn.BatchNorm2d(channels),
            make_activation(activation),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, C, 12, 12) for 96x96 and 3 blocks
        return self.head(self.pool(features).flatten(1))  # (B, C) -> (B, 1) logits


@register_model("densenet-small", options={**DENSENET_OPTIONS, "bottleneck": FLAG, "activation": ACTIVATION, "init": INIT})
def build_densenet_small(
    growth_rate: int = 12,
    block_layers: list[int] = (4, 8, 8),
    initial_channels: int = 24,
    compression: float = 0.5,
    bottleneck: bool = True,
    dropout: float = 0.0,
    activation: str = "relu",
    init: str = "kaiming",
) -> nn.Module:
    """DenseNet-BC: 3 dense blocks (4-8-8 layers, growth 12) with compressing transitions, GAP, logit.

    Args:
        growth_rate: channels each dense layer adds.
        block_layers: dense layers in each block (a transition halves the map between blocks).
        initial_channels: channels of the 3x3 stem convolution.
        compression: fraction of channels a transition keeps (BC = 0.5).
        bottleneck: 1x1 bottleneck conv (4 x growth) before each 3x3 (the "B" of BC).
        dropout: spatial dropout after each dense layer's 3x3 conv.
        activation: activation after each batch-norm.
        init: weight initialisation (default | kaiming | xavier | orthogonal).
    """
    model = DenseNet(list(block_layers), growth_rate, initial_channels, compression, bottleneck, dropout, activation)
    return initialise(model, init)
