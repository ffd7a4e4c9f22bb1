"""Influence functions (Koh and Liang, 2017), leave-one-out ground truth, and TracIn.

In the lecture's notation the training points are :math:`z_i = (x_i, y_i)`, :math:`i = 1..n`,
:math:`L(z, \\theta)` is the loss of one example, and the model is trained to the minimiser
:math:`\\hat\\theta` of

.. math:: R(\\theta) = \\frac{1}{n} \\sum_i L(z_i, \\theta) + \\frac{\\lambda}{2} \\lVert\\theta\\rVert^2 .

Upweighting a point :math:`z` by :math:`\\epsilon` (adding :math:`\\epsilon L(z, \\theta)` to
:math:`R`) moves the minimiser by :math:`d\\hat\\theta / d\\epsilon = -H^{-1} \\nabla L(z, \\hat\\theta)`,
where :math:`H = \\nabla^2 R(\\hat\\theta)` (plus :math:`\\delta I` when damped). Removing
:math:`z_i` is :math:`\\epsilon = -1/n`, so a test loss changes by about

.. math:: L(z_{test}, \\hat\\theta_{-i}) - L(z_{test}, \\hat\\theta) \\approx
   \\frac{1}{n} \\nabla L(z_{test}, \\hat\\theta)^\\top H^{-1} \\nabla L(z_i, \\hat\\theta),

which is what ``influence`` returns: positive for a *helpful* training point (removing it raises
the test loss), negative for a harmful one. ``leave_one_out`` measures the left-hand side by
retraining, and ``tracin`` is the checkpoint-based alternative of Pruthi et al. (2020).

Data are ``(X, y)`` tensor pairs or datasets (``.tensors`` is used when present); ``loss_fn(output,
y)`` must return one loss per example (``reduction='none'``). ``params`` selects which parameters
:math:`\\theta` holds: ``None`` for every trainable parameter, or names (a parameter's name as in
``model.named_parameters()``, or a module's name for all of its parameters, e.g. ``"2"`` for the
last layer of ``nn.Sequential(Linear, ReLU, Linear)``) or the parameter tensors themselves; the
others stay fixed. :math:`\\theta` is flattened in the order of ``model.named_parameters()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd, vjp, vmap

from xnn_lab._checks import _describe, check_choice, check_float, check_int
from xnn_lab.train import tensor_pair

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("exact", "cg", "lissa")
SOLVERS = ("newton", "lbfgs")
# An explicit Hessian of this many parameters takes ~128 MiB in float64 and a solve of seconds.
EXACT_MAX_PARAMS = 4096
# Newton builds one Hessian per retraining; the batched jvps cost about runs x params x rows.
_NEWTON_BUDGET = 2**22
_ARMIJO = 1e-4
_BACKTRACK_STEPS = 20
_DEFAULT_MAX_ITER = {"cg": 1000, "lissa": 20000, "newton": 100, "lbfgs": 1000}


# ----------------------------------------------------------------------------- argument checks


def _default_tol(dtype: torch.dtype, method: str) -> float:
    """A tolerance the dtype can reach: 1e-10 in float64 and ~1e-5 in float32, but ~sqrt(eps) for
    L-BFGS, whose line search compares objective values, which stop changing below that gradient."""
    eps = torch.finfo(dtype).eps
    return math.sqrt(eps) if method == "lbfgs" else max(1e-10, 100 * eps)


def _check_same_kind(train: tuple, test: tuple, test_name: str = "test") -> None:
    """Test examples must look like training examples (per-example shapes of X and of y)."""
    for part, a, b in (("X", train[0], test[0]), ("y", train[1], test[1])):
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"{test_name} {part} must have per-example shape {tuple(a.shape[1:])} like train "
                             f"{part}, got {tuple(b.shape[1:])}")


def _check_model(model, loss_fn) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {_describe(model)}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(output, y), got {_describe(loss_fn)}")


def _select(model: nn.Module, params) -> list[str]:
    """Names of the chosen parameters, in the order of ``model.named_parameters()``."""
    named = dict(model.named_parameters())
    if params is None:
        chosen = {name for name, p in named.items() if p.requires_grad}
        if not chosen:
            raise ValueError("model has no trainable parameters; pass params= to choose some")
        return [name for name in named if name in chosen]
    items = [params] if isinstance(params, (str, torch.Tensor)) else params
    if not isinstance(items, Sequence) or not items:
        raise TypeError(f"params must be None, a name, a tensor, or a non-empty sequence of them, "
                        f"got {_describe(params)}")
    chosen = set()
    for i, item in enumerate(items):
        if isinstance(item, str):
            matches = [name for name in named if name == item or name.startswith(item + ".")]
            if not matches:
                raise ValueError(f"params[{i}] = {item!r} names no parameter or module of model; "
                                 f"parameters are {list(named)[:8]}{' ...' if len(named) > 8 else ''}")
            chosen.update(matches)
        elif isinstance(item, torch.Tensor):
            matches = [name for name, p in named.items() if p is item]
            if not matches:
                raise ValueError(f"params[{i}] is a tensor of shape {tuple(item.shape)} that is not a "
                                 "parameter of model")
            chosen.update(matches)
        else:
            raise TypeError(f"params[{i}] must be a parameter name or a parameter tensor, got {_describe(item)}")
    return [name for name in named if name in chosen]


@contextmanager
def _evaluating(model: nn.Module):
    """Eval mode (dropout off, batch norm frozen) for the duration; the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- the objective


