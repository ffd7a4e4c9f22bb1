"""CAM and its recipe (chapter 2): a global-average-pooling + linear head, found in a model or
re-trained on frozen features, whose weights are the channel weights."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._core.checks import check_device, check_float, check_int, input_errors
from xnn_lab._core.runtime import device as default_device
from xnn_lab._core.state import model_device, model_state
from xnn_lab._core.training import History, fit, iterate_batches
from xnn_lab.cam.base import BaseCAM


_PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity)


def _is_global_average_pool(module: nn.Module) -> bool:
    if not isinstance(module, nn.AdaptiveAvgPool2d):
        return False
    size = module.output_size
    return all(s == 1 for s in (size if isinstance(size, tuple) else (size,)))


def find_gap_head(model: nn.Module) -> nn.Linear:
    """The linear layer of ``model``'s global-average-pooling + linear head.

    Reads the model's direct children from the last one back, skipping ``Flatten``, ``Dropout``
    and ``Identity``: they must end in an ``nn.Linear`` right after an
    ``nn.AdaptiveAvgPool2d(1)``, as in :class:`xnn_lab.models.SmallCNN` (``pool``,
    ``classifier``) and torchvision's ResNets (``avgpool``, ``fc``).

    Raises:
        ValueError: the model has another head, naming what was found.
    """
    children = [(name, module) for name, module in model.named_children()
                if not isinstance(module, _PASS_THROUGH)]
    found = ", ".join(f"{name} ({type(module).__name__})" for name, module in children[-2:]) or "no children"
    if (len(children) < 2 or not isinstance(children[-1][1], nn.Linear)
            or not _is_global_average_pool(children[-2][1])):
        raise ValueError("CAM needs a model that ends in global average pooling + a linear layer "
                         f"(AdaptiveAvgPool2d(1), then Linear); its last children are {found}. Pass the "
                         "linear layer as head=, re-train such a head with retrain_gap_head, or use GradCAM")
    return children[-1][1]


class CAM(BaseCAM):
    r"""CAM (Zhou et al., 2016): channel weights are the linear head's weights.

    For a network whose score is :math:`y^c = \sum_k w_k^c \frac{1}{Z} \sum_{ij} A^k_{ij} + b^c`
    (global average pooling, then a linear layer), the map is
    :math:`L^c = \mathrm{ReLU}(\sum_k w_k^c A^k)`, clipped at 0 like Grad-CAM. No gradient is
    needed, so the maps of every class cost one forward pass. ``layer`` must be the one whose
    output is pooled; each call checks that the scores equal the head applied to its pooled
    activations.

    Args:
        model: the network, ending in global average pooling + linear (see :func:`find_gap_head`).
        layer: the submodule (or its dotted name) whose output the head pools.
        head: the head's ``nn.Linear``; found in the model when ``None``.
        batch_size: images per forward pass; ``None`` passes the whole input at once.
    """

    needs_gradients = False

    def __init__(self, model: nn.Module, layer, *, head: nn.Linear | None = None, batch_size: int | None = None):
        super().__init__(model, layer, batch_size=batch_size)
        if head is None:
            head = find_gap_head(model)
        elif not isinstance(head, nn.Linear):
            raise TypeError(f"head must be an nn.Linear, got {type(head).__name__}")
        self.head = head

    def channel_weights(self, activations, gradients, targets):
        return self.head.weight.detach().to(activations.dtype)[targets]

    def _check_scores(self, activations, scores):
        if activations.shape[1] != self.head.in_features:
            raise ValueError(f"CAM: layer {self.layer_name!r} has {activations.shape[1]} channels but the head "
                             f"takes {self.head.in_features} features; pass the layer whose output is pooled")
        pooled = activations.mean(dim=(-2, -1))
        expected = F.linear(pooled, self.head.weight, self.head.bias)
        scale = scores.detach().abs().max().clamp_min(1.0)
        if expected.shape != scores.shape or not torch.allclose(expected, scores.detach(), rtol=1e-3,
                                                                atol=1e-4 * float(scale)):
            raise ValueError(f"CAM: the model's scores are not the head applied to the spatial mean of the "
                             f"output of layer {self.layer_name!r}; CAM needs exactly a global average pooling + "
                             "linear head on that layer (use GradCAM for other heads)")


def _pooled_features(name: str, features: nn.Module, data, batch_size: int, device: torch.device):
    """Global-average-pooled features (N, K) and labels (N,) of ``data``, in eval mode, without gradients."""
    pooled, labels = [], []
    with model_state(features), torch.no_grad():
        for X, y in iterate_batches(name, data, batch_size, device=device):
            with input_errors(name, X):
                activations = features(X)
            if activations.ndim != 4:
                raise ValueError(f"features must map images to (B, K, h, w) maps, got shape "
                                 f"{tuple(activations.shape)}")
            pooled.append(activations.mean(dim=(-2, -1)))
            labels.append(y)
    return torch.cat(pooled), torch.cat(labels)


def retrain_gap_head(features: nn.Module, train, val=None, *, num_classes: int | None = None,
                     epochs: int = 30, lr: float = 1e-2, batch_size: int = 256, weight_decay: float = 0.0,
                     seed: int = 0, device: torch.device | None = None,
                     progress: bool = False) -> tuple[nn.Sequential, History]:
    r"""The CAM recipe: a new global-average-pooling + linear head on frozen convolutional features.

    The features stay frozen by construction: they run once over the data, in eval mode and
    without gradients, to give the pooled vectors :math:`\bar A_k = \frac{1}{Z}\sum_{ij} A^k_{ij}`;
    then only a fresh ``nn.Linear`` is fitted on them with :func:`xnn_lab.fit`
    (cross-entropy). Batch-norm statistics and ``requires_grad`` flags of ``features`` are
    left as they were.

    Args:
        features: the convolutional part, mapping (B, C_in, H, W) images to (B, K, h, w) maps.
        train: (X, y) tensors or a Dataset of (x, y), as for :func:`xnn_lab.fit`.
        val: optional validation data; with it the head of the best epoch is kept.
        num_classes: the number of classes C; ``max(y) + 1`` of ``train`` when ``None``.
        epochs, lr, batch_size, weight_decay, seed, progress: passed to :func:`xnn_lab.fit`.
        device: where to compute; the features' device by default (the returned model, the
            shared features included, is moved there).

    Returns:
        ``(model, history)``: ``model`` is ``nn.Sequential(features, pool, flatten, classifier)``
        (it shares ``features``, not a copy), ready for ``CAM(model, "features")``;
        ``history`` is the head's training history. The new head is in eval mode; the shared
        features keep each module's own train/eval flag.
    """
    if not isinstance(features, nn.Module):
        raise TypeError(f"features must be a torch.nn.Module, got {type(features).__name__}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_float("lr", lr, minimum=0.0, open_min=True)
    device = check_device("device", device) or model_device(features, default_device())
    pooled, labels = _pooled_features("train", features, train, batch_size, device)
    val_pooled = None if val is None else _pooled_features("val", features, val, batch_size, device)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    num_classes = check_int("num_classes", num_classes, minimum=2)
    # The new head's initial weights depend on the seed only; it is a trainable module even when
    # the caller works inside inference mode.
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.default_generator.manual_seed(check_int("seed", seed, minimum=0))
        classifier = nn.Linear(pooled.shape[1], num_classes)
    history = fit(classifier, (pooled, labels), val_pooled, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, seed=seed, device=device, progress=progress)
    model = nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                      classifier=classifier))
    # The shared features keep each module's own train/eval flag; only the new parts are set to eval.
    model.training = False
    return model.to(device), history
