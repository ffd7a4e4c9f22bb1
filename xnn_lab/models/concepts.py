"""Multi-task models for explainability: concept bottlenecks, a multitask CNN and TED.

A concept bottleneck {Koh et al. 2020} predicts k concepts c_hat = sigma(g(x)) and the label
from them alone, y_hat = f(c_hat); a multitask model {Caruana 1997} predicts both from one
shared trunk; TED {Hind et al. 2019} learns the label y and an explanation id e as one class of
the cross product (y, e). Training follows ``xnn_lab.train.fit``; the joint loss
L_y + lambda sum_j L_cj is ``JointLoss`` on the stacked outputs of ``StackedOutputs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._checks import check_choice, check_float, check_int, check_tensor
from xnn_lab.models.cnn import SmallCNN
from xnn_lab.train import History, fit, predict

BOTTLENECK_MODES = ("independent", "sequential", "joint")


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Label logits f(sigma(g(x))) (B, num_classes) of images x (B, C, H, W)."""
        return self.label_model(torch.sigmoid(self.concept_logits(x)))

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """Label logits and concept logits side by side, (B, num_classes + k): what ``JointLoss`` takes."""
        concept_logits = self.concept_logits(x)
        return torch.cat([self.label_model(torch.sigmoid(concept_logits)), concept_logits], dim=1)

    @torch.no_grad()
    def intervene(self, x: torch.Tensor, true_concepts: torch.Tensor, which) -> torch.Tensor:
        """Label logits after replacing the predicted concepts ``which`` by the true ones.

        c_tilde_j = c_j for j in ``which``, sigma(g(x))_j otherwise; returns f(c_tilde).

        Args:
            x: images (B, C, H, W).
            true_concepts: (B, k) concept values in [0, 1].
            which: the concepts to replace: a (k,) or (B, k) bool mask, or a sequence / 1-D
                integer tensor of concept indices in [0, k).

        Returns:
            label logits (B, num_classes), on x's device.
        """
        true_concepts, predicted = self._true_and_predicted(x, true_concepts)
        mask = concept_mask(which, self.num_concepts, len(x)).to(x.device)
        return self.label_model(torch.where(mask, true_concepts, predicted))

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
        true_concepts, predicted = self._true_and_predicted(x, true_concepts)
        # masks[n, j]: concept j is among the first n of order (concepts not in order never are).
        rank = torch.full((k,), len(order) + 1)
        rank[order] = torch.arange(len(order))
        masks = rank[None, :] < torch.arange(len(order) + 1)[:, None]
        masks = masks.to(x.device)[:, None, :]
        return self.label_model(torch.where(masks, true_concepts, predicted))

    def _true_and_predicted(self, x: torch.Tensor, true_concepts: torch.Tensor):
        """Checked true concepts (B, k) as float32 on x's device, and sigma(g(x)) (B, k) in eval mode."""
        check_tensor("x", x, ndim=4, floating=True)
        check_tensor("true_concepts", true_concepts, ndim=2)
        k = self.num_concepts
        if true_concepts.shape != (len(x), k):
            raise ValueError(f"true_concepts must have shape (B, k) = ({len(x)}, {k}), "
                             f"got {tuple(true_concepts.shape)}")
        true_concepts = true_concepts.to(x.device, torch.float32)
        if not bool(((true_concepts >= 0) & (true_concepts <= 1)).all()):
            raise ValueError("true_concepts must hold values in [0, 1], got values from "
                             f"{float(true_concepts.min())} to {float(true_concepts.max())}")
        was_training = self.training
        self.eval()
        try:
            return true_concepts, torch.sigmoid(self.concept_logits(x))
        finally:
            self.train(was_training)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Label logits (B, num_classes) of images x (B, C, H, W)."""
        return self.label_head(self.trunk(x))

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """Label logits and concept logits side by side, (B, num_classes + k): what ``JointLoss`` takes."""
        features = self.trunk(x)
        return torch.cat([self.label_head(features), self.concept_head(features)], dim=1)


class StackedOutputs(nn.Module):
    """A view of a two-task model whose forward is its ``stacked`` output, so ``fit`` can train it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not callable(getattr(model, "stacked", None)):
            raise TypeError(f"model must have a stacked(x) method (ConceptBottleneck, MultitaskCNN), "
                            f"got {type(model).__name__}")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's ``stacked(x)``, (B, C + k)."""
        return self.model.stacked(x)