class _Objective:
    """The model, its loss and :math:`R(\\theta)` as functions of a flat vector of the chosen parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, names: list[str], weight_decay: float,
                 batch_size: int, state: Mapping[str, torch.Tensor] | None = None):
        self.model, self.loss_fn, self.names = model, loss_fn, names
        self.weight_decay, self.batch_size = weight_decay, batch_size
        values = {name: t.detach() for name, t in (*model.named_parameters(), *model.named_buffers())}
        if state is not None:
            values.update({name: t.detach().to(values[name].device) for name, t in state.items() if name in values})
        self.fixed = {name: t for name, t in values.items() if name not in names}
        self.shapes = [values[name].shape for name in names]
        self.theta = torch.cat([values[name].reshape(-1) for name in names])
        self.device = self.theta.device

    @property
    def size(self) -> int:
        return self.theta.numel()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = [math.prod(shape) for shape in self.shapes]
        return {name: part.view(shape)
                for name, part, shape in zip(self.names, theta.split(sizes), self.shapes)}

    def losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example losses (B,) at ``theta``."""
        return self.loss_fn(functional_call(self.model, (self.fixed, self.unflatten(theta)), (X,)), y)

    def _example_loss(self, theta, x, y):
        return self.losses(theta, x[None], y[None])[0]

    def gradient_chunks(self, X, y, theta=None) -> Iterator[torch.Tensor]:
        """Per-example gradients :math:`\\nabla L(z_i, \\theta)`, (chunk, p) at a time, by vmap."""
        theta = self.theta if theta is None else theta
        per_example = vmap(grad(self._example_loss), in_dims=(None, 0, 0))
        for start in range(0, len(X), self.batch_size):
            yield per_example(theta, X[start:start + self.batch_size], y[start:start + self.batch_size])

    def gradients(self, X, y, theta=None) -> torch.Tensor:
        return torch.cat(list(self.gradient_chunks(X, y, theta)))

    def risk(self, theta, X, y, weights=None) -> torch.Tensor:
        """:math:`\\frac{1}{n}\\sum_i w_i L(z_i, \\theta) + \\frac{\\lambda}{2}\\lVert\\theta\\rVert^2`,
        with :math:`w_i = 1` by default; chunked over the rows."""
        total = 0.0
        for start in range(0, len(X), self.batch_size):
            part = self.losses(theta, X[start:start + self.batch_size], y[start:start + self.batch_size])
            if weights is not None:
                part = part * weights[start:start + self.batch_size]
            total = total + part.sum()
        return total / len(X) + 0.5 * self.weight_decay * (theta * theta).sum()

    def hvp_operator(self, X, y) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map V (k, p) -> rows :math:`H v` for the rows v of V.

        Reverse over reverse: one pass per chunk of rows builds that chunk's gradient and keeps its
        graph, and each call pulls the rows of V back through the graphs,
        :math:`v^\\top \\nabla^2 R = (H v)^\\top` as H is symmetric; the penalty adds :math:`\\lambda v`.
        """
        pullbacks = []
        for start in range(0, len(X), self.batch_size):
            rows = slice(start, start + self.batch_size)
            chunk_risk = lambda theta, rows=rows: self.losses(theta, X[rows], y[rows]).sum() / len(X)
            pullbacks.append(vjp(grad(chunk_risk), self.theta)[1])
        pull = vmap(lambda v: sum(pullback(v)[0] for pullback in pullbacks))
        return lambda V: pull(V) + self.weight_decay * V

    def hessian(self, X, y) -> torch.Tensor:
        """The (p, p) Hessian of :math:`R`, from HVPs on blocks of unit vectors."""
        apply = self.hvp_operator(X, y)
        eye = torch.eye(self.size, dtype=self.theta.dtype, device=self.device)
        H = torch.cat([apply(eye[s:s + 256]) for s in range(0, self.size, 256)])
        return 0.5 * (H + H.T)  # symmetric in exact arithmetic; remove the rounding asymmetry


def _prepare(model, loss_fn, params, weight_decay, batch_size, data: dict[str, object]):
    """Checks shared by the public functions; returns the objective and the data on its device."""
    _check_model(model, loss_fn)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    names = _select(model, params)
    objective = _Objective(model, loss_fn, names, weight_decay, batch_size)
    pairs = {}
    for name, value in data.items():
        X, y = tensor_pair(name, value, collate=True)
        pairs[name] = (X, (X.to(objective.device), y.to(objective.device)))
    if "train" in pairs:
        for name in pairs:
            if name != "train":
                _check_same_kind(pairs["train"][1], pairs[name][1], name)
    first = next(iter(pairs.values()))[1]
    _check_per_example(objective, *first)
    return objective, pairs


def _check_per_example(objective: _Objective, X, y) -> None:
    """loss_fn must give one loss per example: a mean or sum would make every gradient the batch's."""
    b = min(len(X), 4)
    with torch.no_grad():
        out = objective.losses(objective.theta, X[:b], y[:b])
    if not isinstance(out, torch.Tensor) or out.shape != (b,):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else _describe(out)
        raise ValueError(f"loss_fn must return one loss per example, shape ({b},) for {b} examples "
                         f"(use reduction='none' and sum any other dimensions), got {got}")


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


