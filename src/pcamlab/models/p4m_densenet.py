"""``p4m-densenet``: a rotation- and reflection-equivariant DenseNet (Veeling et al. 2018), plain torch.

Tissue has no canonical orientation, so the network is built from group convolutions over p4m: the
8 symmetries of the square (4 rotations by 90 degrees, each with or without a mirror flip).

The group. Element ``k`` in 0..7 acts on an image as ``T_k(x) = rot90(flip(x) if k >= 4 else x,
k % 4)`` (flip = mirror of the last axis, rot90 over the last two axes). ``MULTIPLY[a][b]`` is the
index of ``T_a o T_b`` and ``INVERSE[a]`` of ``T_a``'s inverse (computed, not typed in).

Feature maps. A p4m feature map with C channels is a tensor (B, C*8, H, W) whose channel
``c*8 + g`` is the response of filter ``c`` in orientation ``g``. Rotating/flipping the input by ``h``
transforms it as ``f(T_h x)[c, g] = T_h( f(x)[c, MULTIPLY[INVERSE[h]][g]] )``: every map is moved
by ``T_h`` and the orientation axis is permuted (:func:`transform_features`).

Layers:

- :class:`LiftingConv` (Z2 -> p4m): ``out[c, g] = x * T_g(W_c)``; the filter bank holds the 8
  transformed copies of each filter.
- :class:`GroupConv` (p4m -> p4m): ``out[c, g] = sum_{c', g'} f[c', g'] * T_g(W[c, c', g^-1 g'])``:
  each filter is transformed spatially AND its orientation axis permuted by the group multiplication.
- :class:`GroupBatchNorm`: batch-norm whose statistics and affine parameters are shared by the 8
  orientations of a channel (a ``BatchNorm3d`` over (B, C, 8, H, W)).
- Group pooling at the end: max or mean over the 8 orientations gives invariant channels; then global
  average pooling and a linear logit, so the logit is invariant to all 8 transforms.

Equivariance holds exactly for square inputs whose side is divisible by 2 at every pooling (96 is),
because 'same' padding and 2x2 pooling commute with rot90/flip there.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from pcamlab.models.densenet import DENSENET_OPTIONS, dense_blocks
from pcamlab.models.factory import register_model
from pcamlab.models.options import Option

__all__ = [
    "GROUP_ORDER",
    "INVERSE",
    "MULTIPLY",
    "GroupBatchNorm",
    "GroupConv",
    "LiftingConv",
    "P4MDenseNet",
    "build_p4m_densenet",
    "transform_features",
    "transform_images",
]

GROUP_ORDER = 8


def transform_images(images: torch.Tensor, element: int) -> torch.Tensor:
    """Apply p4m element ``element`` (0..7; 0 = identity) to the last two axes of ``images``."""
    if element >= 4:
        images = images.flip(-1)
    # torch.rot90(images, k, dims=(-2, -1)) written with flip/transpose, which every ONNX exporter
    # knows (the legacy exporter has no aten::rot90)
    turns = element % 4
    if turns == 1:
        return images.flip(-1).transpose(-2, -1)
    if turns == 2:
        return images.flip(-2, -1)
    if turns == 3:
        return images.transpose(-2, -1).flip(-1)
    return images


def _cayley_table() -> tuple[list[list[int]], list[int]]:
    """Group multiplication and inverses, found by acting on an asymmetric 3x3 probe."""
    probe = torch.arange(9.0).reshape(3, 3)
    images = [transform_images(probe, element) for element in range(GROUP_ORDER)]

    def index_of(image: torch.Tensor) -> int:
        return next(element for element, candidate in enumerate(images) if torch.equal(candidate, image))

    multiply = [[index_of(transform_images(transform_images(probe, b), a)) for b in range(GROUP_ORDER)]
                for a in range(GROUP_ORDER)]
    inverse = [multiply[a].index(0) for a in range(GROUP_ORDER)]
    return multiply, inverse


MULTIPLY, INVERSE = _cayley_table()


def transform_features(features: torch.Tensor, element: int) -> torch.Tensor:
    """How a p4m feature map (B, C*8, H, W) transforms when the input is transformed by ``element``.

    ``result[c, g] = T_element(features[c, MULTIPLY[INVERSE[element]][g]])``.
    """
    batch, channels, height, width = features.shape
    grouped = features.reshape(batch, channels // GROUP_ORDER, GROUP_ORDER, height, width)
    permutation = [MULTIPLY[INVERSE[element]][g] for g in range(GROUP_ORDER)]
    grouped = transform_images(grouped[:, :, permutation], element)
    return grouped.reshape(batch, channels, height, width)


class LiftingConv(nn.Conv2d):
    """Z2 -> p4m convolution: each of ``out_channels`` filters is applied in all 8 orientations.

    A subclass of ``nn.Conv2d`` holding the untransformed filters (out_channels, in_channels, k, k), so
    :func:`pcamlab.models.first_conv` finds it for filter pictures. Output: (B, out_channels*8, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def filter_bank(self) -> torch.Tensor:
        """(out_channels*8, in_channels, k, k): channel c*8+g = T_g(W_c)."""
        bank = torch.stack([transform_images(self.weight, g) for g in range(GROUP_ORDER)], dim=1)
        return bank.reshape(self.out_channels * GROUP_ORDER, self.in_channels, *self.kernel_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return functional.conv2d(images, self.filter_bank(), padding=self.padding)  # (B, C*8, H, W)

    def count_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return output[0].numel() * self.in_channels * self.kernel_size[0] * self.kernel_size[1]


class GroupConv(nn.Module):
    """p4m -> p4m convolution on (B, in_channels*8, H, W) giving (B, out_channels*8, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        # stored 4-D (C_out, C_in*8, k, k) so .to(memory_format=torch.channels_last) works; viewed
        # as (C_out, C_in, 8, k, k) when the filter bank is built
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels * GROUP_ORDER, kernel_size, kernel_size))
        fan_in = in_channels * GROUP_ORDER * kernel_size * kernel_size
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_in))
        # permutations[g][g'] = g^-1 g': which stored orientation feeds input orientation g' for output g
        self.register_buffer(
            "permutations",
            torch.tensor([[MULTIPLY[INVERSE[g]][h] for h in range(GROUP_ORDER)] for g in range(GROUP_ORDER)]),
            persistent=False,
        )

    def filter_bank(self) -> torch.Tensor:
        """(out_channels*8, in_channels*8, k, k): filters transformed by g, orientation axis permuted."""
        size = self.kernel_size
        weight = self.weight.reshape(self.out_channels, self.in_channels, GROUP_ORDER, size, size)
        bank = torch.stack(
            [transform_images(weight[:, :, self.permutations[g]], g) for g in range(GROUP_ORDER)], dim=1
        )  # (C_out, 8, C_in, 8, k, k)
        return bank.reshape(self.out_channels * GROUP_ORDER, self.in_channels * GROUP_ORDER, size, size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return functional.conv2d(features, self.filter_bank(), padding=self.kernel_size // 2)

    def count_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return output[0].numel() * self.in_channels * GROUP_ORDER * self.kernel_size**2

    def extra_repr(self) -> str:
        return f"{self.in_channels}x8, {self.out_channels}x8, kernel_size={self.kernel_size}"


class GroupBatchNorm(nn.BatchNorm3d):
    """Batch-norm of a p4m map (B, C*8, H, W) with statistics shared over the 8 orientations."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        grouped = features.reshape(batch, channels // GROUP_ORDER, GROUP_ORDER, height, width)
        return super().forward(grouped).reshape(batch, channels, height, width)


class _GroupDenseLayer(nn.Module):
    """GroupBN-ReLU-GroupConv3x3 adding ``growth_rate`` p4m channels (concatenated to the input)."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float):
        super().__init__()
        self.norm = GroupBatchNorm(in_channels)
        self.conv = GroupConv(in_channels, growth_rate, 3)
        self.dropout = dropout

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        new = self.conv(functional.relu(self.norm(features)))
        if self.dropout > 0:  # whole p4m channels (all 8 orientations) are dropped together
            batch, channels, height, width = new.shape
            grouped = new.reshape(batch, channels // GROUP_ORDER, GROUP_ORDER * height, width)
            new = functional.dropout2d(grouped, self.dropout, self.training).reshape(new.shape)
        return torch.cat([features, new], dim=1)  # (B, (C + growth)*8, H, W)


class _GroupTransition(nn.Module):
    """GroupBN-ReLU-GroupConv1x1 (compression) > 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = GroupBatchNorm(in_channels)
        self.conv = GroupConv(in_channels, out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return functional.avg_pool2d(self.conv(functional.relu(self.norm(features))), 2)


class P4MDenseNet(nn.Module):
    """Lifting conv > max-pool > [group dense block > transition] ... > group pool > GAP > logit."""

    def __init__(self, block_layers: list[int], growth_rate: int, initial_channels: int,
                 compression: float, dropout: float, group_pool: str):
        super().__init__()
        self.lift = LiftingConv(3, initial_channels, 3)
        layers, channels = dense_blocks(
            block_layers, growth_rate, initial_channels, compression,
            lambda channels: _GroupDenseLayer(channels, growth_rate, dropout),
            lambda channels, reduced: [_GroupTransition(channels, reduced)],
        )
        self.blocks = nn.Sequential(*layers)
        self.norm = GroupBatchNorm(channels)
        self.group_pool = group_pool
        self.head = nn.Linear(channels, 1)
        self.channels = channels

    def equivariant_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last p4m feature map (B, C*8, h, w), before group pooling."""
        features = functional.max_pool2d(self.lift(images), 2)  # (B, C0*8, H/2, W/2)
        features = self.blocks(features)  # (B, C*8, H/8, W/8) with 3 blocks
        return functional.relu(self.norm(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.equivariant_features(images)
        batch, _, height, width = features.shape
        grouped = features.reshape(batch, self.channels, GROUP_ORDER, height, width)
        pooled = grouped.amax(dim=2) if self.group_pool == "max" else grouped.mean(dim=2)  # (B, C, h, w)
        return self.head(pooled.mean(dim=(2, 3)))  # invariant (B, C) -> (B, 1) logits


@register_model("p4m-densenet", options={**DENSENET_OPTIONS, "group_pool": Option(choices=("max", "mean"))})
def build_p4m_densenet(
    growth_rate: int = 4,
    block_layers: list[int] = (3, 3, 3),
    initial_channels: int = 6,
    compression: float = 0.5,
    dropout: float = 0.0,
    group_pool: str = "max",
) -> nn.Module:
    """Rotation/flip-equivariant DenseNet with p4m group convolutions (Veeling et al. 2018).

    Channel counts are per orientation: each p4m channel is 8 ordinary ones, so growth 4 adds 32
    feature maps per layer. Needs square inputs whose side is divisible by 8 for exact equivariance.

    Args:
        growth_rate: p4m channels each dense layer adds.
        block_layers: dense layers per block (a transition with 2x2 average pool between blocks).
        initial_channels: p4m channels of the lifting convolution.
        compression: fraction of channels a transition keeps.
        dropout: dropout of whole p4m channels after each dense layer.
        group_pool: ``max`` or ``mean`` over the 8 orientations at the end.
    """
    return P4MDenseNet(list(block_layers), growth_rate, initial_channels, compression, dropout, group_pool)
