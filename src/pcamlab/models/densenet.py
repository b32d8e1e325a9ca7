"""``densenet-small``: a DenseNet-BC (Huang et al. 2017) sized for 96x96 patches on a small budget.

Each dense layer is BN-ReLU-conv1x1 (bottleneck, 4 x growth) > BN-ReLU-conv3x3 (growth channels) and
its output is concatenated to its input; transitions BN-ReLU-conv1x1 (compression) > avg-pool 2.
Layout: 3x3 stem > max-pool 2 (48 px) > dense block > transition (24 px) > dense block > transition
(12 px) > dense block > BN-ReLU > global average pool > logit.
"""

from __future__ import annotations

import torch
from torch import nn

from pcamlab.errors import ConfigError
from pcamlab.models.factory import register_model
from pcamlab.models.layers import check_activation, initialise, make_activation

__all__ = ["DenseLayer", "DenseNet", "build_densenet_small"]


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
        layers: list[nn.Module] = [
            nn.Conv2d(3, initial_channels, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
        ]
        channels = initial_channels
        for index, count in enumerate(block_layers):
            for _ in range(count):
                layers.append(DenseLayer(channels, growth_rate, bottleneck, activation, dropout))
                channels += growth_rate
            if index < len(block_layers) - 1:
                reduced = max(1, int(channels * compression))
                layers += [nn.BatchNorm2d(channels), make_activation(activation),
                           nn.Conv2d(channels, reduced, 1, bias=False), nn.AvgPool2d(2)]
                channels = reduced
        layers += [nn.BatchNorm2d(channels), make_activation(activation)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, C, 12, 12) for 96x96 and 3 blocks
        return self.head(self.pool(features).flatten(1))  # (B, C) -> (B, 1) logits


@register_model("densenet-small")
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
    block_layers = list(block_layers)
    if not block_layers or any(value < 1 for value in block_layers):
        raise ConfigError(f"model.options.block_layers must be a non-empty list of positive integers; got {block_layers}")
    for key, value in (("growth_rate", growth_rate), ("initial_channels", initial_channels)):
        if value < 1:
            raise ConfigError(f"model.options.{key} must be >= 1; got {value}")
    if not 0.0 < compression <= 1.0:
        raise ConfigError(f"model.options.compression must be in (0, 1]; got {compression}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.options.dropout must be in [0, 1); got {dropout}")
    check_activation(activation, "model.options.activation")
    model = DenseNet(block_layers, growth_rate, initial_channels, compression, bottleneck, dropout, activation)
    return initialise(model, init)
