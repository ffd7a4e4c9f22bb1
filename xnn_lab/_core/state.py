"""A model's state, saved and restored: what every explainer, metric and trainer must give back.

A function that takes the caller's model may need it in eval mode, or some parameters frozen,
for the length of a call. ``model_state`` sets that up and, on the way out (errors included),
gives every module back its *own* train/eval flag (``model.train(was_training)`` would flatten
a backbone the user froze in eval mode), every parameter its ``requires_grad`` flag and its
``.grad``. The model is never moved: functions compute on :func:`model_device` and move their
inputs there instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def model_state(model: nn.Module, *, mode: str | None = "eval",
                requires_grad: bool | None = None) -> Iterator[nn.Module]:
    """Within the block: ``model`` in ``mode``; afterwards, each module's and parameter's own state.

    Args:
        model: the caller's model.
        mode: ``"eval"`` or ``"train"`` for every module, or ``None`` to leave the modes as they are.
        requires_grad: set every parameter's flag to this within the block (``None``: leave them).

    Yields:
        the model itself.
    """
    modes = [(module, module.training) for module in model.modules()]
    params = [(param, param.requires_grad, param.grad) for param in model.parameters()]
    try:
        if mode is not None:
            model.train(mode == "train")
        if requires_grad is not None:
            for param, _, _ in params:
                param.requires_grad_(requires_grad)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, flag, grad in params:
            param.requires_grad_(flag)
            param.grad = grad


def model_device(model: nn.Module, fallback: torch.device | str | None = None) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); ``fallback`` (else the CPU) if it has none."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    if tensor is not None:
        return tensor.device
    return torch.device(fallback) if fallback is not None else torch.device("cpu")


@contextlib.contextmanager
def gradients_enabled() -> Iterator[None]:
    """Autograd on within the block, even when the caller wraps the call in ``torch.no_grad()``
    or ``torch.inference_mode()`` (a common way to wrap an evaluation). Tensors made inside
    inference mode cannot take part in a backward: pass inputs through :func:`autograd_ready`."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def autograd_ready(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a plain copy of it when it was made inside ``torch.inference_mode()``."""
    if not x.is_inference():
        return x
    with torch.inference_mode(False):
        return x.clone()
