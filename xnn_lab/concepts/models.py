"""Concept models: a concept bottleneck, a multitask CNN, and interventions on a bottleneck's concepts.

A concept bottleneck {Koh et al. 2020} predicts k concepts c_hat = sigma(g(x)) and the label
from them alone, y_hat = f(c_hat); a multitask model {Caruana 1997} predicts both from one
shared trunk. Both are self-explaining: ``forward`` gives the label logits, ``explain`` the label
logits with the predicted concepts (``ConceptExplanation``). How they are trained lives in
``xnn_lab.concepts.train``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from xnn_lab._core.checks import check_images, check_int, check_tensor, input_errors
from xnn_lab._core.state import model_device, model_state
from xnn_lab.models.cnn import SmallCNN


class ConceptExplanation(NamedTuple):
    """A concept model's prediction and its evidence for a batch of B images, C labels, k concepts.

    Attributes:
        logits: label logits (B, C), what ``forward`` returns.
        concept_logits: concept logits (B, k); concept j is predicted present where its logit > 0.
        concepts: predicted concept probabilities c_hat = sigma(concept_logits), (B, k) in [0, 1].
    """

    logits: torch.Tensor
    concept_logits: torch.Tensor
    concepts: torch.Tensor


def _trunk(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """SmallCNN's features and pooling, flattened: images (B, C, H, W) -> features (B, widths[-1])."""
    # The classifier of this SmallCNN is dropped: the heads that replace it belong to the caller.
    cnn = SmallCNN(2, in_channels=in_channels, widths=widths)
    return nn.Sequential(cnn.features, cnn.pool, nn.Flatten(1))


