r"""Training a ProtoPNet: the slide's loss and the stages of Chen et al. (2019).

The loss is

.. math:: \frac{1}{n} \sum_{i=1}^n \text{CrsEnt}(h \circ g_{\mathbf{p}} \circ f(\mathbf{x}_i), \mathbf{y}_i)
   + \lambda_1 \text{Clst} + \lambda_2 \text{Sep} + \lambda_3 \sum_{c,\, j: \mathbf{p}_j \notin \mathbf{P}_c} |W_{cj}|,

with :math:`\text{Clst}` the mean over examples of the squared distance from the nearest prototype
of the example's class to its nearest patch, and :math:`\text{Sep}` minus the same over the
prototypes of the other classes. The stages differ in what they train:

- ``"warm_up"``: the add-on layers and the prototypes; the backbone is frozen (in eval mode);
- ``"joint"``: the backbone, the add-on layers and the prototypes; the last layer stays fixed;
- push (:func:`xnn_lab.protopnet.push_prototypes`): each prototype becomes a training patch;
- ``"last_layer"``: the last layer only; with the rest fixed, the loss is cross-entropy plus the
  L1 term, a convex problem. The softmax does not change when all the weights of one prototype
  (a column of :math:`W`) move by the same amount, so along those directions only the L1 term
  acts, with a gradient of :math:`\lambda_3` per weight: too small for a stochastic optimiser to
  follow in a few hundred steps. Before every step the stage therefore minimises the loss exactly
  along them: each column moves so that the median of its wrong-class weights is 0, which
  lowers the L1 term and changes no probability.

Each stage is an objective given to the package's one training loop, :func:`xnn_lab.fit`.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

from xnn_lab._core.checks import check_choice, check_device, check_float, check_images, check_int, check_labels
from xnn_lab._core.runtime import device as default_device
from xnn_lab._core.state import model_device, model_state
from xnn_lab._core.training import History, Step, evaluate, fit, iterate_batches, tensor_pair
from xnn_lab.protopnet.model import ProtoPNet, _check_model, _Scores
from xnn_lab.protopnet.push import PushResult, push_prototypes

STAGES = ("warm_up", "joint", "last_layer")


class ProtoPNetLoss(NamedTuple):
    r"""The terms of the ProtoPNet loss on one batch, each a scalar tensor.

    Attributes:
        total: cross-entropy + :math:`\lambda_1` Clst + :math:`\lambda_2` Sep + :math:`\lambda_3` L1.
        cross_entropy: mean cross-entropy of the logits and the labels.
        cluster: Clst, mean over examples of :math:`\min_{j: \mathbf{p}_j \in \mathbf{P}_{y_i}} \min_{\mathbf{z}} \|\mathbf{z} - \mathbf{p}_j\|_2^2`.
        separation: Sep, minus the mean over examples of the same minimum over the other classes' prototypes.
        l1: the sum of :math:`|W_{cj}|` over the connections from prototypes to classes they do not belong to.
    """

    total: torch.Tensor
    cross_entropy: torch.Tensor
    cluster: torch.Tensor
    separation: torch.Tensor
    l1: torch.Tensor


def _check_weights(clst, sep, l1) -> tuple[float, float, float]:
    return (check_float("clst", clst, minimum=0.0), check_float("sep", sep, minimum=0.0),
            check_float("l1", l1, minimum=0.0))


def wrong_class_l1(model: ProtoPNet) -> torch.Tensor:
    """The L1 norm of the last layer's weights from prototypes to the classes they do not belong to."""
    return (model.last_layer.weight * (1 - model.class_identity().T)).abs().sum()


@torch.no_grad()
def _center_wrong_class_weights(model: ProtoPNet) -> torch.Tensor:
    r"""Move each column of the last layer so that the median of its wrong-class weights is 0.

    Adding :math:`a_j` to every weight :math:`W_{cj}` of prototype :math:`j` adds
    :math:`\sum_j a_j g_j` to every logit, so the softmax, the cross-entropy and every prediction
    stay as they are, while the L1 term :math:`\sum_{c: \mathbf{p}_j \notin \mathbf{P}_c} |W_{cj} + a_j|`
    is smallest at :math:`a_j` = minus the median of those weights: an exact minimisation of the
    last-layer loss along the directions where only the L1 term acts.

    Args:
        model: the ProtoPNet; its last layer is changed in place.

    Returns:
        (M,) the amounts :math:`a_j` added to each column.
    """
    model = _check_model(model)
    weight = model.last_layer.weight
    wrong = (1 - model.class_identity().T).bool()                               # (C, M)
    if not wrong.any():                                                         # one class: no wrong-class weights
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    shift = -weight.masked_fill(~wrong, float("nan")).nanmedian(dim=0).values
    weight.add_(shift[None])
    return shift


