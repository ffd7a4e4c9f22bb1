"""Graded questions of ``solutions/06_senn.ipynb``: SENN's aggregator, robustness loss, loss and stability.

References come from ``xnn_lab.senn``; the sampled Lipschitz estimate, for which
``xnn_lab.metrics.local_lipschitz`` draws its own points, is a short independent computation
here. Trials are fresh SENNs and inputs of random sizes.
"""

from __future__ import annotations

import torch

from xnn_lab.data import load_breast_cancer
from xnn_lab.grading.question import Question
from xnn_lab.senn import SENN, fit_senn, robustness_loss, robustness_residual, senn_loss

BENIGN = 1


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + salt)


def _random_senn(generator: torch.Generator, learned: bool) -> SENN:
    """A SENN of random sizes and random weights (its own seed, drawn from ``generator``)."""
    size = lambda low, high: int(torch.randint(low, high + 1, (), generator=generator))
    in_features, classes = size(3, 9), size(2, 5)
    concepts = size(2, 6) if learned else None
    activation = ("tanh", "relu", "leaky_relu")[size(0, 2)]
    widths = {"concept_hidden": (size(4, 12),), "relevance_hidden": (size(4, 12), size(4, 12))}
    with torch.random.fork_rng(devices=[]):   # the initial weights, without touching the global generator
        torch.manual_seed(size(0, 2**31 - 1))
        model = SENN(in_features, classes, concepts, activation=activation, **widths).double()
    return model.eval()


def _aggregate_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 1)
    trials = []
    for batch, k, classes in ((1, 3, 2), (5, 7, 4), (int(torch.randint(2, 9, (), generator=generator)), 11, 3)):
        concepts = torch.randn(batch, k, generator=generator)
        relevances = torch.randn(batch, k, classes, generator=generator)
        trials.append((concepts, relevances))
    return trials


def _model_trials(seed: int, salt: int) -> list[tuple]:
    """(model, x) pairs: learned concepts and input features as concepts, batches of 1 to 6."""
    generator = _generator(seed, salt)
    trials = []
    for learned in (True, False, True):
        model = _random_senn(generator, learned)
        batch = int(torch.randint(1, 7, (), generator=generator))
        trials.append((model, torch.randn(batch, model.in_features, generator=generator, dtype=torch.float64)))
    return trials


def _senn_loss_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 4)
    trials = []
    for (model, x), lam in zip(_model_trials(seed, 5), (0.0, 0.5, 2.0)):
        y = torch.randint(0, model.num_classes, (len(x),), generator=generator)
        xi, sparsity = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        trials.append((model, x, y, lam, xi, sparsity))
    return trials


def _total_senn_loss(model, x, y, lam, xi, sparsity):
    return senn_loss(model, x, y, lam, xi, sparsity).total


def _lipschitz_trials(seed: int) -> list[tuple]:
    generator = _generator(seed, 6)
    trials = []
    for model, x in _model_trials(seed, 7):
        num_points = int(torch.randint(2, 9, (), generator=generator))
        points = x[:, None] + torch.randn(len(x), num_points, x.shape[1], generator=generator, dtype=x.dtype)
        trials.append((model, x, points))
    return trials


@torch.no_grad()
def lipschitz_by_sampling(model: SENN, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """max_j ||theta(x_b) - theta(p_bj)||_2 / ||x_b - p_bj||_2 for inputs x (B, F) and points (B, N, F): (B,).

    Written here, independently of the solution, as one batched pass over all B * N points.
    """
    batch, num_points, features = points.shape
    theta_x = model.relevances(x).flatten(1)
    theta_points = model.relevances(points.reshape(batch * num_points, features)).reshape(batch, num_points, -1)
    change = torch.linalg.vector_norm(theta_points - theta_x[:, None], dim=2)
    distance = torch.linalg.vector_norm(points - x[:, None], dim=2)
    return (change / distance).amax(dim=1)


def top_benign_feature() -> str:
    r"""The feature with the largest :math:`|\theta_{i,\mathrm{benign}}|` for the first test patient.

    As in the chapter's figure.
    """
    cancer = load_breast_cancer("train")
    with torch.random.fork_rng(devices=[]):   # seed_everything(0) of the chapter, for torch's generator only
        torch.manual_seed(0)
        model = SENN(30, 2, relevance_hidden=(32, 32))
        fit_senn(model, cancer, lam=0.1, epochs=20, lr=2e-3, batch_size=32, seed=0, device=torch.device("cpu"),
                 progress=False)
    with torch.no_grad():
        relevance = model.relevances(load_breast_cancer("test").X[:1])[0, :, BENIGN]
    return cancer.feature_names[int(relevance.abs().argmax())]


ROBUSTNESS = ("xnn_lab.senn.robustness_residual", "xnn_lab.senn.robustness_loss", "xnn_lab.senn.losses._residual",
              "xnn_lab.senn.losses._robustness")

QUESTIONS: tuple[Question, ...] = (
    Question("aggregate", 1, "aggregate", SENN.aggregate, _aggregate_trials,
             forbidden=("xnn_lab.senn.SENN.aggregate",)),
    Question("robustness_residual", 3, "robustness_residual", robustness_residual,
             lambda seed: _model_trials(seed, 2), forbidden=ROBUSTNESS),
    Question("robustness_loss", 1, "robustness_loss", robustness_loss, lambda seed: _model_trials(seed, 3),
             forbidden=ROBUSTNESS),
    Question("senn_loss", 2, "senn_loss", _total_senn_loss, _senn_loss_trials,
             forbidden=("xnn_lab.senn.senn_loss", "xnn_lab.senn.losses._loss")),
    Question("lipschitz_by_sampling", 2, "lipschitz_by_sampling", lipschitz_by_sampling, _lipschitz_trials),
    Question("top_feature", 1, "TOP_FEATURE", top_benign_feature),
)
