"""Graded questions of ``solutions/08_influential_instances.ipynb``: exact influence for logistic regression.

The model is logistic regression without bias, :math:`p(y{=}1 \\mid x) = \\sigma(\\theta^\\top x)`, with
the per-example loss :math:`L(z, \\theta)` the binary cross-entropy and
:math:`R(\\theta) = \\frac1n\\sum_i L(z_i, \\theta) + \\frac{\\lambda}{2}\\lVert\\theta\\rVert^2`. The
references run ``xnn_lab.influence`` (gradients, Hessian, influence, self-influence, TracIn) on that
model written as ``nn.Linear(d, 1, bias=False)``; the predicted parameters after a removal (one
Newton step) are composed here from ``xnn_lab.influence``'s Hessian and gradients. Trials are random
float64 data sets of random sizes, with :math:`\\theta` at the optimum (Newton's method).
"""

from __future__ import annotations

import torch
from torch import nn

from xnn_lab.data import load_digits
from xnn_lab.grading.question import Question
from xnn_lab.influence import (hessian, influence, per_example_gradients, self_influence, tracin,
                               train_to_optimum)

_LOSS = nn.BCEWithLogitsLoss(reduction="none")


def _logreg(theta: torch.Tensor, bias: bool = False) -> nn.Module:
    """p(y=1|x) = sigmoid(theta^T x) as a module whose output is the logit (B,)."""
    model = nn.Sequential(nn.Linear(len(theta), 1, bias=bias), nn.Flatten(0)).to(theta.dtype)
    with torch.no_grad():
        model[0].weight.copy_(theta[None])
    return model


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + salt)


def _size(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (), generator=generator))