def joint_targets(labels: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """Labels and concepts in one float tensor (N, 1 + k), the target ``JointLoss`` reads.

    Args:
        labels: (N,) integer labels.
        concepts: (N, k) concept values in [0, 1].
    """
    check_tensor("labels", labels, ndim=1, integral=True)
    check_tensor("concepts", concepts, ndim=2)
    if len(labels) != len(concepts):
        raise ValueError(f"labels and concepts must have the same length, got {len(labels)} and {len(concepts)}")
    return torch.cat([labels[:, None].to(torch.float32), concepts.to(torch.float32)], dim=1)


class JointLoss(nn.Module):
    """L = L_y + lambda sum_j L_cj: cross-entropy of the label plus lambda times the summed
    binary cross-entropies of the k concepts, each averaged over the batch.

    Args:
        num_classes: C; the first C output columns are label logits, the rest concept logits.
        concept_weight: lambda >= 0.
    """

    def __init__(self, num_classes: int, concept_weight: float = 1.0):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.concept_weight = check_float("concept_weight", concept_weight, minimum=0.0)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The joint loss of a batch.

        Args:
            outputs: (B, C + k) label and concept logits, from ``stacked``.
            targets: (B, 1 + k) labels and concepts, from ``joint_targets``.

        Returns:
            a scalar tensor.
        """
        C = self.num_classes
        if outputs.ndim != 2 or targets.ndim != 2 or outputs.shape[1] - C != targets.shape[1] - 1:
            raise ValueError(f"outputs (B, C + k) and targets (B, 1 + k) disagree with C = {C}: "
                             f"got {tuple(outputs.shape)} and {tuple(targets.shape)}")
        label_loss = F.cross_entropy(outputs[:, :C], targets[:, 0].long())
        concept_loss = F.binary_cross_entropy_with_logits(outputs[:, C:], targets[:, 1:], reduction="none")
        return label_loss + self.concept_weight * concept_loss.mean(0).sum()


def train_bottleneck(model: ConceptBottleneck, images: torch.Tensor, labels: torch.Tensor,
                     concepts: torch.Tensor, *, mode: str, concept_weight: float = 1.0,
                     epochs: int = 10, label_epochs: int = 100, lr: float = 1e-3, label_lr: float = 1e-2,
                     batch_size: int = 64, concepts_trained: bool = False,
                     seed: int = 0, device: torch.device | None = None,
                     progress: bool = False) -> dict[str, History]:
    """Train a concept bottleneck independently, sequentially or jointly (Koh et al. 2020).

    - independent: g on (x, c) by L_c; f on the TRUE concepts (c, y) by L_y.
    - sequential: g on (x, c) by L_c; then f on g's PREDICTED concepts (sigma(g(x)), y).
    - joint: g and f together by L_y + lambda sum_j L_cj (``JointLoss``).

    Args:
        model: the bottleneck, trained in place.
        images: (N, C, H, W) floats.
        labels: (N,) integer labels.
        concepts: (N, k) true concepts in [0, 1].
        mode: "independent", "sequential" or "joint".
        concept_weight: lambda of the joint loss.
        epochs: epochs of g (or of the joint model).
        label_epochs: epochs of f alone (independent, sequential); f is small, so these are cheap.
        label_lr: learning rate of f alone.
        concepts_trained: skip g's stage of an independent or sequential run because g is trained
            already (both modes train g the same way, so one g serves both).
        lr, batch_size, seed, device, progress: as ``xnn_lab.train.fit``.

    Returns:
        the ``History`` of each stage run: {"concepts": ..., "labels": ...} (no "concepts" when
        ``concepts_trained``) or {"joint": ...}.
    """
    if not isinstance(model, ConceptBottleneck):
        raise TypeError(f"model must be a ConceptBottleneck, got {type(model).__name__}")
    check_choice("mode", mode, BOTTLENECK_MODES)
    if concepts_trained and mode == "joint":
        raise ValueError("concepts_trained applies to mode 'independent' or 'sequential', not 'joint'")
    check_tensor("images", images, ndim=4, floating=True)
    targets = joint_targets(labels, concepts)
    if targets.shape[1] - 1 != model.num_concepts:
        raise ValueError(f"concepts must have {model.num_concepts} columns, got {concepts.shape[1]}")
    settings = {"lr": lr, "batch_size": batch_size, "seed": seed, "device": device, "progress": progress}
    if mode == "joint":
        return {"joint": fit(StackedOutputs(model), (images, targets), epochs=epochs,
                             loss_fn=JointLoss(model.num_classes, concept_weight), **settings)}
    concepts = targets[:, 1:]
    history = {}
    if not concepts_trained:
        history["concepts"] = fit(model.concept_model, (images, concepts), epochs=epochs,
                                  loss_fn=nn.BCEWithLogitsLoss(), **settings)
    if mode == "independent":
        label_inputs = concepts
    else:
        label_inputs = torch.sigmoid(predict(model.concept_model, images, batch_size=256)).cpu()
    history["labels"] = fit(model.label_model, (label_inputs, labels), epochs=label_epochs,
                            **{**settings, "lr": label_lr, "batch_size": max(batch_size, 256)})
    model.eval()
    return history


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


class TEDClassifier(nn.Module):
    """TED (Hind et al. 2019): one classifier over the C * E classes (y, e), decoded into both.

    Train it with ``fit`` on (x, ``encode_ted(y, e, E)``); ``explain_predict`` returns the label
    and the explanation id of the most likely (y, e).

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

    @torch.no_grad()
    def explain_predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (B,) and explanation ids (B,) decoded from the most likely (y, e) class."""
        return decode_ted(predict(self, x).argmax(1), self.num_explanations)
