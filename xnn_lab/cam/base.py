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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._core.checks import check_finite, check_images, check_int, check_tensor, input_errors
from xnn_lab._core.state import autograd_ready, gradients_enabled, model_device, model_state

_GRADIENT_ELEMENTS = 2**26


class CAMExplanation(NamedTuple):
    """What :meth:`BaseCAM.explain` returns: the model's logits and the maps that explain them."""

    logits: torch.Tensor
    """(B, C) the model's outputs, from the same forward pass."""
    maps: torch.Tensor
    """(B, H, W) for one target per image, (B, T, H, W) for several; >= 0, not normalised."""
    targets: torch.Tensor
    """(B,) or (B, T) int64, the class each map explains."""


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
    check_finite("maps", maps)
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


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing (``align_corners=False``) of (B, T, h, w) maps to (B, T, *size).

    The maps are resized in channels-last memory order, where PyTorch's kernel writes the T values
    of each output pixel together: with many targets (all classes) this runs at the speed of
    writing the output, which is most of the cost. The result keeps that order in memory, (B, H,
    W, T); ``.contiguous()`` gives (B, T, H, W) order at the cost of one copy.
    """
    return F.interpolate(maps.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                         align_corners=False)


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

    def explain(self, x: torch.Tensor, target=None, *, topk: int | None = None) -> CAMExplanation:
        """The model's logits for ``x`` with the maps that explain them and the classes they explain.

        Args:
            x: (B, C_in, H, W) images.
            target: as for calling the explainer.
            topk: as for calling the explainer.

        Returns:
            a :class:`CAMExplanation` ``(logits, maps, targets)``, on ``x``'s device.
        """
        check_images("x", x)
        if x.shape[0] == 0:
            raise ValueError(f"x must hold at least one image, got shape {tuple(x.shape)}")
        batch = x.shape[0]
        several = _check_target(target, topk, batch)
        device = model_device(self.model, x.device)
        step = self.batch_size or batch
        results = []
        # The backward must be possible even when the caller disabled autograd.
        with model_state(self.model), gradients_enabled():
            for start in range(0, batch, step):
                part = slice(start, start + step)
                chunk_target = target[part] if isinstance(target, torch.Tensor) else target
                results.append(self._explain_batch(autograd_ready(x[part].to(device)), chunk_target, topk))
        # One batch needs no concatenation, which would copy the maps (large for all classes).
        maps, targets, logits = (parts[0].to(x.device) if len(parts) == 1 else torch.cat(parts).to(x.device)
                                 for parts in zip(*results))
        if not several:
            maps, targets = maps[:, 0], targets[:, 0]
        return CAMExplanation(logits, maps, targets)

    def _explain_batch(self, x: torch.Tensor, target, topk: int | None):
        """(maps (B, T, H, W), targets (B, T), scores (B, C)) of one batch."""
        with (_capture_activation(self.layer, self.layer_name, x.shape[0], self.needs_gradients) as capture,
              torch.no_grad(), input_errors("x", x)):
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
