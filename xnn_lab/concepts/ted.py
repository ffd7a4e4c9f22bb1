"""TED (Hind et al. 2019): a label y and an explanation id e learnt as one class z = y * E + e.

``encode_ted`` and ``decode_ted`` map between (y, e) pairs and the C * E classes; a
``TEDClassifier`` trains on the classes with ``xnn_lab.fit`` and ``explain`` decodes its output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from xnn_lab._core.checks import check_images, check_int, check_tensor, input_errors
from xnn_lab.models.cnn import SmallCNN


def encode_ted(labels: torch.Tensor, explanations: torch.Tensor, num_explanations: int) -> torch.Tensor:
    """TED's cross-product class z = y * E + e of labels y and explanation ids e in [0, E).

    Args:
        labels: (N,) integer labels >= 0.
        explanations: (N,) integer explanation ids in [0, num_explanations).
        num_explanations: E.

    Returns:
        (N,) int64 classes of the (y, e) pairs.
    """
    check_int("num_explanations", num_explanations, minimum=1)
    check_tensor("labels", labels, ndim=1, integral=True)
    check_tensor("explanations", explanations, ndim=1, integral=True)
    if labels.shape != explanations.shape:
        raise ValueError(f"labels and explanations must have the same shape, got "
                         f"{tuple(labels.shape)} and {tuple(explanations.shape)}")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got a minimum of {int(labels.min())}")
    if len(explanations) and (int(explanations.min()) < 0 or int(explanations.max()) >= num_explanations):
        raise ValueError(f"explanations must lie in [0, {num_explanations}), got values from "
                         f"{int(explanations.min())} to {int(explanations.max())}")
    return labels.long() * num_explanations + explanations.long()


def decode_ted(classes: torch.Tensor, num_explanations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, e) = (z // E, z mod E): labels and explanation ids of TED classes z (N,)."""
    check_int("num_explanations", num_explanations, minimum=1)
    check_tensor("classes", classes, ndim=1, integral=True)
    if len(classes) and int(classes.min()) < 0:
        raise ValueError(f"classes must be >= 0, got a minimum of {int(classes.min())}")
    return torch.div(classes, num_explanations, rounding_mode="floor"), torch.remainder(classes, num_explanations)


class TEDExplanation(NamedTuple):
    """A TED classifier's prediction and its explanation for a batch of B images.

    Attributes:
        logits: (B, C * E) logits of the (y, e) classes z = y * E + e, what ``forward`` returns.
        labels: (B,) int64 labels y decoded from the most likely class z.
        explanations: (B,) int64 explanation ids e decoded from the same z.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    explanations: torch.Tensor


class TEDClassifier(nn.Module):
    """TED (Hind et al. 2019): one classifier over the C * E classes (y, e), decoded into both.

    Train it with ``fit`` on (x, ``encode_ted(y, e, E)``); ``explain`` returns the logits with
    the label and the explanation id of the most likely (y, e).

    Args:
        num_classes: C.
        num_explanations: E.
        in_channels, widths: as SmallCNN's.
    """

    def __init__(self, num_classes: int, num_explanations: int, in_channels: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.num_explanations = check_int("num_explanations", num_explanations, minimum=1)
        self.cnn = SmallCNN(num_classes * num_explanations, in_channels=in_channels, widths=widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C * E) of the (y, e) classes of images x (B, C, H, W)."""
        return self.cnn(x)

    def explain(self, x: torch.Tensor) -> TEDExplanation:
        """The logits of images x (B, C, H, W) with the label and explanation id they decode to.

        Runs in the model's current mode, with autograd as the caller has it (as ``forward``).

        Returns:
            a ``TEDExplanation``: logits (B, C * E), labels (B,) and explanations (B,), both decoded
            from the argmax z of the logits.
        """
        check_images("x", x)
        with input_errors("x", x):
            logits = self.cnn(x)
        labels, explanations = decode_ted(logits.argmax(1), self.num_explanations)
        return TEDExplanation(logits, labels, explanations)
