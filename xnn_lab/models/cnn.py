"""A small CNN whose head is global average pooling + linear: the architecture CAM needs."""

from __future__ import annotations

import torch
from torch import nn

from xnn_lab._core.checks import check_int, check_tensor


def _conv_blocks(in_channels: int, widths) -> nn.Sequential:
    """conv3x3 -> batch norm -> ReLU per entry of ``widths``, 2x2 max pooling between blocks (none
    after the last): the features of :class:`SmallCNN` and :class:`~xnn_lab.models.PlainCNN`."""
    check_int("in_channels", in_channels, minimum=1)
    if not isinstance(widths, (tuple, list)) or not widths:
        raise TypeError(f"widths must be a non-empty tuple of channel counts, got {widths!r}")
    for i, w in enumerate(widths):
        check_int(f"widths[{i}]", w, minimum=1)
    layers: list[nn.Module] = []
    channels = in_channels
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv blocks -> global average pooling -> linear.

    Each block is conv3x3 -> batch norm -> ReLU, then 2x2 max pooling (none after the last
    block, so a 64x64 image leaves an 8x8 feature map for CAM with the default widths). ``features`` ends with
    the last ReLU: its output A (B, K, h, w) is the map CAM and Grad-CAM explain, and the class
    score is y^c = sum_k w_k^c mean_ij A^k_ij + b^c.

    Args:
        num_classes: number of output classes.
        in_channels: image channels (3 for RGB).
        widths: output channels of each block; K = widths[-1].
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        check_int("num_classes", num_classes, minimum=2)
        self.features = _conv_blocks(in_channels, widths)
        self.config = {"num_classes": num_classes, "in_channels": in_channels, "widths": list(widths)}
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, num_classes) for images x (B, C, H, W)."""
        check_tensor("x", x, ndim=4, floating=True)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(x)).flatten(1))
