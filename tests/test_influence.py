"""Influence functions against a hand-derived logistic-regression Hessian, autograd, scikit-learn
retraining, captum and brute-force TracIn."""

import copy

import numpy as np
import pytest
import torch
from captum.influence import NaiveInfluenceFunction
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import TensorDataset

import xnn_lab.influence
from _state import assert_state_kept, mix_states, public_api_taking_a_model, snapshot
from xnn_lab.data import load_digits
from xnn_lab.influence import (EXACT_MAX_PARAMS, hessian, influence, leave_one_out, per_example_gradients,
                               self_influence, tracin, tracin_self_influence, train_to_optimum)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
BCE = nn.BCEWithLogitsLoss(reduction="none")
CE = nn.CrossEntropyLoss(reduction="none")
LAMBDA = 0.05


def _logistic_data(n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    w = torch.randn(d, generator=generator, dtype=torch.float64)
    y = (torch.rand(n, generator=generator, dtype=torch.float64) < torch.sigmoid(X @ w)).double()
    return X, y


def _logistic_model(d):
    return nn.Sequential(nn.Linear(d, 1), nn.Flatten(0)).double()


@pytest.fixture(scope="module")
def logistic():
    """A logistic regression at the optimum of its L2-regularised objective, with train and test data."""
    X, y = _logistic_data(60, 4, seed=0)
    model = _logistic_model(4)
    train, test = (X[:40], y[:40]), (X[40:], y[40:])
    train_to_optimum(model, BCE, train, LAMBDA)
    return model, train, test


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _class_data(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=generator, dtype=torch.float64), torch.randint(0, 3, (n,), generator=generator)


def _hand_influence(model, train, test, lam, damping=0.0):
    """Koh and Liang's formula for logistic regression in numpy, with an explicit inverse."""
    w = np.concatenate([model[0].weight.detach().numpy()[0], model[0].bias.detach().numpy()])
    augment = lambda X: np.hstack([X.numpy(), np.ones((len(X), 1))])
    Xa, Xt = augment(train[0]), augment(test[0])
    p, pt = expit(Xa @ w), expit(Xt @ w)
    n = len(Xa)
    H = Xa.T @ np.diag(p * (1 - p)) @ Xa / n + (lam + damping) * np.eye(len(w))
    G, Gt = (p - train[1].numpy())[:, None] * Xa, (pt - test[1].numpy())[:, None] * Xt
    return Gt @ np.linalg.inv(H) @ G.T / n, H


def test_exact_matches_hand_derived_logistic_regression(logistic):
    model, train, test = logistic
    expected, H = _hand_influence(model, train, test, LAMBDA, damping=0.01)
    scores = influence(model, BCE, train, test, LAMBDA, damping=0.01)
    assert scores.shape == (20, 40) and scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(hessian(model, BCE, train, LAMBDA).numpy(), H - 0.01 * np.eye(5), rtol=1e-10,
                               atol=1e-14)


@pytest.mark.parametrize("method", ["cg", "lissa"])
def test_iterative_methods_agree_with_exact(method, logistic):
    model, train, test = logistic
    exact = influence(model, BCE, train, test, LAMBDA)
    approx = influence(model, BCE, train, test, LAMBDA, method=method)
    assert (approx - exact).abs().max() <= 1e-8 * exact.abs().max()
    # A softmax head on tanh features: convex in the last layer, so its Hessian is positive definite.
    model, (X, y) = _mlp(), _class_data(50, seed=1)
    train, test = (X[:40], y[:40]), (X[40:], y[40:])
    train_to_optimum(model, CE, train, 0.1, params="2")
    exact = influence(model, CE, train, test, 0.1, method="exact", params="2")
    approx = influence(model, CE, train, test, 0.1, method=method, params="2")
    assert (approx - exact).abs().max() <= 1e-8 * exact.abs().max()


def test_whole_network_with_damping_agrees_across_methods():
    model, (X, y) = _mlp(), _class_data(50, seed=1)
    train, test = (X[:40], y[:40]), (X[40:], y[40:])
    # Away from a minimum the Hessian of a tanh network is indefinite; damping beyond its most
    # negative eigenvalue makes every method solve the same positive definite system.
    lowest = torch.linalg.eigvalsh(hessian(model, CE, train, 0.1))[0]
    assert lowest < 0
    damping = 1.0 - float(lowest)
    scores = {m: influence(model, CE, train, test, 0.1, damping=damping, method=m) for m in ("exact", "cg", "lissa")}
    for method in ("cg", "lissa"):
        assert (scores[method] - scores["exact"]).abs().max() <= 1e-7 * scores["exact"].abs().max()


@pytest.mark.parametrize("method", ["exact", "cg", "lissa"])
def test_chunking_rows_and_right_hand_sides_changes_nothing(method, logistic):
    model, train, test = logistic
    whole = influence(model, BCE, train, test, LAMBDA, method=method)
    chunked = influence(model, BCE, train, test, LAMBDA, method=method, batch_size=16)  # 3 row chunks, 2 blocks
    torch.testing.assert_close(chunked, whole, rtol=1e-8, atol=1e-12)


def test_matches_captum_naive_influence_function(logistic, tmp_path):
    """captum inverts the Hessian of the summed loss plus hessian_reg * I: with hessian_reg = n * lambda
    its scores equal ours (the 1/n cancels), with the same sign (positive = proponent)."""
    model, train, test = logistic
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    n = len(train[0])
    captum = NaiveInfluenceFunction(model, TensorDataset(*train), str(path), loss_fn=BCE, batch_size=n,
                                    projection_dim=5, hessian_reg=n * LAMBDA, hessian_inverse_tol=1e-12)
    theirs = captum.influence(test)
    np.testing.assert_allclose(influence(model, BCE, train, test, LAMBDA).numpy(), theirs.numpy(), rtol=1e-6,
                               atol=1e-10)


def test_per_example_gradients_equal_autograd_one_point_at_a_time():
    model, (X, y) = _mlp(), _class_data(4, seed=2)
    full = per_example_gradients(model, CE, (X, y))
    last = per_example_gradients(model, CE, (X, y), params="2")
    assert full.shape == (4, 6 * 5 + 6 + 3 * 6 + 3) and last.shape == (4, 3 * 6 + 3)
    for i in range(4):
        model.zero_grad()
        CE(model(X[i:i + 1]), y[i:i + 1]).sum().backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(full[i], expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(last[i], expected[-21:], rtol=1e-12, atol=1e-14)


def test_params_by_name_tensor_or_module_name_agree():
    model, (X, y) = _mlp(), _class_data(6, seed=3)
    by_module = per_example_gradients(model, CE, (X, y), params="2")
    by_names = per_example_gradients(model, CE, (X, y), params=["2.bias", "2.weight"])
    by_tensors = per_example_gradients(model, CE, (X, y), params=[model[2].weight, model[2].bias])
    torch.testing.assert_close(by_module, by_names)
    torch.testing.assert_close(by_module, by_tensors)


def test_last_layer_influence_equals_influence_of_a_linear_model_on_frozen_features():
    model, (X, y) = _mlp(), _class_data(40, seed=4)
    train, test = (X[:30], y[:30]), (X[30:], y[30:])
    head = nn.Linear(6, 3).double()
    head.load_state_dict(model[2].state_dict())
    features = lambda data: (model[1](model[0](data[0])).detach(), data[1])
    expected = influence(head, CE, features(train), features(test), 0.1)
    torch.testing.assert_close(influence(model, CE, train, test, 0.1, params="2"), expected)


def test_self_influence_is_the_diagonal_of_influence(logistic):
    model, train, _ = logistic
    for method in ("exact", "cg"):
        diagonal = influence(model, BCE, train, train, LAMBDA, method=method).diagonal()
        torch.testing.assert_close(self_influence(model, BCE, train, LAMBDA, method=method), diagonal)
    assert (self_influence(model, BCE, train, LAMBDA) > 0).all()


def test_leave_one_out_matches_scikit_learn_retrained_from_scratch(logistic):
    """scikit-learn minimises C sum_{j != i} L_j + ||w||^2 / 2, which is R_{-i} for C = 1 / (n lambda);
    the constant column makes it penalise the bias as R does."""
    model, (X, y), (X_test, y_test) = logistic
    n, indices = len(X), [0, 7, 23]
    augment = lambda X: np.hstack([X.numpy(), np.ones((len(X), 1))])

    def test_losses(keep):
        fit = LogisticRegression(C=1 / (n * LAMBDA), fit_intercept=False, solver="newton-cholesky", tol=1e-14,
                                 max_iter=1000).fit(augment(X)[keep], y.numpy()[keep])
        margin = augment(X_test) @ fit.coef_[0]
        return np.logaddexp(0, margin) - y_test.numpy() * margin

    full = test_losses(np.ones(n, bool))
    expected = np.stack([test_losses(np.arange(n) != i) - full for i in indices], axis=1)
    newton = leave_one_out(model, BCE, (X, y), (X_test, y_test), indices, LAMBDA, solver="newton")
    assert newton.shape == (len(X_test), 3)
    np.testing.assert_allclose(newton.numpy(), expected, rtol=1e-9, atol=1e-13)
    # L-BFGS stops at max |gradient| ~1.5e-8: parameters within ~1.5e-8 / lambda of the optimum.
    lbfgs = leave_one_out(model, BCE, (X, y), (X_test, y_test), indices, LAMBDA, solver="lbfgs")
    np.testing.assert_allclose(lbfgs.numpy(), expected, rtol=0, atol=1e-6)


def test_influence_predicts_leave_one_out_on_a_convex_model(logistic):
    model, train, test = logistic
    indices = torch.arange(40)
    actual = leave_one_out(model, BCE, train, test, indices, LAMBDA)
    predicted = influence(model, BCE, train, test, LAMBDA)
    assert np.corrcoef(predicted.flatten(), actual.flatten())[0, 1] > 0.99
    # The approximation is first order: the errors are much smaller than the changes.
    assert (predicted - actual).abs().max() < 0.2 * actual.abs().max()


def test_leave_one_out_warns_when_the_model_is_not_at_the_optimum(logistic):
    _, train, test = logistic
    model = _logistic_model(4)
    with pytest.warns(RuntimeWarning, match="train_to_optimum"):
        leave_one_out(model, BCE, train, test, [0], LAMBDA)


def test_tracin_equals_brute_force_sum_of_gradient_dot_products():
    model, (X, y) = _mlp(), _class_data(12, seed=5)
    train, test = (X[:8], y[:8]), (X[8:], y[8:])
    checkpoints, lrs = [], [0.5, 0.2, 0.1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for lr in lrs:
        checkpoints.append({k: v.clone() for k, v in model.state_dict().items()})
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad()
        CE(model(train[0]), train[1]).mean().backward()
        optimizer.step()
    reference = _mlp(seed=9)

    def gradient(x, y):
        reference.zero_grad()
        CE(reference(x[None]), y[None]).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in reference.parameters()])

    expected = torch.zeros(4, 8, dtype=torch.float64)
    for state, lr in zip(checkpoints, lrs):
        reference.load_state_dict(state)
        for t in range(4):
            for i in range(8):
                expected[t, i] += lr * gradient(test[0][t], test[1][t]) @ gradient(train[0][i], train[1][i])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(tracin(model, CE, checkpoints, train, test, lrs), expected)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    torch.testing.assert_close(tracin_self_influence(model, CE, checkpoints, train, lrs, batch_size=3),
                               tracin(model, CE, checkpoints, train, train, lrs).diagonal())


def test_accepts_datasets_and_restores_mode_and_flags(logistic):
    model, train, test = logistic
    model.train()
    model[0].bias.requires_grad_(False)
    try:
        scores = influence(model, BCE, TensorDataset(*train), TensorDataset(*test), LAMBDA, params=["0.weight"])
        assert scores.shape == (20, 40)
        assert model.training and not model[0].bias.requires_grad and model[0].weight.requires_grad
    finally:
        model.eval()
        model[0].bias.requires_grad_(True)


class _Pairs(torch.utils.data.Dataset):
    """A map-style dataset without ``.tensors``: it must be collated."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


def test_accepts_any_map_style_dataset(logistic):
    model, train, test = logistic
    torch.testing.assert_close(influence(model, BCE, _Pairs(*train), test, LAMBDA),
                               influence(model, BCE, train, test, LAMBDA))


def test_accepts_xnn_lab_tabular_data():
    train, test = load_digits("train"), load_digits("test")
    model = nn.Linear(64, 10)
    scores = influence(model, CE, train, test, 0.1, params="bias")
    assert scores.shape == (len(test), len(train)) and torch.isfinite(scores).all()


def test_errors_name_the_problem(logistic):
    model, train, test = logistic
    with pytest.raises(ValueError, match="one loss per example"):
        influence(model, nn.BCEWithLogitsLoss(), train, test)
    with pytest.raises(ValueError, match="method must be one of"):
        influence(model, BCE, train, test, method="newton")
    with pytest.raises(ValueError, match="test X must have per-example shape"):
        influence(model, BCE, train, (test[0][:, :3], test[1]))
    with pytest.raises(ValueError, match="train: X and y must have the same length"):
        influence(model, BCE, (train[0], train[1][:-1]), test)
    with pytest.raises(ValueError, match="names no parameter"):
        influence(model, BCE, train, test, params="classifier")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        influence(model, BCE, train, test, weight_decay=-1.0)
    with pytest.raises(TypeError, match="train must be"):
        influence(model, BCE, train[0], test)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 40\)"):
        leave_one_out(model, BCE, train, test, [40])
    with pytest.raises(ValueError, match="lrs must be one number or one per checkpoint"):
        tracin(model, BCE, [model.state_dict()] * 2, train, test, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="checkpoints\\[0\\] must hold"):
        tracin(model, BCE, [{}], train, test, 0.1)
    with pytest.raises(ValueError, match="lissa_scale must be > 0"):
        influence(model, BCE, train, test, method="lissa", lissa_scale=-1.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        leave_one_out(model, BCE, train, test, [0], solver="sgd")


def test_exact_refuses_too_many_parameters_and_names_the_alternatives():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    assert sum(p.numel() for p in model.parameters()) > EXACT_MAX_PARAMS
    X, y = torch.randn(8, 64), torch.randint(0, 2, (8,))
    with pytest.raises(ValueError, match="method='cg' or method='lissa'.*params="):
        influence(model, CE, (X, y), (X, y))
    with pytest.raises(ValueError, match="use solver='lbfgs'"):
        train_to_optimum(model, CE, (X, y))


def test_non_convex_problems_are_reported():
    torch.manual_seed(0)
    model, (X, y) = _mlp(), _class_data(30, seed=6)
    train = (X, y)
    with pytest.raises(ValueError, match="negative curvature"):
        # At a random initialisation of a tanh network the Hessian has negative eigenvalues.
        influence(model, CE, train, train, method="cg")
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        influence(model, CE, train, train, method="exact")
    with pytest.raises(ValueError, match="lissa diverged"):
        influence(model, CE, train, train, damping=1.0, method="lissa", lissa_scale=1e-3)


def _mixed_model():
    """Batch norm and dropout, whose train mode would change the results and the running statistics."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.3),
                         nn.Linear(4, 3)).double()


