"""The black boxes the book explains: a small CNN with a global-average-pooling head, and an MLP.

The self-explaining models live with their methods (``xnn_lab.protopnet``, ``xnn_lab.senn``,
``xnn_lab.concepts``).
"""

from xnn_lab.models.cnn import SmallCNN
from xnn_lab.models.mlp import MLP

__all__ = ["MLP", "SmallCNN"]