def _loss(model: ProtoPNet, out: _Scores, y: torch.Tensor, clst: float, sep: float,
          l1: float) -> ProtoPNetLoss:
    own = model.prototype_classes[None, :] == y[:, None]                       # (B, M)
    cluster = out.min_distances.masked_fill(~own, float("inf")).min(dim=1).values.mean()
    separation = -out.min_distances.masked_fill(own, float("inf")).min(dim=1).values.mean()
    cross_entropy = F.cross_entropy(out.logits, y)
    wrong_l1 = wrong_class_l1(model)
    total = cross_entropy + clst * cluster + sep * separation + l1 * wrong_l1
    return ProtoPNetLoss(total, cross_entropy, cluster, separation, wrong_l1)


def _step(model: ProtoPNet, out: _Scores, y: torch.Tensor, clst: float, sep: float, l1: float) -> Step:
    """The training step's loss, the logits it came from and its terms by name."""
    loss = _loss(model, out, y, clst, sep, l1)
    terms = {"cross_entropy": loss.cross_entropy, "cluster": loss.cluster, "separation": loss.separation,
             "l1": loss.l1}
    return Step(loss.total, out.logits, terms)


def protopnet_loss(model: ProtoPNet, x: torch.Tensor, y: torch.Tensor, *, clst: float = 0.8, sep: float = 0.08,
                   l1: float = 1e-4) -> ProtoPNetLoss:
    r"""The ProtoPNet loss of a batch, with :math:`\lambda_1` = ``clst``, :math:`\lambda_2` = ``sep``, :math:`\lambda_3` = ``l1``.

    The defaults are those of Chen et al. (2019). A measurement: computed in eval mode (batch-norm
    statistics stay as they are), on the model's device; the model's modes and flags are given
    back. The stages of :func:`train_stage` train on the same terms in their own modes.

    Args:
        model: the ProtoPNet.
        x: images (B, C_in, H, W).
        y: labels (B,), int64.
        clst, sep, l1: the non-negative weights of the cluster, separation and L1 terms.

    Returns:
        a :class:`ProtoPNetLoss` on the model's device, differentiable in the model's parameters.
    """
    model = _check_model(model)
    clst, sep, l1 = _check_weights(clst, sep, l1)
    check_images("x", x, channels=model.in_channels)
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(getattr(y, 'shape', ()))}")
    check_labels("y", y, model.num_classes)
    device = model_device(model)
    with model_state(model):
        out = model._scores(model.latent(x.to(device)))
    return _loss(model, out, y.to(device), clst, sep, l1)


def _trained_parameters(model: ProtoPNet, stage: str) -> list[torch.nn.Parameter]:
    if stage == "warm_up":
        return [*model.add_on.parameters(), model.prototypes]
    if stage == "joint":
        return [*model.features.parameters(), *model.add_on.parameters(), model.prototypes]
    return [*model.last_layer.parameters()]