def _state_data():
    X, y = _class_data(24, seed=11)
    return (X[:16], y[:16]), (X[16:], y[16:])


def _checkpoints(model):
    return [{name: t.clone() for name, t in model.state_dict().items()} for _ in range(2)]


# Each public function that takes a model, called on a model in mixed states (every other module
# in train mode, every other parameter frozen: params=None takes the trainable ones).
STATE_CALLS = {
    "per_example_gradients": lambda m, train, test: per_example_gradients(m, CE, train),
    "hessian": lambda m, train, test: hessian(m, CE, train, LAMBDA),
    "influence": lambda m, train, test: influence(m, CE, train, test, LAMBDA, damping=1.0),
    "self_influence": lambda m, train, test: self_influence(m, CE, train, LAMBDA, damping=1.0, method="cg"),
    "tracin": lambda m, train, test: tracin(m, CE, _checkpoints(m), train, test, 0.1),
    "tracin_self_influence": lambda m, train, test: tracin_self_influence(m, CE, _checkpoints(m), train, 0.1),
    "leave_one_out": lambda m, train, test: leave_one_out(m, CE, train, test, [0, 3], LAMBDA, max_iter=3),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a random tanh network: not at an optimum
@pytest.mark.parametrize("name", sorted(STATE_CALLS))
def test_keeps_the_model_state(name):
    model = mix_states(_mixed_model())
    train, test = _state_data()
    before = snapshot(model)
    result = STATE_CALLS[name](model, train, test)
    assert_state_kept(model, before)
    # Computed in eval mode: the same as on an eval-mode copy (whose dropout would otherwise draw).
    reference = copy.deepcopy(model).eval()
    torch.testing.assert_close(STATE_CALLS[name](reference, train, test), result)


@CUDA
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(STATE_CALLS))
def test_keeps_a_cuda_model_on_its_device(name):
    model = mix_states(_mixed_model().cuda())
    train, test = _state_data()  # on the CPU: the data go to the model's device, not the other way
    before = snapshot(model)
    STATE_CALLS[name](model, train, test)
    assert_state_kept(model, before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_train_to_optimum_changes_only_the_chosen_parameters():
    """The one trainer: it writes the optimum into the chosen parameters, in place; every module's
    mode, every flag and gradient, the device and the other parameters and buffers stay as they were."""
    model = mix_states(_mixed_model())
    train, _ = _state_data()
    before = snapshot(model)
    names = [name for name, _ in (*model.named_parameters(), *model.named_buffers())]
    train_to_optimum(model, CE, train, LAMBDA, params=["0.weight", "4"], max_iter=5)
    after = snapshot(model)
    changed = {name for name, a, b in zip(names, after["values"], before["values"]) if not torch.equal(a, b)}
    assert changed == {"0.weight", "4.weight", "4.bias"}
    assert_state_kept(model, {**before, "values": after["values"]})


def test_state_tests_cover_the_public_api():
    covered = set(STATE_CALLS) | {"train_to_optimum"}
    assert covered == public_api_taking_a_model(xnn_lab.influence)


@CUDA
def test_cuda_matches_cpu(logistic):
    model, train, test = logistic
    expected = influence(model, BCE, train, test, LAMBDA)
    on_gpu = (train[0].cuda(), train[1].cuda())
    scores = influence(copy.deepcopy(model).cuda(), BCE, on_gpu, (test[0].cuda(), test[1].cuda()), LAMBDA)
    assert scores.device.type == "cuda"
    torch.testing.assert_close(scores.cpu(), expected)
