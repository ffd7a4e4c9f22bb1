"""Training concept models on ``xnn_lab.fit``: the joint loss, its objective, and a bottleneck's three regimes.

The joint loss L = L_y + lambda sum_j L_cj trains a jointly trained bottleneck and the multitask
model; ``joint_objective`` hands it to ``fit`` with its two parts as curves of the history.
``train_bottleneck`` runs the independent, sequential or joint regime of Koh et al. (2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._core.checks import check_choice, check_float, check_images, check_int, check_labels, check_tensor
from xnn_lab._core.training import History, Objective, Step, fit, predict
from xnn_lab.concepts.models import ConceptBottleneck, MultitaskCNN

BOTTLENECK_MODES = ("independent", "sequential", "joint")


def joint_targets(labels: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """Labels and concepts in one float tensor (N, 1 + k), the target ``JointLoss`` reads.

    Args:
        labels: (N,) integer labels.
        concepts: (N, k) concept values in [0, 1].
    """
    check_tensor("labels", labels, ndim=1, integral=True)
    check_tensor("concepts", concepts, ndim=2)
    if len(labels) != len(concepts):
        raise ValueError(f"concepts must have one row per label ({len(labels)}), got {len(concepts)}")
    if concepts.numel() and not bool(((concepts >= 0) & (concepts <= 1)).all()):
        raise ValueError("concepts must hold values in [0, 1] (the probability that each concept is present), "
                         f"got values from {float(concepts.min())} to {float(concepts.max())}")
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

    def parts(self, label_logits: torch.Tensor, concept_logits: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two parts of the loss: L_y and sum_j L_cj (unweighted), scalar tensors.

        Args:
            label_logits: (B, C).
            concept_logits: (B, k).
            targets: (B, 1 + k) labels and concepts, from ``joint_targets``.
        """
        C = self.num_classes
        if (label_logits.ndim != 2 or concept_logits.ndim != 2 or targets.ndim != 2
                or label_logits.shape[1] != C or concept_logits.shape[1] != targets.shape[1] - 1):
            raise ValueError(f"outputs (B, C) and (B, k) and targets (B, 1 + k) disagree with C = {C}: got "
                             f"{tuple(label_logits.shape)}, {tuple(concept_logits.shape)} and {tuple(targets.shape)}")
        label_loss = F.cross_entropy(label_logits, targets[:, 0].long())
        concept_loss = F.binary_cross_entropy_with_logits(concept_logits, targets[:, 1:], reduction="none")
        return label_loss, concept_loss.mean(0).sum()

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The joint loss of a batch.

        Args:
            outputs: (B, C + k) label and concept logits side by side.
            targets: (B, 1 + k) labels and concepts, from ``joint_targets``.

        Returns:
            a scalar tensor.
        """
        C = self.num_classes
        if outputs.ndim != 2 or targets.ndim != 2 or outputs.shape[1] - C != targets.shape[1] - 1:
            raise ValueError(f"outputs (B, C + k) and targets (B, 1 + k) disagree with C = {C}: "
                             f"got {tuple(outputs.shape)} and {tuple(targets.shape)}")
        label_loss, concept_loss = self.parts(outputs[:, :C], outputs[:, C:], targets)
        return label_loss + self.concept_weight * concept_loss


def joint_objective(model: ConceptBottleneck | MultitaskCNN, concept_weight: float = 1.0) -> Objective:
    """``fit``'s objective for training a two-headed concept model by the joint loss.

    Each batch (X, targets) with targets from ``joint_targets`` gives
    ``Step(L_y + lambda sum_j L_cj, label logits, terms={"label": L_y, "concepts": sum_j L_cj})``,
    so the history holds both parts per epoch (``history["label"]``, ``history["concepts"]``).
    The history's accuracy is NaN: the targets are not plain labels.

    Args:
        model: a ``ConceptBottleneck`` or ``MultitaskCNN`` (anything with ``heads(x)`` returning
            label logits (B, C) and concept logits (B, k), and ``num_classes``).
        concept_weight: lambda >= 0.
    """
    if not callable(getattr(model, "heads", None)) or not isinstance(getattr(model, "num_classes", None), int):
        raise TypeError(f"model must have heads(x) -> (label logits, concept logits) and num_classes "
                        f"(ConceptBottleneck, MultitaskCNN), got {type(model).__name__}")
    loss = JointLoss(model.num_classes, concept_weight)

    def objective(X: torch.Tensor, targets: torch.Tensor) -> Step:
        label_logits, concept_logits = model.heads(X)
        # Stacked as JointLoss reads them: the heads' gradients then come back as slices of one
        # tensor, and a seed trains the same weights, to the last bit, as JointLoss on stacked outputs.
        outputs = torch.cat([label_logits, concept_logits], dim=1)
        C = model.num_classes
        label_loss, concept_loss = loss.parts(outputs[:, :C], outputs[:, C:], targets)
        return Step(label_loss + loss.concept_weight * concept_loss, label_logits,
                    {"label": label_loss, "concepts": concept_loss})

    return objective


def train_bottleneck(model: ConceptBottleneck, images: torch.Tensor, labels: torch.Tensor,
                     concepts: torch.Tensor, *, mode: str, concept_weight: float = 1.0,
                     epochs: int = 10, label_epochs: int = 100, lr: float = 1e-3, label_lr: float = 1e-2,
                     batch_size: int = 64, concepts_trained: bool = False,
                     seed: int = 0, device: torch.device | None = None,
                     progress: bool = False) -> dict[str, History]:
    """Train a concept bottleneck independently, sequentially or jointly (Koh et al. 2020).

    - independent: g on (x, c) by L_c; f on the TRUE concepts (c, y) by L_y.
    - sequential: g on (x, c) by L_c; then f on g's PREDICTED concepts (sigma(g(x)), y).
    - joint: g and f together by L_y + lambda sum_j L_cj (``joint_objective``).

    Args:
        model: the bottleneck, trained in place on ``device``, and left there in eval mode.
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
        lr, batch_size, seed, device, progress: as ``xnn_lab.fit``.

    Returns:
        the ``History`` of each stage run: {"concepts": ..., "labels": ...} (no "concepts" when
        ``concepts_trained``) or {"joint": ...}, whose terms "label" and "concepts" are the two
        parts of the joint loss.
    """
    if not isinstance(model, ConceptBottleneck):
        raise TypeError(f"model must be a ConceptBottleneck, got {type(model).__name__}")
    check_choice("mode", mode, BOTTLENECK_MODES)
    if concepts_trained and mode == "joint":
        raise ValueError("concepts_trained applies to mode 'independent' or 'sequential', not 'joint'")
    check_images("images", images)
    targets = joint_targets(labels, concepts)
    check_labels("labels", labels, model.num_classes)
    if len(images) != len(labels):
        raise ValueError(f"labels must hold one label per image ({len(images)}), got {len(labels)}")
    if targets.shape[1] - 1 != model.num_concepts:
        raise ValueError(f"concepts must have {model.num_concepts} columns, got {concepts.shape[1]}")
    settings = {"lr": lr, "batch_size": batch_size, "seed": seed, "device": device, "progress": progress}
    if mode == "joint":
        return {"joint": fit(model, (images, targets), epochs=epochs, desc="joint",
                             objective=joint_objective(model, concept_weight), **settings)}
    concepts = targets[:, 1:]
    history = {}
    if not concepts_trained:
        history["concepts"] = fit(model.concept_model, (images, concepts), epochs=epochs, desc="concepts",
                                  loss_fn=nn.BCEWithLogitsLoss(), **settings)
    if mode == "independent":
        label_inputs = concepts
    else:
        label_inputs = torch.sigmoid(predict(model.concept_model, images, batch_size=256)).cpu()
    history["labels"] = fit(model.label_model, (label_inputs, labels), epochs=label_epochs, desc="labels",
                            **{**settings, "lr": label_lr, "batch_size": max(batch_size, 256)})
    model.eval()
    return history
