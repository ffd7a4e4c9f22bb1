"""LiSSA's recursion converges to s H^-1 b: the solver must divide by the scale s. Checked against
an exact H^-1 b for scales far from 1, directly and through ``influence``."""

import pytest
import torch
from torch import nn

from xnn_lab.influence import hessian, influence, train_to_optimum
from xnn_lab.influence.functions import _lissa

BCE = nn.BCEWithLogitsLoss(reduction="none")
LAMBDA = 0.05


def _spd(p, seed):
    """A random symmetric positive definite matrix with eigenvalues in [0.5, 4]."""
    generator = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(0.5, 4.0, p, dtype=torch.float64)
    return Q @ torch.diag(eigenvalues) @ Q.T


@pytest.mark.parametrize("scale", [2.5, 4.4, 40.0])
def test_lissa_returns_the_inverse_not_scale_times_it(scale):
    A = _spd(6, seed=0)
    B = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solved = _lissa(lambda V: V @ A.T, B, tol=1e-12, max_iter=100_000, scale=scale)
    exact = torch.linalg.solve(A, B.T).T
    torch.testing.assert_close(solved, exact, rtol=1e-9, atol=1e-12)
    # Without the division by s the answer would be s times too large.
    assert not torch.allclose(solved * scale, exact, rtol=1e-3)


@pytest.mark.parametrize("factor", [0.6, 1.0, 3.0, 20.0])
def test_influence_by_lissa_matches_exact_for_any_valid_scale(factor):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    y = (torch.rand(50, generator=generator, dtype=torch.float64) < torch.sigmoid(X[:, 0])).double()
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)).double()
    train, test = (X[:40], y[:40]), (X[40:], y[40:])
    train_to_optimum(model, BCE, train, LAMBDA)
    largest = torch.linalg.eigvalsh(hessian(model, BCE, train, LAMBDA))[-1].item()
    exact = influence(model, BCE, train, test, LAMBDA, method="exact")
    lissa = influence(model, BCE, train, test, LAMBDA, method="lissa", lissa_scale=factor * largest,
                      max_iter=200_000)
    torch.testing.assert_close(lissa, exact, rtol=1e-7, atol=1e-7 * exact.abs().max().item())
