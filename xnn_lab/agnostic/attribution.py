"""captum's attribution methods as saliency explainers, and the feature masks they take on images.

One adapter, :class:`CaptumExplainer`, turns any captum attribution object (Occlusion, Lime,
KernelShap, Saliency, IntegratedGradients, NoiseTunnel for SmoothGrad, ...) into the package's
saliency explainer, ``explainer(x, target=None) -> (B, H, W)``, so the metrics, sanity checks,
stability estimates and widgets take captum's methods exactly as they take Grad-CAM.
"""

from __future__ import annotations

import torch
from torch import nn

from xnn_lab._core.checks import check_device, check_finite, check_int, check_tensor, input_errors
from xnn_lab._core.state import autograd_ready, gradients_enabled, model_device, model_state
from xnn_lab._core.training import _rng_devices


class CaptumExplainer:
    """A captum attribution method as a saliency explainer.

    Calling it runs ``method.attribute(x, target=target, **attribute_kwargs)`` with the model in
    eval mode (each module's own flag restored afterwards), with autograd on even inside
    ``torch.no_grad()``, and sums image attributions (B, C, H, W) over their channels into maps
    (B, H, W); attributions of other shapes ((B, F) for tabular inputs) come back as they are.

    Args:
        method: a captum attribution object built on the model, such as ``Occlusion(model)`` or
            ``NoiseTunnel(Saliency(model))``; its ``forward_func`` must be the model (an
            ``nn.Module``), which the explainer exposes as ``.model``.
        per_image: attribute one image at a time; captum's ``Lime`` and ``KernelShap`` fit one
            surrogate per call, so they need it for a batch.
        seed: seeds the method's random draws (LIME's and KernelSHAP's samples, SmoothGrad's
            noise) afresh for each call of the method (each image, with ``per_image``) in a forked
            generator, so that an explanation is a
            function of its input and the caller's random stream is left alone; ``None`` draws
            from the global generator.
        **attribute_kwargs: passed to ``method.attribute`` on every call (``baselines``,
            ``feature_mask``, ``n_samples``, ``sliding_window_shapes``, ...).
    """

    def __init__(self, method, *, per_image: bool = False, seed: int | None = None, **attribute_kwargs):
        if not callable(getattr(method, "attribute", None)):
            raise TypeError(f"method must be a captum attribution object (with .attribute), got {type(method).__name__}")
        if not isinstance(getattr(method, "forward_func", None), nn.Module):
            raise TypeError("method must be built on an nn.Module (its forward_func), got a forward_func of type "
                            f"{type(getattr(method, 'forward_func', None)).__name__}")
        if not isinstance(per_image, bool):
            raise TypeError(f"per_image must be a bool, got {per_image!r}")
        self.method = method
        self.per_image = per_image
        self.seed = None if seed is None else check_int("seed", seed, minimum=0)
        self.attribute_kwargs = attribute_kwargs

    @property
    def model(self) -> nn.Module:
        """The model the method explains."""
        return self.method.forward_func

    def __repr__(self) -> str:
        return f"CaptumExplainer({type(self.method).__name__}, per_image={self.per_image}, seed={self.seed})"

    def __call__(self, x: torch.Tensor, target=None) -> torch.Tensor:
        """Attribution maps of ``x`` for ``target``.

        Args:
            x: (B, C, H, W) images or (B, F) rows, on any device (moved to the model's).
            target: ``None`` (the predicted class), an int, or a (B,) int tensor.

        Returns:
            (B, H, W) maps for images, else the attributions as captum gives them, on ``x``'s device.
        """
        check_tensor("x", x, floating=True)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"x must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
        check_finite("x", x)
        device = model_device(self.model, x.device)
        inputs = autograd_ready(x.detach().to(device))
        with model_state(self.model), gradients_enabled():
            target = self._targets(inputs, target)
            if self.per_image:
                parts = [self._attribute(inputs[i:i + 1], target[i:i + 1]) for i in range(len(inputs))]
                attributions = torch.cat(parts)
            else:
                attributions = self._attribute(inputs, target)
        attributions = attributions.detach()
        return (attributions.sum(1) if attributions.ndim == 4 else attributions).to(x.device)

    def _targets(self, inputs: torch.Tensor, target) -> torch.Tensor:
        """``target`` as a (B,) int64 tensor on the inputs' device, checked against the model's classes."""
        with torch.no_grad(), input_errors("x", inputs):
            logits = self.model(inputs)
        if logits.ndim != 2:
            raise ValueError(f"the model must return (B, C) class scores, got shape {tuple(logits.shape)}")
        classes = logits.shape[1]
        if target is None:
            return logits.argmax(1)
        if isinstance(target, torch.Tensor):
            check_tensor("target", target, ndim=1, integral=True)
            if len(target) != len(inputs):
                raise ValueError(f"target must have one class per input ({len(inputs)}), got shape {tuple(target.shape)}")
            target = target.to(inputs.device, torch.int64)
        else:
            target = torch.full((len(inputs),), check_int("target", target, minimum=0), device=inputs.device)
        if int(target.min()) < 0 or int(target.max()) >= classes:
            raise ValueError(f"target must hold classes in [0, {classes}) for a model with {classes} outputs, "
                             f"got values from {int(target.min())} to {int(target.max())}")
        return target

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.seed is None:
            return self.method.attribute(inputs, target=target, **self.attribute_kwargs)
        with torch.random.fork_rng(devices=_rng_devices(inputs.device)):
            torch.manual_seed(self.seed)
            return self.method.attribute(inputs, target=target, **self.attribute_kwargs)


def grid_segments(height: int, width: int, cell: int, *,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """A feature mask of square ``cell`` x ``cell`` patches, numbered row-major from 0.

    For captum's ``Lime``, ``KernelShap`` and ``FeatureAblation`` ``feature_mask`` on images:
    every pixel of a patch is one feature. Patches at the right and bottom edges are smaller
    when ``cell`` does not divide the size. For a (N, C, H, W) input pass ``mask[None, None]``.

    Args:
        height: image height H, at least 1.
        width: image width W, at least 1.
        cell: patch side in pixels, at least 1.
        device: where to put the mask (the input's device, for captum).

    Returns:
        the mask, shape (H, W), int64, with values ``0 .. ceil(H / cell) * ceil(W / cell) - 1``.
    """
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    cell = check_int("cell", cell, minimum=1)
    device = check_device("device", device)
    cells_per_row = -(-width // cell)
    rows = torch.arange(height, device=device) // cell
    cols = torch.arange(width, device=device) // cell
    return rows[:, None] * cells_per_row + cols[None, :]
