r"""Stability of explanations: the local Lipschitz estimate
:math:`\hat{L}(x) = \max_{x' \in B_r(x)} \lVert e(x) - e(x') \rVert_2 / \lVert x - x' \rVert_2`,
found by random sampling in the ball and, for differentiable explanations, projected gradient ascent."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from xnn_lab._core.checks import check_finite, check_float, check_int, check_tensor
from xnn_lab._core.state import autograd_ready, gradients_enabled

# Points closer to x than this share of the radius are pushed out to it during the ascent: the ratio
# is a quotient of two small differences there, and float rounding would dominate it.
_MIN_DISTANCE = 1e-3


class LipschitzEstimate(NamedTuple):
    """The local Lipschitz estimate of an explanation at each input, and where it was attained.

    Attributes:
        values: :math:`\\hat{L}(x)`, shape (B,): the largest ratio found, a lower bound of the
            true local Lipschitz constant over the ball.
        points: the x' that attained it, shape (B, ...) like x.
    """

    values: torch.Tensor
    points: torch.Tensor


def _explain(explainer: Callable, points: torch.Tensor) -> torch.Tensor:
    """explainer on a batch, flattened to (N, D_e), with its output checked."""
    out = explainer(points)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"explainer must return a torch.Tensor, got {type(out).__name__}")
    if out.ndim == 0 or out.shape[0] != len(points):
        raise ValueError(f"explainer must map {len(points)} inputs to {len(points)} explanations "
                         f"(first dimension {len(points)}), got shape {tuple(out.shape)}")
    return out.flatten(1)


def _ratios(explainer, x: torch.Tensor, reference: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """||e(x + delta) - e(x)|| / ||delta|| for delta (B, N, D), as (B, N)."""
    batch, num, _ = delta.shape
    points = (x.flatten(1)[:, None] + delta).reshape(batch * num, *x.shape[1:])
    explanations = _explain(explainer, points)
    if delta.requires_grad and not explanations.requires_grad:
        raise ValueError("steps > 0 needs an explainer that autograd can differentiate (its output does "
                         "not depend on its input through autograd); pass steps=0 for random sampling only")
    change = explanations.reshape(batch, num, -1) - reference[:, None]
    return change.norm(dim=2) / delta.norm(dim=2).clamp_min(torch.finfo(delta.dtype).tiny)


def local_lipschitz(explainer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, radius: float, *,
                    num_samples: int = 32, steps: int = 0, step_size: float | None = None,
                    seed: int = 0) -> LipschitzEstimate:
    r"""Local Lipschitz estimate of an explanation e around each input, found by search.

    :math:`\hat{L}(x) = \max_{x' \in B_r(x)} \lVert e(x) - e(x') \rVert_2 / \lVert x - x' \rVert_2`
    (Alvarez-Melis and Jaakkola, 2018), with :math:`B_r(x)` the Euclidean ball of radius r. The
    search draws ``num_samples`` points uniformly in each ball (random sampling); with
    ``steps > 0`` each point then climbs the ratio by projected gradient ascent (normalised steps
    that shrink linearly to 0, projected back into the ball), which needs an ``explainer`` that
    autograd can differentiate. The largest ratio met anywhere is returned: a lower bound of the
    true maximum. All inputs and points go through ``explainer`` together, one call per step.

    Args:
        explainer: maps inputs (N, ...) to explanations (N, ...), on the inputs' device: a
            saliency explainer as it is (``explainer(x)`` explains the predicted class), or any
            other explanation (a SENN's relevances). A random one (LIME) must fix its own seed
            (``CaptumExplainer(..., seed=0)``), or noise counts as instability.
        x: the inputs, shape (B, ...), floating point.
        radius: r > 0, in the units of x.
        num_samples: points drawn per input, at least 1.
        steps: gradient-ascent steps per point; 0 for random sampling only (for explanations that
            are not differentiable, such as occlusion or LIME through captum).
        step_size: the first step's length; ``radius / 4`` by default.
        seed: seeds the random points.

    Returns:
        a ``LipschitzEstimate``: ``values`` (B,) and the maximising ``points`` (B, ...).
    """
    if not callable(explainer):
        raise TypeError(f"explainer must be callable, got {type(explainer).__name__}")
    check_tensor("x", x, floating=True)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch of shape (B, ...), got shape {tuple(x.shape)}")
    check_finite("x", x)
    radius = check_float("radius", radius, minimum=0.0, open_min=True)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    steps = check_int("steps", steps, minimum=0)
    step_size = radius / 4 if step_size is None else check_float("step_size", step_size, minimum=0.0,
                                                                   open_min=True)
    check_int("seed", seed, minimum=0)

    batch, dim = len(x), x[0].numel()
    x = autograd_ready(x.detach())
    reference = _explain(explainer, x).detach()
    # Uniform in the ball: a uniform direction times radius * U^(1/D). Drawn on the CPU so that a
    # seed gives the same points on every device.
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(batch, num_samples, dim, generator=generator, dtype=torch.float64)
    direction /= direction.norm(dim=2, keepdim=True)
    scale = radius * torch.rand(batch, num_samples, 1, generator=generator, dtype=torch.float64) ** (1 / dim)
    delta = (direction * scale).to(device=x.device, dtype=x.dtype)

    best_values = torch.full((batch,), -math.inf, device=x.device, dtype=x.dtype)
    best_delta = torch.zeros(batch, dim, device=x.device, dtype=x.dtype)
    rows = torch.arange(batch, device=x.device)
    for step in range(steps + 1):
        if step == steps:
            ratios = _ratios(explainer, x, reference, delta)
        else:
            # The ascent needs autograd even inside the caller's no_grad() or inference_mode().
            with gradients_enabled():
                delta = autograd_ready(delta).requires_grad_()
                ratios = _ratios(explainer, x, reference, delta)
                (grad,) = torch.autograd.grad(ratios.sum(), delta)
        values, index = ratios.detach().max(dim=1)
        improved = values > best_values
        best_values = torch.where(improved, values, best_values)
        best_delta = torch.where(improved[:, None], delta.detach()[rows, index], best_delta)
        if step == steps:
            break
        with torch.no_grad():
            length = step_size * (1 - step / steps)
            delta = delta + length * grad / grad.norm(dim=2, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
            norm = delta.norm(dim=2, keepdim=True)
            delta = delta * (norm.clamp(_MIN_DISTANCE * radius, radius) / norm.clamp_min(torch.finfo(norm.dtype).tiny))
    return LipschitzEstimate(best_values, (x.flatten(1) + best_delta).reshape(x.shape))
