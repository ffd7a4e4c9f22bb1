"""Influence functions (Koh and Liang, 2017) at the current parameters: per-example gradients,
the Hessian of :math:`R`, and the influence of every training point on every test point (and on
itself), with three inverse-HVP solvers: exact (Cholesky), conjugate gradients and LiSSA.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from xnn_lab._core.checks import check_choice, check_float, check_int
from xnn_lab._core.state import model_state
from xnn_lab.influence._objective import (EXACT_MAX_PARAMS, LossFn, _Objective, _prepare,
                                          _solver_settings)

METHODS = ("exact", "cg", "lissa")


# ----------------------------------------------------------------------------- inverse-HVP solvers


def _solve(objective: _Objective, B: torch.Tensor, X, y, method: str, damping: float, tol: float,
           max_iter: int, lissa_scale: float | None, seed: int) -> torch.Tensor:
    """Rows of :math:`(H + \\delta I)^{-1} b` for the rows b of B (k, p)."""
    if method == "exact":
        if objective.size > EXACT_MAX_PARAMS:
            raise ValueError(f"method='exact' builds the {objective.size} x {objective.size} Hessian, above "
                             f"the limit of {EXACT_MAX_PARAMS} parameters: use method='cg' or method='lissa', "
                             "or select fewer parameters with params= (e.g. the last layer)")
        A = objective.hessian(X, y) + damping * torch.eye(objective.size, dtype=B.dtype, device=B.device)
        return _solve_exact(A, B)
    hvp = objective.hvp_operator(X, y)
    apply = lambda V: hvp(V) + damping * V
    # Right-hand sides in blocks: each HVP holds a block x rows of intermediate values.
    blocks = B.split(objective.batch_size)
    if method == "cg":
        return torch.cat([_conjugate_gradients(apply, block, tol, max_iter) for block in blocks])
    if lissa_scale is None:
        # Converges when s > lambda_max / 2; 1.1 x the power-iteration estimate leaves room.
        lissa_scale = 1.1 * _largest_eigenvalue(apply, objective.size, B.dtype, B.device, seed)
    return torch.cat([_lissa(apply, block, tol, max_iter, lissa_scale) for block in blocks])


def _solve_exact(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Cholesky when A is positive definite, an LU solve (with a warning) when it is not."""
    factor, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B.T, factor).T
    warnings.warn("the Hessian (plus damping) is not positive definite, so theta-hat is not a strict "
                  "minimum and the influence approximation is unreliable; add damping", RuntimeWarning,
                  stacklevel=3)
    try:
        return torch.linalg.solve(A, B.T).T
    except torch.linalg.LinAlgError as error:
        raise ValueError("the Hessian (plus damping) is singular: pass damping > 0 or weight_decay > 0") from error


