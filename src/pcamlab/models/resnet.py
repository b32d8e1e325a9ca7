"""``resnet18`` / ``resnet34`` (BasicBlocks) and ``resnet50`` (Bottlenecks): ResNets (He et al. 2016) for 96x96 patches.

Changes from the ImageNet versions: a single 3x3 stem convolution (stride 1 by default) instead of
the 7x7 stride-2 one, and no initial max-pool unless ``stem_pool`` is set, so the four stages see
96, 48, 24 and 12 px maps. ``stem_kernel=7, stem_stride=2, stem_pool=True`` is ImageNet's stem, whose
weights then load too. ``width`` scales every stage (64 = the standard widths 64-128-256-512; a
Bottleneck stage outputs 4x its width). Module names follow torchvision's block layout (``conv1``,
``bn1``, ..., ``shortcut`` for ``downsample``), so ``pcamlab.models.transfer`` maps torchvision, timm
and Keras ResNet weights onto them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pcamlab.models.factory import register_model
from pcamlab.models.layers import conv2d, initialise, make_activation
from pcamlab.models.options import ACTIVATION, DROPOUT, FLAG, INIT, POSITIVE, Option

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "build_resnet18", "build_resnet34", "build_resnet50"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn with an identity (or 1x1 conv-bn projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = make_activation(activation)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv2d(in_channels, out_channels, 1, stride=stride, bias=False),  # strided 1x1: see conv2d
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(features)))))
        return self.act2(residual + self.shortcut(features))


class Bottleneck(nn.Module):
    """1x1 reduce > 3x3 (strided, as torchvision's ResNet v1.5) > 1x1 expand (x4), each with batch-norm; shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, activation: str):
        super().__init__()
        out_channels = width * self.expansion
        self.shortcut = nn.Identity()  # first, so module order matches Keras' layer names (_0_ before _1_)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv2d(in_channels, out_channels, 1, stride=stride, bias=False),  # strided 1x1: see conv2d
                nn.BatchNorm2d(out_channels),
            )
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = make_activation(activation)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act3 = make_activation(activation)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        residual = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(features))))))
        return self.act3(self.bn3(self.conv3(residual)) + self.shortcut(features))


class ResNet(nn.Module):
    """Stem > 4 stages of blocks (stride 1, 2, 2, 2) > global average pool > dropout > logit."""

    def __init__(self, blocks: list[int], width: int, stem_stride: int, stem_pool: bool,
                 dropout: float, activation: str, block: type[nn.Module] = BasicBlock, stem_kernel: int = 3):
        super().__init__()
        stem: list[nn.Module] = [
            nn.Conv2d(3, width, stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False),
            nn.BatchNorm2d(width),
            make_activation(activation),
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        in_channels = width
        expansion = getattr(block, "expansion", 1)
        for index, count in enumerate(blocks):
            stage_width = width * 2**index
            stride = 1 if index == 0 else 2
            layers = []
            for number in range(count):
                layers.append(block(in_channels, stage_width, stride if number == 0 else 1, activation))
                in_channels = stage_width * expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_channels, 1)
        for module in self.modules():  # zero-init the last BN of each block: blocks start as identity
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)
            elif isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(images))  # (B, 8*width*expansion, 12, 12) for 96x96
        pooled = self.pool(features).flatten(1)  # (B, 8*width*expansion)
        return self.head(self.dropout(pooled))  # (B, 1) logits


def _build_resnet(blocks: list[int], width: int, stem_stride: int, stem_pool: bool, dropout: float,
                  activation: str, init: str, block: type[nn.Module] = BasicBlock, stem_kernel: int = 3) -> nn.Module:
    # initialise() touches only conv/linear weights: the zeroed last BN of each block stays zero
    return initialise(ResNet(blocks, width, stem_stride, stem_pool, dropout, activation, block, stem_kernel), init)


# The options every ResNet has (resnet50 adds stem_kernel).
RESNET_OPTIONS: dict[str, Option] = {
    "width": POSITIVE,
    "stem_stride": Option(choices=(1, 2)),
    "stem_pool": FLAG,
    "dropout": DROPOUT,
    "activation": ACTIVATION,
    "init": INIT,
}
_ARGS = """
    Args:
        width: channels of the first stage (stages have width x 1, 2, 4, 8).
        stem_stride: stride of the 3x3 stem (2 = 4x fewer FLOPs, coarser first features).
        stem_pool: add ImageNet's 3x3 stride-2 max-pool after the stem.
        dropout: dropout before the logit layer.
        activation: activation inside the blocks.
        init: weight initialisation (default | kaiming | xavier | orthogonal).
"""


def _basic_resnet(name: str, title: str, blocks: list[int]) -> Callable[..., nn.Module]:
    """Register the BasicBlock ResNet ``name`` with ``blocks`` blocks per stage (resnet18 and resnet34
    differ only there)."""

    def build(width: int = 64, stem_stride: int = 1, stem_pool: bool = False, dropout: float = 0.0,
              activation: str = "relu", init: str = "kaiming") -> nn.Module:
        return _build_resnet(blocks, width, stem_stride, stem_pool, dropout, activation, init)

    layout = "-".join(str(count) for count in blocks)
    build.__doc__ = f"{title} (BasicBlocks {layout}) with a 3x3 stem for 96x96 patches; width 64 = standard.\n{_ARGS}"
    build.__name__ = build.__qualname__ = f"build_{name}"
    return register_model(name, options=RESNET_OPTIONS)(build)


build_resnet18 = _basic_resnet("resnet18", "ResNet-18", [2, 2, 2, 2])
build_resnet34 = _basic_resnet("resnet34", "ResNet-34", [3, 4, 6, 3])


@register_model("resnet50", options={**RESNET_OPTIONS, "stem_kernel": Option(choices=(3, 7))})
def build_resnet50(width: int = 64, stem_kernel: int = 3, stem_stride: int = 1, stem_pool: bool = False,
                   dropout: float = 0.0, activation: str = "relu", init: str = "kaiming") -> nn.Module:
    """ResNet-50 (Bottlenecks 3-4-6-3, 4x expansion) for ImageNet transfer; 3x3 stem for 96x96 patches.

    Args:
        width: bottleneck channels of the first stage (64 = standard; the stages output 4 x width x 1, 2, 4, 8).
        stem_kernel: 3 (default) or 7 (ImageNet's stem, so its conv1 loads; use with stem_stride 2, stem_pool).
        stem_stride: stride of the stem convolution.
        stem_pool: add ImageNet's 3x3 stride-2 max-pool after the stem.
        dropout: dropout before the logit layer.
        activation: activation inside the blocks.
        init: weight initialisation (default | kaiming | xavier | orthogonal).
    """
    return _build_resnet([3, 4, 6, 3], width, stem_stride, stem_pool, dropout, activation, init, Bottleneck, stem_kernel)
