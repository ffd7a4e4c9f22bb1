"""Models from the lecture. What explains a model lives outside this package."""

from xnn_lab.models.cnn import SmallCNN
from xnn_lab.models.concepts import ConceptBottleneck, MultitaskCNN, TEDClassifier
from xnn_lab.models.mlp import MLP
from xnn_lab.models.protopnet import ProtoPNet
from xnn_lab.models.senn import SENN, SENNOutput

__all__ = ["ConceptBottleneck", "MLP", "MultitaskCNN", "ProtoPNet", "SENN", "SENNOutput", "SmallCNN", "TEDClassifier"]