def _conjugate_gradients(apply, B, tol, max_iter):
    """Conjugate gradients on all right-hand sides at once; stops at relative residual ``tol``."""
    x = torch.zeros_like(B)
    r = B.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    target = tol * B.norm(dim=1)
    for _ in range(max_iter):
        active = rs.sqrt() > target
        if not active.any():
            return x
        Ap = apply(p)
        curvature = (p * Ap).sum(1)
        if (curvature[active] <= 0).any():
            raise ValueError("conjugate gradients met negative curvature: the Hessian is not positive "
                             "definite (a non-convex model); pass damping > 0 or use method='exact'")
        alpha = torch.where(active, rs / curvature.where(active, torch.ones_like(curvature)), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rs_new = (r * r).sum(1)
        p = r + torch.where(active, rs_new / rs.where(active, torch.ones_like(rs)), 0.0)[:, None] * p
        rs = rs_new
    if (rs.sqrt() > target).any():
        worst = float((rs.sqrt() / B.norm(dim=1).clamp_min(1e-300)).max())
        warnings.warn(f"conjugate gradients stopped after max_iter={max_iter} iterations at relative "
                      f"residual {worst:.2e} > tol={tol:.1e}", RuntimeWarning, stacklevel=3)
    return x


def _largest_eigenvalue(apply, p, dtype, device, seed, steps=50) -> float:
    """Power iteration from a seeded random start."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(1, p, generator=generator, dtype=dtype).to(device)
    v = v / v.norm()
    value = 0.0
    for _ in range(steps):
        w = apply(v)
        value = float((v * w).sum())
        v = w / w.norm()
    return value


def _lissa(apply, B, tol, max_iter, scale):
    """LiSSA (Agarwal et al., 2017) with full-batch HVPs: the Neumann series
    :math:`v \\leftarrow b + (I - A/s) v`, whose fixed point is :math:`s A^{-1} b`.

    The step :math:`b - A v / s` is the residual of the current solution :math:`v / s`, so the
    stopping rule is the same relative residual as for conjugate gradients.
    """
    if scale <= 0:
        raise ValueError(f"lissa needs a positive scale; the Hessian's largest eigenvalue estimate gave {scale}")
    v = B.clone()
    target = tol * B.norm(dim=1)
    first = None
    for _ in range(max_iter):
        step = B - apply(v) / scale
        size = step.norm(dim=1)
        if not torch.isfinite(size).all() or (first is not None and (size > 1e3 * first).any()):
            raise ValueError(f"lissa diverged with lissa_scale={scale:.3g}: the scale must exceed half the "
                             "Hessian's largest eigenvalue and the Hessian must be positive definite "
                             "(pass a larger lissa_scale, or damping > 0)")
        first = size if first is None else first
        if (size <= target).all():
            return v / scale
        v = v + step
    warnings.warn(f"lissa stopped after max_iter={max_iter} iterations above tol={tol:.1e}; "
                  "raise max_iter or damping", RuntimeWarning, stacklevel=3)
    return v / scale


# ----------------------------------------------------------------------------- public functions


def per_example_gradients(model: nn.Module, loss_fn: LossFn, data, params=None, *,
                          batch_size: int = 512) -> torch.Tensor:
    """Gradients :math:`\\nabla_\\theta L(z_i, \\theta)` of every example, by ``torch.func.vmap``.

    Args:
        model: the network, at its current parameters (evaluated in eval mode).
        loss_fn: ``loss_fn(output, y)`` -> per-example losses (B,).
        data: (X, y) with N examples, or a dataset.
        params: which parameters :math:`\\theta` holds (see the module docstring).
        batch_size: examples per vmap call.

    Returns:
        (N, p) on X's device, p the number of chosen parameters, flattened in the order of
        ``model.named_parameters()``.
    """
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, 0.0, batch_size, {"data": data})
        original, (X, y) = pairs["data"]
        return objective.gradients(X, y).to(original.device)


def hessian(model: nn.Module, loss_fn: LossFn, train, weight_decay: float = 0.0, params=None, *,
            batch_size: int = 512) -> torch.Tensor:
    """The Hessian :math:`H = \\nabla^2 R(\\theta)` of the training objective at the current parameters.

    Args:
        model, loss_fn, params: as for ``influence``.
        train: (X, y) with n examples, or a dataset.
        weight_decay: :math:`\\lambda`, adding :math:`\\lambda I`.
        batch_size: rows per forward pass.

    Returns:
        (p, p), symmetric, on X's device.
    """
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, weight_decay, batch_size, {"train": train})
        original, (X, y) = pairs["train"]
        if objective.size > EXACT_MAX_PARAMS:
            raise ValueError(f"hessian of {objective.size} parameters exceeds the limit of {EXACT_MAX_PARAMS}; "
                             "select fewer parameters with params=")
        return objective.hessian(X, y).to(original.device)


def influence(model: nn.Module, loss_fn: LossFn, train, test, weight_decay: float = 0.0,
              damping: float = 0.0, method: str = "exact", params=None, *, tol: float | None = None,
              max_iter: int | None = None, lissa_scale: float | None = None, seed: int = 0,
              batch_size: int = 512) -> torch.Tensor:
    """Predicted change of each test loss when each training point is removed (Koh and Liang).

    ``scores[t, i]`` is :math:`\\frac{1}{n} \\nabla L(z_t)^\\top (H + \\delta I)^{-1} \\nabla L(z_i)`
    at the current parameters, which should be the minimiser :math:`\\hat\\theta` of
    :math:`R(\\theta)` (see ``train_to_optimum``). Positive: :math:`z_i` helps :math:`z_t`.

    Args:
        model: the trained network, evaluated in eval mode (each module's mode is restored).
        loss_fn: ``loss_fn(output, y)`` -> per-example losses (B,) (``reduction='none'``).
        train: (X, y) with n examples, or a dataset: the training set of :math:`R`.
        test: (X, y) with m examples, or a dataset, shaped like ``train``.
        weight_decay: :math:`\\lambda` in :math:`R` (on the chosen parameters).
        damping: :math:`\\delta`, added to the Hessian's diagonal (for non-convex models).
        method: ``"exact"`` (explicit Hessian, Cholesky solve; at most ``EXACT_MAX_PARAMS``
            parameters), ``"cg"`` (conjugate gradients) or ``"lissa"`` (Neumann series), the last
            two on Hessian-vector products only.
        params: which parameters :math:`\\theta` holds (see the module docstring).
        tol: relative residual at which CG and LiSSA stop; 1e-10 in float64, ~1e-5 in float32.
        max_iter: most CG (1000) or LiSSA (20000) iterations.
        lissa_scale: LiSSA's :math:`s`, above half the largest eigenvalue of :math:`H + \\delta I`;
            by default 1.1 times a power-iteration estimate of it.
        seed: seeds the power iteration's start vector.
        batch_size: examples per forward pass and per vmap call, and right-hand sides per CG or
            LiSSA solve.

    Returns:
        (m, n) on test X's device.
    """
    method = check_choice("method", method, METHODS)
    damping = check_float("damping", damping, minimum=0.0)
    check_int("seed", seed, minimum=0)
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, weight_decay, batch_size,
                                    {"train": train, "test": test})
        _, (X, y) = pairs["train"]
        test_original, (X_test, y_test) = pairs["test"]
        tol, max_iter = _solver_settings(method, objective.theta.dtype, tol, max_iter, lissa_scale)
        # Koh and Liang's s_test: solve once per test point, then one dot product per training point.
        s_test = _solve(objective, objective.gradients(X_test, y_test), X, y, method, damping, tol, max_iter,
                        lissa_scale, seed)
        scores = torch.cat([s_test @ G.T for G in objective.gradient_chunks(X, y)], dim=1) / len(X)
    return scores.to(test_original.device)


def self_influence(model: nn.Module, loss_fn: LossFn, train, weight_decay: float = 0.0,
                   damping: float = 0.0, method: str = "exact", params=None, *, tol: float | None = None,
                   max_iter: int | None = None, lissa_scale: float | None = None, seed: int = 0,
                   batch_size: int = 512) -> torch.Tensor:
    """Predicted rise of each training point's own loss when it is removed.

    ``scores[i]`` is :math:`\\frac{1}{n} \\nabla L(z_i)^\\top (H + \\delta I)^{-1} \\nabla L(z_i)`:
    the diagonal of ``influence(model, loss_fn, train, train, ...)``, without the n x n matrix.
    Large values mark points the model cannot explain from the others, such as wrong labels.

    Args:
        model, loss_fn, train, weight_decay, damping, method, params: as for ``influence``.
        tol, max_iter, lissa_scale, seed, batch_size: as for ``influence``.

    Returns:
        (n,) on train X's device.
    """
    method = check_choice("method", method, METHODS)
    damping = check_float("damping", damping, minimum=0.0)
    check_int("seed", seed, minimum=0)
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, weight_decay, batch_size, {"train": train})
        original, (X, y) = pairs["train"]
        tol, max_iter = _solver_settings(method, objective.theta.dtype, tol, max_iter, lissa_scale)
        G = objective.gradients(X, y)
        S = _solve(objective, G, X, y, method, damping, tol, max_iter, lissa_scale, seed)
        return ((G * S).sum(1) / len(X)).to(original.device)
