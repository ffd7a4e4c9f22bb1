"""The ground truth for influence: minimise :math:`R(\\theta)` exactly (``train_to_optimum``), and
retrain without each of a list of points (``leave_one_out``), full-batch, by Newton's method
(batched over the retrainings) or L-BFGS.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.func import grad, jacfwd, vmap

from xnn_lab._core.checks import _describe, check_choice
from xnn_lab._core.state import model_state
from xnn_lab.influence._objective import (EXACT_MAX_PARAMS, LossFn, _Objective, _prepare,
                                          _solver_settings)

SOLVERS = ("newton", "lbfgs")
# Newton builds one Hessian per retraining; the batched jvps cost about runs x params x rows.
_NEWTON_BUDGET = 2**22
_ARMIJO = 1e-4
_BACKTRACK_STEPS = 20


def _minimize(objective: _Objective, thetas: torch.Tensor, weights: torch.Tensor, X, y, solver: str,
              tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise :math:`R_w(\\theta)` for each row w of ``weights`` (k, n), starting from ``thetas`` (k, p).

    Returns the minimisers (k, p) and their largest absolute gradient entries (k,).
    """
    if solver == "lbfgs":
        return _lbfgs(objective, thetas, weights, X, y, tol, max_iter)
    if objective.size > EXACT_MAX_PARAMS:
        raise ValueError(f"solver='newton' builds {objective.size} x {objective.size} Hessians, above the limit "
                         f"of {EXACT_MAX_PARAMS} parameters: use solver='lbfgs'")
    gradient = grad(objective.risk)
    group = max(1, _NEWTON_BUDGET // (objective.size * len(X)))
    results = [_newton(objective, gradient, thetas[s:s + group], weights[s:s + group], X, y, tol, max_iter)
               for s in range(0, len(thetas), group)]
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


def _newton(objective, gradient, thetas, weights, X, y, tol, max_iter):
    """Newton's method, batched over the runs by vmap, with a backtracking (Armijo) line search."""
    risks = vmap(objective.risk, in_dims=(0, None, None, 0))
    gradients = vmap(gradient, in_dims=(0, None, None, 0))
    hessians = vmap(jacfwd(gradient), in_dims=(0, None, None, 0))
    steps = 0.5 ** torch.arange(_BACKTRACK_STEPS, dtype=thetas.dtype, device=thetas.device)
    eps = torch.finfo(thetas.dtype).eps
    for _ in range(max_iter):
        G = gradients(thetas, X, y, weights)
        if G.abs().amax() <= tol:
            break
        H = hessians(thetas, X, y, weights)
        factor, info = torch.linalg.cholesky_ex(H)
        # Where a Hessian is not positive definite (non-convex), fall back to steepest descent.
        direction = torch.where((info == 0)[:, None], -torch.cholesky_solve(G[..., None], factor)[..., 0], -G)
        current = risks(thetas, X, y, weights)
        slope = (G * direction).sum(1)
        trial = thetas[:, None] + steps[None, :, None] * direction[:, None]  # (k, steps, p)
        trial_risks = risks(trial.flatten(0, 1), X, y, weights.repeat_interleave(len(steps), 0))
        # Armijo's condition, with slack for rounding once the decrease is below the dtype's precision.
        bound = current[:, None] + _ARMIJO * steps[None] * slope[:, None] + 10 * eps * current.abs()[:, None]
        ok = trial_risks.view(len(thetas), len(steps)) <= bound
        first = torch.where(ok.any(1), ok.float().argmax(1), len(steps) - 1)
        thetas = trial[torch.arange(len(thetas)), first]
    G = gradients(thetas, X, y, weights)
    return thetas, G.abs().amax(1)


def _lbfgs(objective, thetas, weights, X, y, tol, max_iter):
    """Full-batch L-BFGS with a strong Wolfe line search, one run after another (non-convex models)."""
    results, sizes = [], []
    for theta0, w in zip(thetas, weights):
        theta = theta0.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                                      tolerance_grad=tol, tolerance_change=0.0, history_size=50,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            value = objective.risk(theta, X, y, w)
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(closure)
        theta = theta.detach()
        results.append(theta)
        sizes.append(grad(objective.risk)(theta, X, y, w).abs().amax())
    return torch.stack(results), torch.stack(sizes)


def _warn_unconverged(sizes: torch.Tensor, tol: float, max_iter: int, solver: str) -> None:
    if (sizes > tol).any():
        warnings.warn(f"{solver} reached max |gradient| {float(sizes.max()):.2e} > tol={tol:.1e} after "
                      f"max_iter={max_iter} iterations in {int((sizes > tol).sum())} of {len(sizes)} runs",
                      RuntimeWarning, stacklevel=3)


def train_to_optimum(model: nn.Module, loss_fn: LossFn, train, weight_decay: float = 0.0, params=None, *,
                     solver: str = "newton", tol: float | None = None, max_iter: int | None = None,
                     batch_size: int = 512) -> float:
    """Minimise :math:`R(\\theta)` over the chosen parameters, full-batch, from their current values.

    Influence functions assume :math:`\\hat\\theta` is the minimiser; minibatch training stops
    short of it. Writes the result into the chosen parameters, in place: the one function of
    :mod:`xnn_lab.influence` that changes the model. The objective is evaluated in eval mode;
    each module's mode, each parameter's ``requires_grad`` and ``.grad``, and the device stay as
    they were.

    Args:
        model, loss_fn, params, weight_decay, batch_size: as for ``influence``.
        train: (X, y) with n examples, or a dataset.
        solver: ``"newton"`` (exact Hessians, batched; for convex objectives with few parameters)
            or ``"lbfgs"`` (``torch.optim.LBFGS`` with strong Wolfe line search).
        tol: stop when :math:`\\max_j |\\partial R / \\partial \\theta_j|` is below it; by default
            1e-10 (Newton) or 1.5e-8 (L-BFGS) in float64, ~1e-5 or ~3e-4 in float32.
        max_iter: most iterations (Newton 100, L-BFGS 1000).

    Returns:
        the largest absolute entry of :math:`\\nabla R` reached.
    """
    solver = check_choice("solver", solver, SOLVERS)
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, weight_decay, batch_size, {"train": train})
        _, (X, y) = pairs["train"]
        tol, max_iter = _solver_settings(solver, objective.theta.dtype, tol, max_iter)
        weights = torch.ones(1, len(X), dtype=objective.theta.dtype, device=objective.device)
        thetas, sizes = _minimize(objective, objective.theta[None], weights, X, y, solver, tol, max_iter)
        _warn_unconverged(sizes, tol, max_iter, solver)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in objective.unflatten(thetas[0]).items():
                named[name].copy_(value)
    return float(sizes[0])


