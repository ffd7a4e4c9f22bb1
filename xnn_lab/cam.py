r"""Class activation maps: CAM, Grad-CAM and Grad-CAM++ behind one base class.

All three explain a class score :math:`y^c` through the activations :math:`A \in
\mathbb{R}^{K \times h \times w}` of one layer: a weight :math:`w_k^c` per channel, then

.. math:: L^c = \mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big),

upsampled (bilinear) to the input's size. They differ only in the weights: CAM reads them
from a global-average-pooling + linear head, Grad-CAM averages the gradients
:math:`\partial y^c / \partial A^k_{ij}` over the map, Grad-CAM++ weighs the positive
gradients pixel by pixel. :class:`BaseCAM` owns everything else: the forward hook (inside a
context manager, always removed), one forward and one partial backward per batch with
``torch.autograd.grad`` to the captured activation, several targets per image in one batched
backward, upsampling, and the model's train/eval mode.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._checks import check_float, check_int, check_tensor
from xnn_lab._runtime import device as default_device
from xnn_lab.train import History, fit, iterate_batches

__all__ = ["CAM", "BaseCAM", "CAMResult", "GradCAM", "GradCAMPlusPlus", "find_gap_head", "normalize",
           "retrain_gap_head"]

# The most gradient elements (targets x activation) one batched backward may hold; more targets
# are split into several batched backwards over the same graph.
_GRADIENT_ELEMENTS = 2**26


class CAMResult(NamedTuple):
    """What :meth:`BaseCAM.explain` returns: the maps, their classes and the model's scores."""

    maps: torch.Tensor
    """(B, H, W) for one target per image, (B, T, H, W) for several; >= 0, not normalised."""
    targets: torch.Tensor
    """(B,) or (B, T) int64, the class each map explains."""
    scores: torch.Tensor
    """(B, C) the model's outputs, from the same forward pass."""


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map to [0, 1]: (m - min m) / (max m - min m); a constant map gives zeros.

    Args:
        maps: (..., H, W) maps; every leading index is a separate map.

    Returns:
        a tensor of the same shape, on the same device.
    """
    check_tensor("maps", maps, floating=True)
    if maps.ndim < 2:
        raise ValueError(f"maps must have at least 2 dimensions (..., H, W), got shape {tuple(maps.shape)}")
    low = maps.amin(dim=(-2, -1), keepdim=True)
    spread = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(spread > 0, (maps - low) / spread.clamp_min(torch.finfo(maps.dtype).tiny),
                       torch.zeros_like(maps))


def _resolve_layer(model: nn.Module, layer) -> tuple[str, nn.Module]:
    """(dotted name, module) of ``layer``, given as a submodule of ``model`` or its dotted name."""
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(f"layer {layer!r} is not a submodule of the model ({err})") from None
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be a submodule of model or its dotted name, got {type(layer).__name__}")
    for name, module in model.named_modules():
        if module is layer:
            return name, module
    raise ValueError(f"layer must be a submodule of model; {type(layer).__name__} is not one of its modules")


class _Capture:
    """What the forward hook saw: the layer's activation and how often the layer ran."""

    def __init__(self) -> None:
        self.activation: torch.Tensor | None = None
        self.calls = 0