def _solver_settings(method, dtype, tol, max_iter, lissa_scale=None):
    if lissa_scale is not None:
        check_float("lissa_scale", lissa_scale, minimum=0.0, open_min=True)
    tol = _default_tol(dtype, method) if tol is None else check_float("tol", tol, minimum=0.0, open_min=True)
    max_iter = _DEFAULT_MAX_ITER.get(method, 1) if max_iter is None else check_int("max_iter", max_iter, minimum=1)
    return tol, max_iter


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
    with _evaluating(model):
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
    with _evaluating(model):
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
        model: the trained network, evaluated in eval mode (its mode is restored).
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
    with _evaluating(model):
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
    with _evaluating(model):
        objective, pairs = _prepare(model, loss_fn, params, weight_decay, batch_size, {"train": train})
        original, (X, y) = pairs["train"]
        tol, max_iter = _solver_settings(method, objective.theta.dtype, tol, max_iter, lissa_scale)
        G = objective.gradients(X, y)
        S = _solve(objective, G, X, y, method, damping, tol, max_iter, lissa_scale, seed)
        return ((G * S).sum(1) / len(X)).to(original.device)


def _checkpoint_objectives(objective: _Objective, checkpoints, lrs) -> list[tuple[_Objective, float]]:
    """One objective per checkpoint, with its learning rate; checks names and shapes."""
    if isinstance(checkpoints, Mapping) or not isinstance(checkpoints, Sequence) or not checkpoints:
        raise TypeError(f"checkpoints must be a non-empty sequence of state dicts, got {_describe(checkpoints)}")
    rates = [lrs] * len(checkpoints) if not isinstance(lrs, Sequence) else list(lrs)
    if len(rates) != len(checkpoints):
        raise ValueError(f"lrs must be one number or one per checkpoint ({len(checkpoints)}), got {len(rates)}")
    rates = [check_float(f"lrs[{k}]", rate) for k, rate in enumerate(rates)]
    result = []
    for k, (state, rate) in enumerate(zip(checkpoints, rates)):
        if not isinstance(state, Mapping):
            raise TypeError(f"checkpoints[{k}] must be a state dict, got {_describe(state)}")
        for name, shape in zip(objective.names, objective.shapes):
            if name not in state or tuple(state[name].shape) != tuple(shape):
                got = tuple(state[name].shape) if name in state else "missing"
                raise ValueError(f"checkpoints[{k}] must hold {name!r} of shape {tuple(shape)}, got {got}")
        result.append((_Objective(objective.model, objective.loss_fn, objective.names, 0.0,
                                  objective.batch_size, state), rate))
    return result