@torch.no_grad()
def _cache(name: str, data, batch_size: int, device: torch.device, model: ProtoPNet,
           fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(X), y)`` over all of ``data``, batched, on ``device``, with ``model`` in eval mode."""
    outputs, labels = [], []
    with model_state(model):
        for X, y in iterate_batches(name, data, batch_size, device=device):
            outputs.append(fn(X))
            labels.append(y)
    return torch.cat(outputs), torch.cat(labels)


def train_stage(model: ProtoPNet, train, stage: str, *, epochs: int, lr: float = 3e-3,
                backbone_lr: float = 1e-3, clst: float = 0.8, sep: float = 0.08, l1: float = 1e-4,
                batch_size: int = 64, seed: int = 0, device: torch.device | None = None,
                progress: bool = False) -> History:
    """Run one training stage with Adam through :func:`xnn_lab.fit`; see the module docstring for
    what each stage trains.

    The stages with a frozen backbone compute what stays fixed once, batched, in eval mode, and
    train on that in eval mode: ``"warm_up"`` on the backbone's feature maps, ``"last_layer"`` on
    the similarities. ``"joint"`` trains on the images in train mode. Only the stage's parameters
    require grad during it; every ``requires_grad`` flag is restored at the end, and the model is
    left in eval mode on ``device``.

    Args:
        model: the ProtoPNet, trained in place.
        train: (X, y) tensors or a Dataset of (image, label).
        stage: ``"warm_up"``, ``"joint"`` or ``"last_layer"``.
        epochs: passes over ``train``.
        lr: learning rate of the add-on layers and prototypes, or of the last layer.
        backbone_lr: learning rate of the backbone in the joint stage.
        clst, sep, l1: weights of the loss terms (see :func:`protopnet_loss`).
        batch_size: examples per step.
        seed: seeds the shuffling order.
        device: where to train; ``xnn_lab.device()`` by default.
        progress: show a tqdm bar over epochs.

    Returns:
        the stage's :class:`xnn_lab.History`: per-epoch ``train_loss``, ``train_acc`` and the
        terms ``"cross_entropy"``, ``"cluster"``, ``"separation"``, ``"l1"`` (cluster and
        separation are NaN in the last-layer stage, whose loss does not contain them).
    """
    model = _check_model(model)
    stage = check_choice("stage", stage, STAGES)
    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    lr = check_float("lr", lr, minimum=0.0, open_min=True)
    backbone_lr = check_float("backbone_lr", backbone_lr, minimum=0.0, open_min=True)
    clst, sep, l1 = _check_weights(clst, sep, l1)
    tensor_pair("train", train)
    device = check_device("device", device) or default_device()
    model.to(device)

    trained = _trained_parameters(model, stage)
    backbone = {id(param) for param in model.features.parameters()}
    groups = [{"params": [p for p in trained if id(p) not in backbone], "lr": lr}]
    if stage == "joint":
        groups.append({"params": list(model.features.parameters()), "lr": backbone_lr})
    cache_batch = max(batch_size, 256)
    if stage == "warm_up":
        data = _cache("train", train, cache_batch, device, model, model.features)

        def objective(features: torch.Tensor, y: torch.Tensor) -> Step:
            return _step(model, model._scores(model.add_on(features)), y, clst, sep, l1)
    elif stage == "last_layer":
        data = _cache("train", train, cache_batch, device, model, lambda X: model._scores(model.latent(X)).similarities)

        def objective(similarities: torch.Tensor, y: torch.Tensor) -> Step:
            _center_wrong_class_weights(model)      # the exact step along the flat directions
            logits = model.last_layer(similarities)
            cross_entropy, wrong_l1 = F.cross_entropy(logits, y), wrong_class_l1(model)
            terms = {"cross_entropy": cross_entropy, "cluster": None, "separation": None, "l1": wrong_l1}
            return Step(cross_entropy + l1 * wrong_l1, logits, terms)
    else:
        data = train

        def objective(X: torch.Tensor, y: torch.Tensor) -> Step:
            return _step(model, model._scores(model.latent(X)), y, clst, sep, l1)
    history = fit(model, data, objective=objective, parameters=groups, epochs=epochs, lr=lr, batch_size=batch_size,
                  train_mode=stage == "joint", seed=seed, device=device, progress=progress, desc=stage)
    if stage == "last_layer":
        _center_wrong_class_weights(model)          # and after the last step
    return history


class ProtoPNetRun(NamedTuple):
    """The record of :func:`fit_protopnet`.

    Attributes:
        histories: the :class:`xnn_lab.History` of each stage that ran, by stage name.
        push: the :class:`xnn_lab.protopnet.PushResult`.
        accuracy: accuracy on ``val`` (or on ``train`` without it) after ``"warm_up"``,
            ``"joint"``, ``"push"`` and ``"last_layer"``.
        seconds: wall time of each of those steps.
    """

    histories: dict[str, History]
    push: PushResult
    accuracy: dict[str, float]
    seconds: dict[str, float]


def fit_protopnet(model: ProtoPNet, train, val=None, *, warm_epochs: int = 5, joint_epochs: int = 10,
                  last_epochs: int = 20, lr: float = 3e-3, backbone_lr: float = 1e-3, last_lr: float = 1e-2,
                  clst: float = 0.8, sep: float = 0.08, l1: float = 1e-4, batch_size: int = 64, seed: int = 0,
                  device: torch.device | None = None, progress: bool = False) -> ProtoPNetRun:
    """Train a ProtoPNet through all its stages: warm-up, joint, push, last layer.

    ``joint_epochs=0`` skips the joint stage (a backbone trained before, kept frozen).

    Args:
        model: the ProtoPNet, trained in place and left in eval mode on ``device``.
        train: (X, y) tensors or a Dataset of (image, label); also the data of the push.
        val: data to measure accuracy on after each stage; ``train`` when ``None``.
        warm_epochs, joint_epochs, last_epochs: epochs of each stage.
        lr, backbone_lr: learning rates of warm-up and joint (see :func:`train_stage`).
        last_lr: learning rate of the last-layer stage.
        clst, sep, l1: weights of the loss terms (see :func:`protopnet_loss`).
        batch_size, seed, device, progress: as for :func:`train_stage`.

    Returns:
        a :class:`ProtoPNetRun`.
    """
    model = _check_model(model)
    check_int("joint_epochs", joint_epochs, minimum=0)
    device = check_device("device", device) or default_device()
    model.to(device)     # the push computes on the model's device
    measure = val if val is not None else train
    common = {"clst": clst, "sep": sep, "l1": l1, "batch_size": batch_size, "seed": seed, "device": device,
              "progress": progress}
    plan = [("warm_up", warm_epochs, lr), ("joint", joint_epochs, lr), ("push", None, None),
            ("last_layer", last_epochs, last_lr)]
    histories, accuracy, seconds, pushed = {}, {}, {}, None
    for stage, epochs, stage_lr in plan:
        if epochs == 0:
            continue
        start = time.perf_counter()
        if stage == "push":
            pushed = push_prototypes(model, train, batch_size=max(batch_size, 256))
        else:
            histories[stage] = train_stage(model, train, stage, epochs=epochs, lr=stage_lr, backbone_lr=backbone_lr,
                                           **common)
        seconds[stage] = time.perf_counter() - start
        accuracy[stage] = evaluate(model, measure, batch_size=max(batch_size, 256), device=device)["accuracy"]
    model.eval()
    return ProtoPNetRun(histories, pushed, accuracy, seconds)