def _data(generator: torch.Generator, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping Gaussian classes in d dimensions, float64, labels 0/1 as float64."""
    y = torch.randint(0, 2, (n,), generator=generator).double()
    direction = torch.randn(d, generator=generator, dtype=torch.float64)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64) + (2 * y[:, None] - 1) * direction / 2
    return X, y


def _optimum(X: torch.Tensor, y: torch.Tensor, weight_decay: float, iterations: int = 30) -> torch.Tensor:
    """theta-hat by Newton's method in closed form: cheaper than ``train_to_optimum`` for trials.

    R is strictly convex (weight decay > 0); halving a step until R does not rise keeps Newton's
    method from overshooting, and 30 steps from 0 reach the optimum to float64 precision on these
    small problems.
    """
    risk = lambda t: _LOSS(X @ t, y).mean() + 0.5 * weight_decay * (t * t).sum()
    theta = torch.zeros(X.shape[1], dtype=X.dtype)
    eye = torch.eye(X.shape[1], dtype=X.dtype)
    for _ in range(iterations):
        p = torch.sigmoid(X @ theta)
        gradient = X.T @ (p - y) / len(X) + weight_decay * theta
        hessian_ = (X.T * (p * (1 - p))) @ X / len(X) + weight_decay * eye
        step = torch.linalg.solve(hessian_, gradient)
        scale = 1.0
        while scale > 1e-3 and risk(theta - scale * step) > risk(theta):
            scale /= 2
        theta = theta - scale * step
    return theta


def _problems(seed: int, salt: int) -> list[dict]:
    """Three problems of random sizes: data, test data, weight decay and the optimum theta-hat."""
    generator = _generator(seed, salt)
    problems = []
    for n_low, n_high, d_low, d_high in ((8, 15, 1, 3), (20, 40, 3, 6), (40, 80, 5, 9)):
        n, d = _size(generator, n_low, n_high), _size(generator, d_low, d_high)
        X, y = _data(generator, n, d)
        X_test, y_test = _data(generator, _size(generator, 1, 6), d)
        weight_decay = float(10 ** torch.empty(()).uniform_(-2.5, -0.5, generator=generator))
        theta = _optimum(X, y, weight_decay)
        problems.append({"X": X, "y": y, "X_test": X_test, "y_test": y_test, "weight_decay": weight_decay,
                         "theta": theta, "generator": generator})
    return problems


def logreg_gradients(X, y, theta):
    return per_example_gradients(_logreg(theta), _LOSS, (X, y))


def logreg_hessian(X, y, theta, weight_decay):
    return hessian(_logreg(theta), _LOSS, (X, y), weight_decay)


def logreg_influence(X, y, X_test, y_test, theta, weight_decay):
    return influence(_logreg(theta), _LOSS, (X, y), (X_test, y_test), weight_decay, method="exact")


def logreg_self_influence(X, y, theta, weight_decay):
    return self_influence(_logreg(theta), _LOSS, (X, y), weight_decay, method="exact")


def newton_removal(X, y, theta, weight_decay, i):
    """theta-hat + (1/n) H^-1 grad L(z_i, theta-hat): the removal of z_i (epsilon = -1/n) as one Newton step.

    Composed here from ``xnn_lab.influence.hessian`` and ``per_example_gradients``.
    """
    H = logreg_hessian(X, y, theta, weight_decay)
    g = logreg_gradients(X[i:i + 1], y[i:i + 1], theta)[0]
    return theta + torch.linalg.solve(H, g) / len(X)


def logreg_tracin(X, y, X_test, y_test, thetas, lrs):
    checkpoints = [{"0.weight": theta[None].clone()} for theta in thetas]
    return tracin(_logreg(thetas[0]), _LOSS, checkpoints, (X, y), (X_test, y_test), list(lrs))


def _gradient_trials(seed):
    return [(p["X"], p["y"], p["theta"]) for p in _problems(seed, 1)]


def _hessian_trials(seed):
    return [(p["X"], p["y"], p["theta"], p["weight_decay"]) for p in _problems(seed, 2)]


def _influence_trials(seed):
    return [(p["X"], p["y"], p["X_test"], p["y_test"], p["theta"], p["weight_decay"]) for p in _problems(seed, 3)]


def _self_influence_trials(seed):
    return [(p["X"], p["y"], p["theta"], p["weight_decay"]) for p in _problems(seed, 4)]


def _removal_trials(seed):
    return [(p["X"], p["y"], p["theta"], p["weight_decay"], _size(p["generator"], 0, len(p["X"]) - 1))
            for p in _problems(seed, 5)]


def _tracin_trials(seed):
    trials = []
    for p in _problems(seed, 6):
        k = _size(p["generator"], 1, 4)
        # Checkpoints along a path from 0 to theta-hat, as a training run would pass, with noise.
        steps = torch.linspace(0, 1, k + 1, dtype=torch.float64)[1:, None]
        thetas = steps * p["theta"] + 0.1 * torch.randn(k, len(p["theta"]), generator=p["generator"],
                                                        dtype=torch.float64)
        lrs = (0.05 + torch.rand(k, generator=p["generator"], dtype=torch.float64)).tolist()
        trials.append((p["X"], p["y"], p["X_test"], p["y_test"], thetas, lrs))
    return trials


def _digits_1_vs_7(split):
    data = load_digits(split)
    keep = (data.y == 1) | (data.y == 7)
    return data.X[keep].double(), (data.y[keep] == 7).double()


def theta_hat_1d() -> float:
    """The optimum of the chapter's one-parameter example (30 points, z = point 29 at 2.5 with label 0)."""
    generator = torch.Generator().manual_seed(0)
    y1 = torch.tensor([1.0, 0.0], dtype=torch.float64).repeat(15)
    x1 = (2 * y1 - 1) + 0.8 * torch.randn(30, generator=generator, dtype=torch.float64)
    x1[29] = 2.5
    line = _logreg(torch.zeros(1, dtype=torch.float64))
    train_to_optimum(line, _LOSS, (x1[:, None], y1), 0.1)
    return line[0].weight.detach().item()


def most_helpful_index() -> int:
    """Index of the training image most helpful to the hardest test image, digits 1 vs 7, lambda = 0.01."""
    train, test = _digits_1_vs_7("train"), _digits_1_vs_7("test")
    model = nn.Sequential(nn.Linear(64, 1), nn.Flatten(0)).double()   # R is strictly convex: any start will do
    train_to_optimum(model, _LOSS, train, 0.01)
    with torch.no_grad():
        hardest = int(_LOSS(model(test[0]), test[1]).argmax())
    scores = influence(model, _LOSS, train, (test[0][hardest:hardest + 1], test[1][hardest:hardest + 1]), 0.01)
    return int(scores[0].argmax())


# Every public function of xnn_lab.influence computes what these questions ask for, through one private objective.
INFLUENCE = ("xnn_lab.influence.per_example_gradients", "xnn_lab.influence.hessian", "xnn_lab.influence.influence",
             "xnn_lab.influence.self_influence", "xnn_lab.influence.tracin", "xnn_lab.influence.leave_one_out",
             "xnn_lab.influence._objective._Objective")

QUESTIONS: tuple[Question, ...] = (
    Question("logreg_gradients", 1, "logreg_gradients", logreg_gradients, _gradient_trials, forbidden=INFLUENCE),
    Question("logreg_hessian", 2, "logreg_hessian", logreg_hessian, _hessian_trials, forbidden=INFLUENCE),
    Question("logreg_influence", 3, "logreg_influence", logreg_influence, _influence_trials, forbidden=INFLUENCE),
    Question("logreg_self_influence", 1, "logreg_self_influence", logreg_self_influence, _self_influence_trials,
             forbidden=INFLUENCE),
    Question("newton_removal", 2, "newton_removal", newton_removal, _removal_trials, forbidden=INFLUENCE),
    Question("logreg_tracin", 2, "logreg_tracin", logreg_tracin, _tracin_trials, forbidden=INFLUENCE),
    Question("theta_hat_1d", 1, "THETA_HAT_1D", theta_hat_1d),
    Question("most_helpful", 1, "MOST_HELPFUL", most_helpful_index),
)
