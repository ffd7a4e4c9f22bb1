"""The black boxes the book explains: a small CNN with a global-average-pooling head, a VGG-style
CNN without one, an MLP, and torchvision classifiers whose weights are loaded from disk only.

The self-explaining models live with their methods (``xnn_lab.protopnet``, ``xnn_lab.senn``,
``xnn_lab.concepts``).
"""

from xnn_lab.models.cnn import SmallCNN
from xnn_lab.models.mlp import MLP
from xnn_lab.models.plain import PlainCNN
from xnn_lab.models.pretrained import (GRADCAM_LAYERS, IMAGENET_MEAN, IMAGENET_STD, imagenet_image,
                                       imagenet_weights_path, torchvision_model)

__all__ = ["GRADCAM_LAYERS", "IMAGENET_MEAN", "IMAGENET_STD", "MLP", "PlainCNN", "SmallCNN", "imagenet_image",
           "imagenet_weights_path", "torchvision_model"]
