"""Small building blocks shared by the model files: activations, conv-bn-act blocks, initialisation.

Plain torch only (no torchvision/timm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "INITIALISATIONS",
    "ConvBlock",
    "SubsampledPointwiseConv2d",
    "conv2d",
    "initialise",
    "make_activation",
]

# Activation names accepted everywhere a model takes an ``activation`` option (``models.options.ACTIVATION``).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

# Weight initialisation schemes (``models.options.INIT``): "default" keeps torch's own (kaiming-uniform, a=sqrt(5)).
INITIALISATIONS = ("default", "kaiming", "xavier", "orthogonal")


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution with stride s, computed as "take every s-th pixel, then a 1x1 convolution".

    The same function and the same parameters as ``nn.Conv2d(c_in, c_out, 1, stride=s)`` (state dicts
    load either way), but it avoids a torch 2.13 CPU bug: the backward pass of a strided 1x1
    convolution in channels_last layout with fewer than 8 input channels crashes (segfault, double
    free) or hangs in oneDNN; seen with ResNet shortcuts at width < 8.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        step_h, step_w = self.stride
        return F.conv2d(features[:, :, ::step_h, ::step_w], self.weight, self.bias)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
           dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """``nn.Conv2d``, or :class:`SubsampledPointwiseConv2d` for an unpadded strided 1x1 convolution."""
    if kernel_size == 1 and stride > 1 and padding == 0:
        return SubsampledPointwiseConv2d(in_channels, out_channels, 1, stride=stride, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     dilation=dilation, bias=bias)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name, one of :data:`ACTIVATIONS` (checked by the model's declared options)
    (``leaky_relu`` has torch's slope 0.01; Keras' default is 0.3)."""
    if name in ("relu", "leaky_relu", "elu", "silu"):
        return ACTIVATIONS[name](inplace=True)
    return ACTIVATIONS[name]()


class ConvBlock(nn.Sequential):
    """Conv2d (no bias) > BatchNorm2d > activation, 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 activation: str = "relu", groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            make_activation(activation),
        )


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every Conv/ConvTranspose/Linear weight of ``model`` in place; biases become 0.

    Args:
        model: the network.
        scheme: ``default`` (leave torch's init), ``kaiming`` (He normal, fan-out, for ReLU nets),
            ``xavier`` (Glorot uniform, Keras' default), ``orthogonal`` (one of :data:`INITIALISATIONS`,
            checked by the model's declared options).

    Returns:
        The same model, for chaining.
    """
    assert scheme in INITIALISATIONS, scheme
    if scheme == "default":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if scheme == "kaiming":
                # fan_out suits convolutions (He et al.); for a dense layer fan_out can be 1 (the logit
                # layer), which would give weights of std ~1.4 and logits of ~20 at the start: use fan_in.
                mode = "fan_in" if isinstance(module, nn.Linear) else "fan_out"
                nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            elif scheme == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.orthogonal_(module.weight, gain=math.sqrt(2.0))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