@contextlib.contextmanager
def _capture_activation(layer: nn.Module, layer_name: str, batch: int, with_gradient: bool):
    """Hook ``layer`` for one forward pass; yield the :class:`_Capture` it fills.

    The hook keeps the layer's output ``A`` (detached) and hands the rest of the network a copy
    of it, so in-place operations after the layer (``ReLU(inplace=True)``, ``out += identity``)
    change the copy, never ``A``. With ``with_gradient`` the forward runs without autograd up
    to the layer and with it after (``A`` becomes a leaf that requires grad), so the backward
    to ``A`` is partial by construction and the layers before it record no graph.
    """
    capture = _Capture()

    def hook(module, inputs, output):
        capture.calls += 1
        if capture.calls > 1:
            raise ValueError(f"layer {layer_name!r} ran more than once in one forward pass (a module "
                             "reused inside forward, like the shared ReLU of a torchvision ResNet block); "
                             "choose a module that runs once")
        if not isinstance(output, torch.Tensor) or output.ndim != 4 or output.shape[0] != batch:
            got = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"layer {layer_name!r} must output a ({batch}, K, h, w) tensor, got {got}")
        activation = output.detach()
        if with_gradient:
            torch.set_grad_enabled(True)  # the enclosing no_grad() restores the caller's mode
            activation.requires_grad_(True)
        capture.activation = activation
        return activation.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Put every module in eval mode; restore each module's own flag afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing (``align_corners=False``) of (B, T, h, w) maps to (B, T, *size).

    The maps are resized in channels-last memory order, where PyTorch's kernel writes the T values
    of each output pixel together: with many targets (all classes) this runs at the speed of
    writing the output, which is most of the cost. The result keeps that order in memory, (B, H,
    W, T); ``.contiguous()`` gives (B, T, H, W) order at the cost of one copy.
    """
    return F.interpolate(maps.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                         align_corners=False)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else fallback


class BaseCAM:
    r"""Shared machinery of the class-activation-map explainers; subclasses give the channel weights.

    ``explainer(x, target)`` runs the model once on a batch with a forward hook on ``layer``,
    computes :math:`w_k^c` with :meth:`channel_weights` (from one partial backward to the
    layer's activations when the method needs gradients), and returns
    :math:`\mathrm{ReLU}(\sum_k w_k^c A^k)` upsampled bilinearly (``align_corners=False``) to
    the input's size. The model runs in eval mode; each module's train/eval flag is restored
    afterwards, ``requires_grad`` flags and parameter ``.grad`` are never touched, and the hook is
    removed even when the call fails. It works inside ``torch.no_grad()`` and
    ``torch.inference_mode()``.

    Args:
        model: the network, mapping (B, C_in, H, W) images to (B, C) class scores.
        layer: a submodule of ``model`` whose output is (B, K, h, w), or its dotted name
            (``"features"``, ``"layer4"``, ``"features.10"``).
        batch_size: images per forward pass; ``None`` passes the whole input at once.
    """

    #: whether :meth:`channel_weights` needs the gradients of the scores to the activations
    needs_gradients = True

    def __init__(self, model: nn.Module, layer, *, batch_size: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer_name, self.layer = _resolve_layer(model, layer)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, minimum=1)

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor | None,
                        targets: torch.Tensor) -> torch.Tensor:
        """The weights :math:`w_k^c` of each channel for each target.

        Args:
            activations: A, (B, K, h, w).
            gradients: dy^c/dA for each target, (T, B, K, h, w); ``None`` when the method does
                not need gradients.
            targets: (B, T) the classes c.

        Returns:
            (B, T, K) weights.
        """
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, target=None, *, topk: int | None = None) -> torch.Tensor:
        """Class activation maps of ``x``, shape (B, H, W), or (B, T, H, W) for several targets.

        Args:
            x: (B, C_in, H, W) images.
            target: ``None`` (the predicted class), an int (the same class for every image), a
                (B,) int tensor (one class per image), a (B, T) int tensor (T classes per image)
                or ``"all"`` (every class, T = C).
            topk: instead of ``target``, the T = ``topk`` highest-scoring classes of each image.

        Returns:
            maps >= 0 at the input's resolution, not normalised (see :func:`normalize`), on
            ``x``'s device.
        """
        return self.explain(x, target, topk=topk).maps

    def explain(self, x: torch.Tensor, target=None, *, topk: int | None = None) -> CAMResult:
        """The maps of ``x`` with the classes they explain and the model's scores.

        Args:
            x: (B, C_in, H, W) images.
            target: as for calling the explainer.
            topk: as for calling the explainer.

        Returns:
            a :class:`CAMResult` ``(maps, targets, scores)``, on ``x``'s device.
        """
        check_tensor("x", x, ndim=4, floating=True)
        if x.shape[0] == 0:
            raise ValueError(f"x must hold at least one image, got shape {tuple(x.shape)}")
        batch = x.shape[0]
        several = _check_target(target, topk, batch)
        model_device = _model_device(self.model, x.device)
        step = self.batch_size or batch
        results = []
        # inference_mode(False): the backward must be possible even when the caller disabled autograd.
        with _eval_mode(self.model), torch.inference_mode(False):
            for start in range(0, batch, step):
                part = slice(start, start + step)
                chunk_target = target[part] if isinstance(target, torch.Tensor) else target
                results.append(self._explain_batch(x[part].to(model_device), chunk_target, topk))
        # One batch needs no concatenation, which would copy the maps (large for all classes).
        maps, targets, scores = (parts[0].to(x.device) if len(parts) == 1 else torch.cat(parts).to(x.device)
                                 for parts in zip(*results))
        if not several:
            maps, targets = maps[:, 0], targets[:, 0]
        return CAMResult(maps, targets, scores)

    def _explain_batch(self, x: torch.Tensor, target, topk: int | None):
        """(maps (B, T, H, W), targets (B, T), scores (B, C)) of one batch."""
        with (_capture_activation(self.layer, self.layer_name, x.shape[0], self.needs_gradients) as capture,
              torch.no_grad()):
            scores = self.model(x)
        if capture.activation is None:
            raise ValueError(f"layer {self.layer_name!r} did not run in the model's forward pass")
        if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[0] != x.shape[0]:
            got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"model must return (B, C) class scores for B = {x.shape[0]} images, got {got}")
        activations = capture.activation
        targets = _resolve_targets(target, topk, scores)
        self._check_scores(activations, scores)
        weights = []
        for chunk in self._target_chunks(activations, targets.shape[1]):
            gradients = self._gradients(scores, activations, targets[:, chunk], last=chunk.stop >= targets.shape[1])
            weights.append(self.channel_weights(activations.detach(), gradients, targets[:, chunk]))
        weights = weights[0] if len(weights) == 1 else torch.cat(weights, dim=1)  # one chunk: no copy
        maps = F.relu(torch.einsum("btk,bkhw->bthw", weights, activations.detach()))
        return _upsample(maps, tuple(x.shape[-2:])), targets, scores.detach()

    def _check_scores(self, activations: torch.Tensor, scores: torch.Tensor) -> None:
        """Hook for subclasses that need the scores to relate to the activations in a set way."""

    def _target_chunks(self, activations: torch.Tensor, count: int):
        per_pass = count if not self.needs_gradients else max(1, _GRADIENT_ELEMENTS // activations.numel())
        return [slice(start, min(start + per_pass, count)) for start in range(0, count, per_pass)]

    def _gradients(self, scores: torch.Tensor, activations: torch.Tensor, targets: torch.Tensor,
                   last: bool) -> torch.Tensor | None:
        """dy^c/dA for each target column, (T, B, K, h, w), from one (batched) backward."""
        if not self.needs_gradients:
            return None
        if scores.grad_fn is None or not activations.requires_grad:
            raise ValueError(f"model's scores do not depend on layer {self.layer_name!r} through autograd")
        count = targets.shape[1]
        # One-hot rows select y^c of each image: <onehot, dy/dA> = dy^c/dA (images are independent).
        onehot = torch.zeros((count, *scores.shape), dtype=scores.dtype, device=scores.device)
        onehot.scatter_(2, targets.T[:, :, None], 1.0)
        if count == 1:
            (gradients,) = torch.autograd.grad(scores, activations, onehot[0], retain_graph=not last)
            return gradients[None]
        (gradients,) = torch.autograd.grad(scores, activations, onehot, retain_graph=not last,
                                           is_grads_batched=True)
        return gradients


def _check_target(target, topk, batch: int) -> bool:
    """Validate what can be checked before the forward pass; return whether T maps per image come back."""
    if topk is not None:
        check_int("topk", topk, minimum=1)
        if target is not None:
            raise ValueError(f"pass either target or topk, not both; got target={target!r} and topk={topk}")
        return True
    if target is None:
        return False
    if isinstance(target, str):
        if target != "all":
            raise ValueError(f"target as a string must be 'all', got {target!r}")
        return True
    if isinstance(target, torch.Tensor):
        check_tensor("target", target, ndim=(1, 2), integral=True)
        if target.shape[0] != batch:
            raise ValueError(f"target must have one row per image ({batch}), got shape {tuple(target.shape)}")
        return target.ndim == 2
    check_int("target", target, minimum=0)
    return False


def _resolve_targets(target, topk: int | None, scores: torch.Tensor) -> torch.Tensor:
    """The (B, T) int64 classes to explain, on the scores' device."""
    batch, classes = scores.shape
    if topk is not None:
        if topk > classes:
            raise ValueError(f"topk must be <= {classes} (the model's classes), got {topk}")
        return scores.detach().topk(topk, dim=1).indices
    if target is None:
        return scores.detach().argmax(1, keepdim=True)
    if isinstance(target, str):
        return torch.arange(classes, device=scores.device).expand(batch, classes)
    if isinstance(target, torch.Tensor):
        targets = target.to(scores.device, torch.int64)
        targets = targets[:, None] if targets.ndim == 1 else targets
    else:
        targets = torch.full((batch, 1), int(target), device=scores.device, dtype=torch.int64)
    if targets.numel() and (targets.min() < 0 or targets.max() >= classes):
        raise ValueError(f"target must hold classes in [0, {classes}) for a model with {classes} outputs, "
                         f"got values from {int(targets.min())} to {int(targets.max())}")
    return targets


class GradCAM(BaseCAM):
    r"""Grad-CAM (Selvaraju et al., 2017): channel weights are the spatially averaged gradients.

    .. math:: \alpha_k^c = \frac{1}{Z} \sum_i \sum_j \frac{\partial y^c}{\partial A^k_{ij}},
        \qquad L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big),

    with :math:`Z = h w`. See :class:`BaseCAM` for the arguments and the call.
    """

    def channel_weights(self, activations, gradients, targets):
        return gradients.mean(dim=(-2, -1)).transpose(0, 1)


class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighed pixel by pixel.

    With :math:`Y^c = \exp(S^c)` and a piecewise-linear network after the layer, the paper's
    closed form (its eq. 19) is

    .. math:: \alpha^{kc}_{ij} = \frac{(g^{kc}_{ij})^2}
        {2 (g^{kc}_{ij})^2 + \sum_{a,b} A^k_{ab} (g^{kc}_{ij})^3},
        \qquad w^c_k = \sum_{i,j} \alpha^{kc}_{ij}\, \mathrm{ReLU}(g^{kc}_{ij}),

    where :math:`g^{kc}_{ij} = \partial S^c / \partial A^k_{ij}` and :math:`\alpha = 0` where
    the denominator is 0. The paper's weights carry one more factor :math:`\exp(S^c)`
    (:math:`\partial Y^c / \partial A = \exp(S^c)\, g`); it is the same for every pixel and
    channel of a map, so it changes the map's scale only, and it overflows float32 for scores
    above about 88, so it is left out. See :class:`BaseCAM` for the arguments and the call.
    """

    def channel_weights(self, activations, gradients, targets):
        squared = gradients.pow(2)
        denominator = 2 * squared + activations.sum(dim=(-2, -1), keepdim=True) * squared * gradients
        alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator, 1.0),
                            torch.zeros_like(squared))
        return (alpha * F.relu(gradients)).sum(dim=(-2, -1)).transpose(0, 1)


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


def _pooled_features(features: nn.Module, data, batch_size: int, device: torch.device):
    """Global-average-pooled features (N, K) and labels (N,) of ``data``, in eval mode, without gradients."""
    pooled, labels = [], []
    with _eval_mode(features), torch.no_grad():
        for X, y in iterate_batches("train", data, batch_size, device=device):
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
    then only a fresh ``nn.Linear`` is fitted on them with :func:`xnn_lab.train.fit`
    (cross-entropy). Batch-norm statistics and ``requires_grad`` flags of ``features`` are
    left as they were.

    Args:
        features: the convolutional part, mapping (B, C_in, H, W) images to (B, K, h, w) maps.
        train: (X, y) tensors or a Dataset of (x, y), as for :func:`xnn_lab.train.fit`.
        val: optional validation data; with it the head of the best epoch is kept.
        num_classes: the number of classes C; ``max(y) + 1`` of ``train`` when ``None``.
        epochs, lr, batch_size, weight_decay, seed, progress: passed to :func:`xnn_lab.train.fit`.
        device: where to compute; the features' device by default (the returned model, the
            shared features included, is moved there).

    Returns:
        ``(model, history)``: ``model`` is ``nn.Sequential(features, pool, flatten, classifier)``
        (it shares ``features``, not a copy) in eval mode, ready for ``CAM(model, "features")``;
        ``history`` is the head's training history.
    """
    if not isinstance(features, nn.Module):
        raise TypeError(f"features must be a torch.nn.Module, got {type(features).__name__}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_float("lr", lr, minimum=0.0, open_min=True)
    device = device or _model_device(features, default_device())
    pooled, labels = _pooled_features(features, train, batch_size, device)
    val_pooled = None if val is None else _pooled_features(features, val, batch_size, device)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    num_classes = check_int("num_classes", num_classes, minimum=2)
    with torch.random.fork_rng(devices=[]):  # the new head's initial weights depend on the seed only
        torch.default_generator.manual_seed(check_int("seed", seed, minimum=0))
        classifier = nn.Linear(pooled.shape[1], num_classes)
    history = fit(classifier, (pooled, labels), val_pooled, epochs=epochs, lr=lr, batch_size=batch_size,
                  weight_decay=weight_decay, seed=seed, device=device, progress=progress)
    model = nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                      classifier=classifier))
    return model.to(device).eval(), history