def tracin(model: nn.Module, loss_fn: LossFn, checkpoints: Sequence[Mapping[str, torch.Tensor]], train, test,
           lrs, params=None, *, batch_size: int = 512) -> torch.Tensor:
    """TracInCP (Pruthi et al., 2020): gradient dot products summed over saved checkpoints.

    ``scores[t, i]`` is :math:`\\sum_k \\eta_k \\nabla L(z_t, \\theta_k)^\\top \\nabla L(z_i, \\theta_k)`,
    the first-order drop of the test loss that the SGD steps on :math:`z_i` caused, as in the paper and
    captum's ``TracInCP``. Positive marks a proponent, as in ``influence``, but the scale is different:
    no Hessian, no :math:`1/n`, and a sum over training rather than a removal at the end.

    Args:
        model: the architecture; the checkpoints give its parameter values (the model is not changed).
        loss_fn: ``loss_fn(output, y)`` -> per-example losses (B,).
        checkpoints: K state dicts (``model.state_dict()`` copies) saved during training.
        train: (X, y) with n examples, or a dataset.
        test: (X, y) with m examples, or a dataset.
        lrs: the learning rate :math:`\\eta_k` in use after each checkpoint: one number or K numbers.
        params: which parameters :math:`\\theta` holds (see the module docstring).
        batch_size: examples per vmap call.

    Returns:
        (m, n) on test X's device.
    """
    with _evaluating(model):
        objective, pairs = _prepare(model, loss_fn, params, 0.0, batch_size, {"train": train, "test": test})
        _, (X, y) = pairs["train"]
        test_original, (X_test, y_test) = pairs["test"]
        scores = 0.0
        for at_k, rate in _checkpoint_objectives(objective, checkpoints, lrs):
            G_test = at_k.gradients(X_test, y_test)
            scores = scores + rate * torch.cat([G_test @ G.T for G in at_k.gradient_chunks(X, y)], dim=1)
    return scores.to(test_original.device)


def tracin_self_influence(model: nn.Module, loss_fn: LossFn, checkpoints: Sequence[Mapping[str, torch.Tensor]],
                          train, lrs, params=None, *, batch_size: int = 512) -> torch.Tensor:
    """TracIn's self-influence :math:`\\sum_k \\eta_k \\lVert\\nabla L(z_i, \\theta_k)\\rVert^2` of every
    training point: the diagonal of ``tracin(..., train, train, ...)`` without the n x n matrix.

    Args:
        model, loss_fn, checkpoints, lrs, params, batch_size: as for ``tracin``.
        train: (X, y) with n examples, or a dataset.

    Returns:
        (n,) on train X's device.
    """
    with _evaluating(model):
        objective, pairs = _prepare(model, loss_fn, params, 0.0, batch_size, {"train": train})
        original, (X, y) = pairs["train"]
        scores = 0.0
        for at_k, rate in _checkpoint_objectives(objective, checkpoints, lrs):
            scores = scores + rate * torch.cat([(G * G).sum(1) for G in at_k.gradient_chunks(X, y)])
    return scores.to(original.device)


# ----------------------------------------------------------------------------- retraining


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
    short of it. Writes the result into the model's parameters.

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
    with _evaluating(model):
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
    with _evaluating(model):
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
