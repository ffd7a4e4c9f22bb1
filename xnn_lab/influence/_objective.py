"""What every influence method shares: the model, its loss and the training objective
:math:`R(\\theta)` as functions of a flat vector :math:`\\theta` of the chosen parameters
(``torch.func``: per-example gradients by vmap, Hessian-vector products, the Hessian), and the
checks of the public functions' arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from xnn_lab._core.checks import _describe, check_float, check_int, check_parameters_finite, input_errors
from xnn_lab._core.training import tensor_pair

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# An explicit Hessian of this many parameters takes ~128 MiB in float64 and a solve of seconds.
EXACT_MAX_PARAMS = 4096
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
    check_parameters_finite("model", model)
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
    for name, (_, (X, y)) in pairs.items():
        _check_losses(objective, name, X, y)
    return objective, pairs


def _check_losses(objective: _Objective, name: str, X, y) -> None:
    """``loss_fn`` must give one finite loss per example of ``name``, at the current parameters: a
    mean or sum would make every gradient the batch's, and a label the model does not have (or
    a row of the wrong width) must fail here, naming the data, not deep in a solver."""
    for start in range(0, len(X), objective.batch_size):
        part = slice(start, start + objective.batch_size)
        with torch.no_grad(), input_errors(name, X):
            out = objective.losses(objective.theta, X[part], y[part])
        b = len(X[part])
        if not isinstance(out, torch.Tensor) or out.shape != (b,):
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else _describe(out)
            raise ValueError(f"loss_fn must return one loss per example, shape ({b},) for {b} examples "
                             f"(use reduction='none' and sum any other dimensions), got {got}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"the loss of model on {name} is not finite for example "
                             f"{start + int((~torch.isfinite(out)).nonzero()[0])}: its outputs overflow")


def _solver_settings(method, dtype, tol, max_iter, lissa_scale=None):
    if lissa_scale is not None:
        check_float("lissa_scale", lissa_scale, minimum=0.0, open_min=True)
    tol = _default_tol(dtype, method) if tol is None else check_float("tol", tol, minimum=0.0, open_min=True)
    max_iter = _DEFAULT_MAX_ITER.get(method, 1) if max_iter is None else check_int("max_iter", max_iter, minimum=1)
    return tol, max_iter
