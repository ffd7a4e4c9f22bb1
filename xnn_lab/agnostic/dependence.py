"""How a black box's output depends on one feature: ICE curves and partial dependence (chapter 1)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from xnn_lab._core.checks import check_finite, check_int, check_tensor, input_errors
from xnn_lab._core.state import model_state


def _feature_grid(X: torch.Tensor, feature: int, grid, num_points: int) -> torch.Tensor:
    """The grid of ``feature`` values: the user's, or evenly spaced between the 1st and 99th percentiles."""
    if grid is None:
        # Percentiles rather than min/max so that a few outliers do not stretch the grid.
        low, high = torch.quantile(X[:, feature],
                                   torch.tensor([0.01, 0.99], dtype=X.dtype, device=X.device))
        steps = torch.linspace(0, 1, num_points, dtype=X.dtype, device=X.device)
        return low + (high - low) * steps
    check_tensor("grid", grid, ndim=1)
    check_finite("grid", grid)
    if grid.is_complex() or grid.dtype == torch.bool:
        raise TypeError(f"grid must be a real-valued tensor, got dtype {grid.dtype}")
    if len(grid) == 0:
        raise ValueError("grid must hold at least one value, got an empty tensor")
    return grid.to(dtype=X.dtype, device=X.device)


def _select_output(out, rows: int, target: int | None) -> torch.Tensor:
    """The model's output for ``rows`` inputs as a (rows,) tensor, taking column ``target`` if 2-D."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model must return a torch.Tensor, got {type(out).__name__}")
    if out.ndim not in (1, 2) or len(out) != rows:
        raise ValueError(f"model must map ({rows}, F) inputs to ({rows},) or ({rows}, C) outputs, "
                         f"got shape {tuple(out.shape)}")
    if out.ndim == 1:
        if target is not None:
            raise ValueError(f"target must be None for a model with 1-D output, got {target}")
        return out
    if target is None:
        raise ValueError(f"target must pick one of the model's {out.shape[1]} output columns, got None")
    if target >= out.shape[1]:
        raise ValueError(f"target must be < {out.shape[1]} (the model's output columns), got {target}")
    return out[:, target]


def ice_curves(model, X: torch.Tensor, feature: int, grid: torch.Tensor | None = None, *,
               num_points: int = 20, target: int | None = None,
               batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Individual conditional expectation: each sample's output as one feature sweeps a grid.

    ``curves[i, g]`` is the model's output for row ``X[i]`` with column ``feature`` set to
    ``grid[g]``, all other columns unchanged. The N * G modified rows go through the model in
    chunks of ``batch_size``, without gradients, on ``X``'s device.

    Args:
        model: a callable mapping (B, F) to (B,) or (B, C); an ``nn.Module`` runs in eval mode.
        X: the samples, shape (N, F), floating point.
        feature: the column to sweep, ``0 <= feature < F``.
        grid: the values to give the feature, shape (G,); by default ``num_points`` evenly
            spaced values between the feature's 1st and 99th percentiles in ``X``.
        num_points: the size of the default grid, at least 2.
        target: the output column to take when the model's output is 2-D (required then).
        batch_size: how many modified rows go through the model at once.

    Returns:
        ``(grid, curves)``: the grid, shape (G,), and the ICE curves, shape (N, G).
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    check_tensor("X", X, ndim=2, floating=True)
    if len(X) == 0:
        raise ValueError(f"X must have at least one row, got shape {tuple(X.shape)}")
    check_finite("X", X)
    feature = check_int("feature", feature, minimum=0, maximum=X.shape[1] - 1)
    num_points = check_int("num_points", num_points, minimum=2)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if target is not None:
        target = check_int("target", target, minimum=0)
    grid = _feature_grid(X, feature, grid, num_points)

    num_rows, num_grid = len(X), len(grid)
    chunks = []
    # A module runs in eval mode (each module's own flag restored): batch norm must not learn from the sweep.
    with model_state(model) if isinstance(model, nn.Module) else contextlib.nullcontext(), torch.no_grad():
        # Row k of the flattened (N * G) sweep is sample k // G at grid point k % G; building it
        # chunk by chunk keeps memory at batch_size * F however large N * G grows.
        for start in range(0, num_rows * num_grid, batch_size):
            flat = torch.arange(start, min(start + batch_size, num_rows * num_grid), device=X.device)
            rows = X[flat // num_grid]  # advanced indexing copies, so X itself is untouched
            rows[:, feature] = grid[flat % num_grid]
            with input_errors("X", X):
                out = model(rows)
            chunks.append(_select_output(out, len(rows), target))
    return grid, torch.cat(chunks).reshape(num_rows, num_grid)


def partial_dependence(model, X: torch.Tensor, feature: int, grid: torch.Tensor | None = None, *,
                       num_points: int = 20, target: int | None = None,
                       batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Partial dependence: the model's mean output over ``X`` as one feature sweeps a grid.

    The mean of the ICE curves,
    :math:`\mathrm{PD}(v) = \frac{1}{N} \sum_i f(x_i[\mathrm{feature} \leftarrow v])`;
    the arguments are those of :func:`ice_curves`.

    Args:
        model: a callable mapping (B, F) to (B,) or (B, C).
        X: the samples, shape (N, F), floating point.
        feature: the column to sweep.
        grid: the values to give the feature, shape (G,), or ``None`` for the default grid.
        num_points: the size of the default grid, at least 2.
        target: the output column to take when the model's output is 2-D (required then).
        batch_size: how many modified rows go through the model at once.

    Returns:
        ``(grid, pd)``: the grid, shape (G,), and the partial dependence, shape (G,).
    """
    grid, curves = ice_curves(model, X, feature, grid, num_points=num_points, target=target,
                              batch_size=batch_size)
    return grid, curves.mean(0)
