"""A VGG-style CNN without a global-average-pooling head: the kind of network CAM cannot explain."""

from __future__ import annotations

import torch
from torch import nn

from xnn_lab._core.checks import check_int, check_tensor
from xnn_lab.models.cnn import _conv_blocks


class PlainCNN(nn.Module):
    """Conv blocks -> max pooling -> flatten -> fully connected layers, as in VGG.

    Each block is conv3x3 -> batch norm -> ReLU, then 2x2 max pooling (none after the last
    block). ``features`` ends with the last ReLU: its output A (B, K, h, w), h = w = size / 2^(L-1)
    for L blocks, is the layer Grad-CAM explains. The head is ``pool`` (2x2 max pooling), then
    ``classifier``: flatten -> Linear -> ReLU -> Linear. The class score depends on *where* a
    feature fires, not only on its mean, so there is no weight per channel for CAM to read.

    Args:
        num_classes: number of output classes.
        in_channels: image channels (3 for RGB).
        widths: output channels of each block; K = widths[-1].
        image_size: side of the (square) input images; must be divisible by 2^L.
        hidden: width of the hidden fully connected layer.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 32),
                 image_size: int = 64, hidden: int = 64):
        super().__init__()
        check_int("num_classes", num_classes, minimum=2)
        check_int("hidden", hidden, minimum=1)
        self.features = _conv_blocks(in_channels, widths)
        check_int("image_size", image_size, minimum=1)
        if image_size % 2 ** len(widths):
            raise ValueError(f"image_size must be divisible by 2^{len(widths)} = {2 ** len(widths)} (one 2x2 "
                             f"pooling per block), got {image_size}")
        self.config = {"num_classes": num_classes, "in_channels": in_channels, "widths": list(widths),
                       "image_size": image_size, "hidden": hidden}
        self.pool = nn.MaxPool2d(2)
        side = image_size // 2 ** len(widths)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * side * side, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))
        self.in_channels = in_channels
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, num_classes) for images x (B, C, image_size, image_size)."""
        check_tensor("x", x, ndim=4, floating=True)
        if x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"x must have shape (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(x)))