def leave_one_out(model: nn.Module, loss_fn: LossFn, train, test, indices, weight_decay: float = 0.0,
                  params=None, *, solver: str = "newton", tol: float | None = None,
                  max_iter: int | None = None, batch_size: int = 512) -> torch.Tensor:
    """Actual change of each test loss when each listed training point is removed and the model retrained.

    The reduced objective keeps the full set's normalisation, :math:`R_{-i}(\\theta) =
    \\frac{1}{n} \\sum_{j \\ne i} L(z_j, \\theta) + \\frac{\\lambda}{2} \\lVert\\theta\\rVert^2`
    (the :math:`\\epsilon = -1/n` of the influence function; a mean over :math:`n - 1` points would
    also raise the regularisation by a factor :math:`n/(n-1)`). Each retraining starts from the
    current parameters (warm start) and runs full-batch to ``tol``; the full objective is
    re-minimised the same way, and changes are measured from that optimum. The model is not changed.

    Args:
        model, loss_fn, weight_decay, params, batch_size: as for ``influence``.
        train: (X, y) with n examples, or a dataset.
        test: (X, y) with m examples, or a dataset.
        indices: k training indices to remove, one at a time (a sequence or 1-D integer tensor).
        solver: ``"newton"`` (all k retrainings batched by vmap; convex, few parameters) or
            ``"lbfgs"`` (one after another; for non-convex models).
        tol: stop when :math:`\\max_j |\\partial R_{-i} / \\partial \\theta_j|` is below it; by
            default 1e-10 (Newton) or 1.5e-8 (L-BFGS) in float64, ~1e-5 or ~3e-4 in float32.
        max_iter: most iterations per retraining (Newton 100, L-BFGS 1000).

    Returns:
        (m, k) on test X's device: :math:`L(z_t, \\hat\\theta_{-i}) - L(z_t, \\hat\\theta)`.
    """
    solver = check_choice("solver", solver, SOLVERS)
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, weight_decay, batch_size,
                                    {"train": train, "test": test})
        _, (X, y) = pairs["train"]
        test_original, (X_test, y_test) = pairs["test"]
        index = _check_indices(indices, len(X)).to(objective.device)
        tol, max_iter = _solver_settings(solver, objective.theta.dtype, tol, max_iter)
        dtype = objective.theta.dtype
        weights = torch.ones(len(index) + 1, len(X), dtype=dtype, device=objective.device)
        weights[torch.arange(1, len(index) + 1, device=objective.device), index] = 0.0
        starts = objective.theta.expand(len(weights), -1)
        thetas, sizes = _minimize(objective, starts, weights, X, y, solver, tol, max_iter)
        _warn_unconverged(sizes, tol, max_iter, solver)
        start_gradient = grad(objective.risk)(objective.theta, X, y).abs().amax()
        if start_gradient > math.sqrt(tol):
            warnings.warn(f"the model is not at the minimum of R (max |gradient| {float(start_gradient):.1e}): "
                          "influence at these parameters does not predict these changes; call "
                          "train_to_optimum first", RuntimeWarning, stacklevel=2)
        test_losses = vmap(objective.losses, in_dims=(0, None, None))(thetas, X_test, y_test)  # (k + 1, m)
        return (test_losses[1:] - test_losses[0]).T.to(test_original.device)


def _check_indices(indices, n: int) -> torch.Tensor:
    index = torch.as_tensor(indices) if not isinstance(indices, torch.Tensor) else indices
    if index.ndim != 1 or len(index) == 0 or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(f"indices must be a non-empty 1-D sequence of integer training indices, got "
                         f"{_describe(indices)}")
    if int(index.min()) < 0 or int(index.max()) >= n:
        raise ValueError(f"indices must lie in [0, {n}) (the training set's size), got values from "
                         f"{int(index.min())} to {int(index.max())}")
    return index.long()
