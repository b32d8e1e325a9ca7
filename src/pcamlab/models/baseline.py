"""``baseline``: the classic course CNN, layer for layer.

Keras original::

    Conv2D(32, 3, activation="relu", padding="same") > MaxPool2D(4)
    Conv2D(64, 3, activation="relu", padding="same") > MaxPool2D(4)
    Flatten > Dense(64, activation="relu") > Dense(1, activation="sigmoid")

Here the last layer returns the logit; sigmoid(logit) is the Keras output. Weights start like Keras
(Glorot-uniform, zero biases) unless ``init`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pcamlab.config_ranges import Range
from pcamlab.models.factory import register_model
from pcamlab.models.layers import initialise, make_activation
from pcamlab.models.options import ACTIVATION, DROPOUT, INIT, INPUT_SIZE, POSITIVE, Option

__all__ = ["BaselineCNN", "build_baseline"]


# Activations that are non-decreasing functions, so max-pool(act(x)) == act(max-pool(x)) exactly: the
# network pools first and activates 16x fewer values (with pool 4). Profiled (torch.profiler, batch 32,
# fp32): ReLU forward + backward on the full-resolution maps took ~23% of the course CNN's training
# step, more than either convolution's forward. Parameter-free, so the state dict is unchanged.
POOL_COMMUTES = frozenset({"relu", "leaky_relu", "elu", "tanh", "sigmoid"})


class BaselineCNN(nn.Module):
    """Conv-pool blocks, flatten, one hidden dense layer, one logit."""

    def __init__(self, filters: list[int], dense_units: int, dropout: float, pool_size: int,
                 activation: str, input_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, size = 3, input_size
        for out_channels in filters:
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
            if activation in POOL_COMMUTES:  # same function, the activation on pool_size**2 fewer values
                layers += [nn.MaxPool2d(pool_size), make_activation(activation)]
            else:
                layers += [make_activation(activation), nn.MaxPool2d(pool_size)]
            in_channels, size = out_channels, size // pool_size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * size * size, dense_units),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(dense_units, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, 64, 6, 6) with the defaults
        return self.classifier(features)  # (B, 1) logits


def pools_leave_a_pixel(values: Mapping[str, Any], where: str) -> str | None:
    """Rule: ``len(filters)`` max-pools of ``pool_size`` leave at least 1 x 1 of an ``input_size`` patch."""
    pools, size = len(values["filters"]), values["pool_size"]
    if values["input_size"] // size**pools < 1:
        return (f"{where}: {pools} pools of {size} shrink a {values['input_size']}px patch to nothing; "
                "use fewer filters entries or a smaller pool_size")
    return None


@register_model("baseline", rules=[pools_leave_a_pixel], options={
    "filters": Option(range=Range(1), length=(1, None)),
    "dense_units": POSITIVE,
    "dropout": DROPOUT,
    "pool_size": POSITIVE,
    "activation": ACTIVATION,
    "input_size": INPUT_SIZE,
    "init": INIT,
})
def build_baseline(
    filters: list[int] = (32, 64),
    dense_units: int = 64,
    dropout: float = 0.0,
    pool_size: int = 4,
    activation: str = "relu",
    input_size: int = 96,
    init: str = "xavier",
) -> nn.Module:
    """Classic course CNN: 2 x (conv 3x3 + max-pool 4x4), dense 64, logit (fixed 96x96 input).

    Args:
        filters: output channels of each conv + pool block (one block per entry).
        dense_units: width of the hidden dense layer.
        dropout: dropout before the logit layer (0 = none, as in the original).
        pool_size: max-pool window and stride after each convolution.
        activation: activation after each conv and the hidden dense layer.
        input_size: patch side the flatten layer is sized for (the model accepts only that size).
        init: weight initialisation; ``xavier`` = Keras' Glorot-uniform with zero biases.
    """
    model = BaselineCNN(list(filters), dense_units, dropout, pool_size, activation, input_size)
    return initialise(model, init)
