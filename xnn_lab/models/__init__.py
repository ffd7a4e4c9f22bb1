"""Models from the lecture. What explains a model lives outside this package."""

from xnn_lab.models.cnn import SmallCNN
from xnn_lab.models.mlp import MLP

__all__ = ["MLP", "SmallCNN"]
