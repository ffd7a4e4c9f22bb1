"""Argument checks shared by the public functions: each error names the argument,
what was expected and what was given."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from numbers import Integral, Real

import torch


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name``; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_float(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                open_min: bool = False) -> float:
    """Return ``value`` as a float, or raise naming ``name``; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {_describe(value)}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if minimum is not None and (value <= minimum if open_min else value < minimum):
        raise ValueError(f"{name} must be {'>' if open_min else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, or raise naming ``name``."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}, got {_describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_tensor(name: str, value, *, ndim: int | tuple[int, ...] | None = None,
                 floating: bool = False, integral: bool = False) -> torch.Tensor:
    """Return ``value`` if it is a tensor of the expected rank and kind, or raise naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if value.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, "
                             f"got {_describe(value)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {_describe(value)}")
    if integral and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {_describe(value)}")
    return value


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Return ``value`` if it holds no NaN or Inf, or raise ``ValueError`` naming ``name``.

    Integer and boolean tensors are finite by construction and pass without a scan.
    """
    if value.is_floating_point() or value.is_complex():
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{name} must be finite, got {bad} NaN or Inf value{'s' * (bad > 1)} in "
                             f"{_describe(value)}")
    return value


def check_images(name: str, value, *, channels: int | None = None) -> torch.Tensor:
    """Return ``value`` if it is a finite floating-point (B, C, H, W) batch of images, or raise
    naming ``name``; with ``channels``, C must equal it."""
    check_tensor(name, value, ndim=4, floating=True)
    if channels is not None and value.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel{'s' * (channels > 1)} in (B, C, H, W), "
                         f"got shape {tuple(value.shape)}")
    return check_finite(name, value)


def check_labels(name: str, value, num_classes: int) -> torch.Tensor:
    """Return ``value`` if it is an integer tensor of class indices in [0, ``num_classes``), or
    raise naming ``name``."""
    check_tensor(name, value, integral=True)
    if value.numel():
        low, high = int(value.min()), int(value.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name} must hold class indices in [0, {num_classes}) (the model's "
                             f"{num_classes} classes), got {low if low < 0 else high}")
    return value


def check_device(name: str, value) -> torch.device | None:
    """``value`` (None, a ``torch.device`` or a name such as ``"cuda:0"``) as a device that exists
    here, or raise naming ``name``."""
    if value is None:
        return None
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name} must be a torch.device, a device name such as 'cpu' or 'cuda', or "
                        f"None, got {_describe(value)}")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name} must name a device such as 'cpu', 'cuda' or 'cuda:1', got {value!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {value!r}, but no CUDA GPU is visible here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {value!r}, but only {torch.cuda.device_count()} CUDA GPUs are visible")
    elif device.type not in ("cpu", "mps", "meta"):
        raise ValueError(f"{name} must be 'cpu' or a CUDA device, got {value!r}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name} is {value!r}, but MPS is not available here")
    return device


def check_parameters_finite(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """Return ``model`` if every parameter and buffer is finite, or raise naming ``name`` and the
    first tensor that is not (a diverged training run leaves NaN weights behind)."""
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} has NaN or Inf values in {key!r}: its weights are broken (a diverged "
                             f"training run?); load or train it again")
    return model


@contextlib.contextmanager
def input_errors(name: str, value: torch.Tensor) -> Iterator[None]:
    """Within the block (a forward pass on ``value``), report an error about the input (a shape,
    a dtype, an index out of range) as a ``ValueError`` that names ``name`` and its shape, with
    PyTorch's reason; errors of the machine (out of memory) pass unchanged."""
    try:
        yield
    except (ValueError, IndexError, RuntimeError) as error:
        if isinstance(error, (torch.OutOfMemoryError, NotImplementedError)):
            raise
        raise ValueError(f"the model failed on {name} of shape {tuple(value.shape)} (does it fit the model's "
                         f"input?): {error}") from error