class ConceptBottleneck(nn.Module):
    """y_hat = f(c_hat), c_hat = sigma(g(x)): the label sees the image only through k concepts.

    g is a SmallCNN with k outputs (concept logits); f is a linear layer (or an MLP when
    ``label_hidden`` is given) on concept probabilities in [0, 1], so true 0/1 concepts can
    replace predicted ones at test time (``intervene``).

    Args:
        num_classes: number of labels C.
        num_concepts: number of binary concepts k.
        in_channels: image channels.
        widths: channel widths of g's conv blocks.
        label_hidden: hidden widths of f; empty gives a linear f.
    """

    def __init__(self, num_classes: int, num_concepts: int, in_channels: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64, 64), label_hidden: tuple[int, ...] = ()):
        super().__init__()
        check_int("num_classes", num_classes, minimum=2)
        check_int("num_concepts", num_concepts, minimum=1)
        self.num_classes, self.num_concepts = num_classes, num_concepts
        self.concept_model = SmallCNN(num_concepts, in_channels=in_channels, widths=widths)
        layers: list[nn.Module] = []
        width = num_concepts
        for i, h in enumerate(label_hidden):
            check_int(f"label_hidden[{i}]", h, minimum=1)
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.label_model = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def concept_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Concept logits g(x) (B, k) of images x (B, C, H, W)."""
        return self.concept_model(x)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label logits f(sigma(g(x))) (B, C) and concept logits g(x) (B, k) from one run of g.

        What the joint loss trains (``joint_objective``); ``explain`` gives the same, named.
        """
        concept_logits = self.concept_logits(x)
        return self.label_model(torch.sigmoid(concept_logits)), concept_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Label logits f(sigma(g(x))) (B, num_classes) of images x (B, C, H, W)."""
        return self.label_model(torch.sigmoid(self.concept_logits(x)))

    def explain(self, x: torch.Tensor) -> ConceptExplanation:
        """The label logits of images x (B, C, H, W) with the concepts they were computed from.

        Runs in the model's current mode, with autograd as the caller has it (as ``forward``).

        Returns:
            a ``ConceptExplanation``: logits (B, C), concept_logits g(x) (B, k) and concepts
            sigma(g(x)) (B, k), the only input of f.
        """
        check_images("x", x)
        with input_errors("x", x):
            logits, concept_logits = self.heads(x)
        return ConceptExplanation(logits, concept_logits, torch.sigmoid(concept_logits))

    @torch.no_grad()
    def intervene(self, x: torch.Tensor, true_concepts: torch.Tensor, which) -> torch.Tensor:
        """Label logits after replacing the predicted concepts ``which`` by the true ones.

        c_tilde_j = c_j for j in ``which``, sigma(g(x))_j otherwise; returns f(c_tilde), computed
        in eval mode on the model's device (each module's own mode is restored afterwards).

        Args:
            x: images (B, C, H, W).
            true_concepts: (B, k) concept values in [0, 1].
            which: the concepts to replace: a (k,) or (B, k) bool mask, or a sequence / 1-D
                integer tensor of concept indices in [0, k).

        Returns:
            label logits (B, num_classes), on x's device.
        """
        self._check_concepts(x, true_concepts)
        return self._corrected(x, true_concepts, concept_mask(which, self.num_concepts, len(x)))

    @torch.no_grad()
    def intervention_curve(self, x: torch.Tensor, true_concepts: torch.Tensor, order) -> torch.Tensor:
        """Label logits after correcting the first n concepts of ``order``, for n = 0, ..., len(order).

        Row n equals ``intervene(x, true_concepts, order[:n])``; g runs once for all rows.

        Args:
            x: images (B, C, H, W).
            true_concepts: (B, k) concept values in [0, 1].
            order: distinct concept indices in [0, k), corrected in this order.

        Returns:
            label logits (len(order) + 1, B, num_classes), on x's device.
        """
        order = torch.as_tensor(list(order) if isinstance(order, (list, tuple, range)) else order)
        check_tensor("order", order, ndim=1, integral=True)
        if len(set(order.tolist())) != len(order):
            raise ValueError(f"order must not repeat a concept, got {order.tolist()}")
        k = self.num_concepts
        if len(order) and (int(order.min()) < 0 or int(order.max()) >= k):
            raise ValueError(f"order must hold concept indices in [0, {k}), got {order.tolist()}")
        order = order.cpu()  # it indexes the CPU tensor rank below
        self._check_concepts(x, true_concepts)
        # masks[n, j]: concept j is among the first n of order (concepts not in order never are).
        rank = torch.full((k,), len(order) + 1)
        rank[order] = torch.arange(len(order))
        masks = rank[None, :] < torch.arange(len(order) + 1)[:, None]
        return self._corrected(x, true_concepts, masks[:, None, :])

    def _corrected(self, x: torch.Tensor, true_concepts: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """f(where(masks, c, sigma(g(x)))) in eval mode on the model's device, returned on x's device;
        masks (..., B, k) broadcast against the concepts (B, k)."""
        device = model_device(self, x.device)
        with model_state(self):
            predicted = torch.sigmoid(self.concept_logits(x.to(device)))
            true_concepts = true_concepts.to(device, predicted.dtype)
            return self.label_model(torch.where(masks.to(device), true_concepts, predicted)).to(x.device)

    def _check_concepts(self, x: torch.Tensor, true_concepts: torch.Tensor) -> None:
        """Check images x (B, C, H, W) and true concepts (B, k) in [0, 1]."""
        check_images("x", x)
        check_tensor("true_concepts", true_concepts, ndim=2)
        k = self.num_concepts
        if true_concepts.shape != (len(x), k):
            raise ValueError(f"true_concepts must have shape (B, k) = ({len(x)}, {k}), "
                             f"got {tuple(true_concepts.shape)}")
        if not bool(((true_concepts >= 0) & (true_concepts <= 1)).all()):
            raise ValueError("true_concepts must hold values in [0, 1], got values from "
                             f"{float(true_concepts.min())} to {float(true_concepts.max())}")


def concept_mask(which, num_concepts: int, batch_size: int) -> torch.Tensor:
    """A (B, k) bool mask from ``which``: a (k,) or (B, k) bool mask, or concept indices in [0, k)."""
    if isinstance(which, (list, tuple, range)):
        which = torch.as_tensor(list(which), dtype=torch.long)
    if not isinstance(which, torch.Tensor):
        raise TypeError(f"which must be a bool mask, a sequence or a tensor of concept indices, "
                        f"got {type(which).__name__}")
    if which.dtype == torch.bool:
        if which.shape not in ((num_concepts,), (batch_size, num_concepts)):
            raise ValueError(f"which, as a bool mask, must have shape ({num_concepts},) or "
                             f"({batch_size}, {num_concepts}), got {tuple(which.shape)}")
        return which.expand(batch_size, num_concepts)
    check_tensor("which", which, ndim=1, integral=True)
    which = which.cpu()
    if len(which) and (int(which.min()) < 0 or int(which.max()) >= num_concepts):
        raise ValueError(f"which must hold concept indices in [0, {num_concepts}), got {which.tolist()}")
    mask = torch.zeros(num_concepts, dtype=torch.bool)
    mask[which] = True
    return mask.expand(batch_size, num_concepts)


class MultitaskCNN(nn.Module):
    """A shared trunk with two heads: label logits (B, C) and concept logits (B, k).

    Unlike a bottleneck, the label head does not read the concepts: they are a second task that
    shapes the shared features, not a cause of the prediction.

    Args:
        num_classes: number of labels C.
        num_concepts: number of binary concepts k.
        in_channels: image channels.
        widths: channel widths of the trunk's conv blocks (as SmallCNN's).
    """

    def __init__(self, num_classes: int, num_concepts: int, in_channels: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        check_int("num_classes", num_classes, minimum=2)
        check_int("num_concepts", num_concepts, minimum=1)
        self.num_classes, self.num_concepts = num_classes, num_concepts
        self.trunk = _trunk(in_channels, widths)
        self.label_head = nn.Linear(widths[-1], num_classes)
        self.concept_head = nn.Linear(widths[-1], num_concepts)

    def concept_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Concept logits (B, k) of images x (B, C, H, W)."""
        return self.concept_head(self.trunk(x))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label logits (B, C) and concept logits (B, k) from one run of the trunk.

        What the joint loss trains (``joint_objective``); ``explain`` gives the same, named.
        """
        features = self.trunk(x)
        return self.label_head(features), self.concept_head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Label logits (B, num_classes) of images x (B, C, H, W)."""
        return self.label_head(self.trunk(x))

    def explain(self, x: torch.Tensor) -> ConceptExplanation:
        """The label logits of images x (B, C, H, W) with the concepts predicted beside them.

        Runs in the model's current mode, with autograd as the caller has it (as ``forward``).
        The concepts are a parallel output: the label head does not read them.

        Returns:
            a ``ConceptExplanation``: logits (B, C), concept_logits (B, k), concepts (B, k) in [0, 1].
        """
        check_images("x", x)
        with input_errors("x", x):
            logits, concept_logits = self.heads(x)
        return ConceptExplanation(logits, concept_logits, torch.sigmoid(concept_logits))
