"""``simple-cnn``: the default model, a small VGG-style CNN with batch-norm and global average pooling.

Layout with the defaults (width 32, depth 1), for a 96x96 patch::

    conv-bn-act 32    (96x96)   > max-pool 2
    conv-bn-act 64    (48x48)   > max-pool 2
    conv-bn-act 128   (24x24)   > max-pool 2
    conv-bn-act 256   (12x12)
    global average pool > dropout > linear 256 -> 1 (logit)

About 0.39 M parameters and 0.27 GFLOPs per patch. Why this small: on the project's 2-core AVX2 CPU
convolutions run at roughly 20 GFLOP/s, so training throughput is set almost entirely by FLOPs (the
0.61 GFLOPs ``depth=[1, 1, 2, 2]`` variant trains at ~8 images/s there, this one at ~2x that), and bf16
autocast is emulated (no AVX512-BF16/AMX), i.e. several times SLOWER than fp32 on such a CPU. More depth
where maps are small is one option away: ``depth: [1, 1, 2, 2]``. Global average pooling makes the
model fully convolutional: any input >= 8 px works.
"""

from __future__ import annotations

import torch
from torch import nn

from pcamlab.config_ranges import Range
from pcamlab.models.factory import register_model
from pcamlab.models.layers import ConvBlock, initialise
from pcamlab.models.options import ACTIVATION, DROPOUT, INIT, POSITIVE, Option

__all__ = ["SimpleCNN", "build_simple_cnn"]


class SimpleCNN(nn.Module):
    """Stages of conv-bn-act blocks with max-pool between them, global average pool, linear logit."""

    def __init__(self, widths: list[int], depths: list[int], dropout: float, activation: str):
        super().__init__()
        stages: list[nn.Module] = []
        in_channels = 3
        for index, (width, depth) in enumerate(zip(widths, depths)):
            blocks: list[nn.Module] = [nn.MaxPool2d(2)] if index > 0 else []
            for _ in range(depth):
                blocks.append(ConvBlock(in_channels, width, 3, activation=activation))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, 8*width, H/8, W/8)
        pooled = self.pool(features).flatten(1)  # (B, 8*width)
        return self.head(self.dropout(pooled))  # (B, 1) logits


@register_model("simple-cnn", options={
    "width": POSITIVE,
    "depth": Option(range=Range(1), length=(4, 4)),  # one integer for every stage, or one per stage
    "dropout": DROPOUT,
    "activation": ACTIVATION,
    "init": INIT,
})
def build_simple_cnn(
    width: int = 32,
    depth: int | list[int] = 1,
    dropout: float = 0.3,
    activation: str = "relu",
    init: str = "kaiming",
) -> nn.Module:
    """Default CNN (width 16 in the default recipe): 4 stages of conv-bn-act (width x 1-2-4-8), max-pool, GAP, logit.

    Args:
        width: channels of the first stage; stage ``i`` has ``width * 2**i``.
        depth: conv blocks per stage, one integer for all 4 stages or a list of 4.
        dropout: dropout before the logit layer.
        activation: activation after each batch-norm (see ``pcamlab.models.layers.ACTIVATIONS``).
        init: weight initialisation (default | kaiming | xavier | orthogonal).
    """
    depths = [depth] * 4 if isinstance(depth, int) else list(depth)
    widths = [width * 2**index for index in range(4)]
    return initialise(SimpleCNN(widths, depths, dropout, activation), init)
