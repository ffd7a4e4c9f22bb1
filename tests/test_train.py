import math

import pytest
import torch
from torch.utils.data import TensorDataset

from xnn_lab.models import MLP
from xnn_lab import Step, evaluate, fit, predict


def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    X = torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2.0 - 1.0) * 1.5
    return X, y


def test_fit_learns_and_records_history():
    torch.manual_seed(0)
    model = MLP(2, hidden=(8,), out_features=2)
    history = fit(model, _blobs(), _blobs(seed=1), epochs=15, lr=1e-2, progress=False, device=torch.device("cpu"))
    assert len(history.train_loss) == len(history.val_acc) == 15
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert evaluate(model, _blobs(seed=2))["accuracy"] > 0.95
    assert not model.training


def test_fit_is_deterministic_for_a_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MLP(2, hidden=(8,), out_features=2)
        fit(model, _blobs(), epochs=3, seed=5, progress=False, device=torch.device("cpu"))
        outs.append(predict(model, _blobs(seed=3)[0]))
    assert torch.equal(outs[0], outs[1])


def test_early_stopping_restores_the_best_epoch():
    torch.manual_seed(0)
    model = MLP(2, hidden=(64, 64), out_features=2)
    X, y = _blobs(40)
    Xv, yv = _blobs(200, seed=1)
    yv = yv[torch.randperm(len(yv))]  # labels unrelated to X: validation loss rises as the net fits
    history = fit(model, (X, y), (Xv, yv), epochs=200, lr=1e-2, patience=5, progress=False,
                  device=torch.device("cpu"))
    assert history.stopped_early and len(history.val_loss) < 200
    assert history.best_epoch == min(range(len(history.val_loss)), key=history.val_loss.__getitem__)
    assert evaluate(model, (Xv, yv))["loss"] == pytest.approx(min(history.val_loss), rel=1e-5)


def test_fit_accepts_datasets():
    torch.manual_seed(0)
    model = MLP(2, hidden=(8,), out_features=2)
    history = fit(model, TensorDataset(*_blobs()), epochs=5, lr=1e-2, progress=False, device=torch.device("cpu"))
    assert history.train_acc[-1] > 0.9


@pytest.mark.parametrize("kwargs, error, name", [
    ({"epochs": 0}, ValueError, "epochs"), ({"lr": 0.0}, ValueError, "lr"),
    ({"optimizer": "lbfgs"}, ValueError, "optimizer"), ({"patience": 3}, ValueError, "patience"),
    ({"batch_size": 2.0}, TypeError, "batch_size"),
])
def test_fit_rejects_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        fit(MLP(2, hidden=(4,)), _blobs(), progress=False, **kwargs)


def test_fit_rejects_bad_data():
    X, y = _blobs()
    with pytest.raises(ValueError, match="train: X and y must have the same length"):
        fit(MLP(2), (X, y[:-1]), progress=False)
    with pytest.raises(TypeError, match="train must be an"):
        fit(MLP(2), X, progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fit(lambda t: t, (X, y), progress=False)


def test_fit_trains_an_objective_and_records_its_terms():
    torch.manual_seed(0)
    model = MLP(2, hidden=(8,), out_features=2)
    ce = torch.nn.CrossEntropyLoss()

    def objective(X, y):
        logits = model(X)
        weights = sum(p.pow(2).sum() for p in model.parameters())
        return Step(ce(logits, y) + 1e-3 * weights, logits, {"cross_entropy": ce(logits, y), "skipped": None})

    history = fit(model, _blobs(), _blobs(seed=1), objective=objective, epochs=4, lr=1e-2, device="cpu")
    assert len(history["cross_entropy"]) == 4 and all(math.isnan(v) for v in history["skipped"])
    assert history["cross_entropy"][-1] < history["cross_entropy"][0]
    assert all(t < loss for t, loss in zip(history["cross_entropy"], history.train_loss))
    assert len(history.val_terms["cross_entropy"]) == 4
    with pytest.raises(ValueError, match="either loss_fn or objective"):
        fit(model, _blobs(), loss_fn=ce, objective=objective)


def test_fit_leaves_the_global_generator_and_the_flags_alone():
    torch.manual_seed(0)
    model = MLP(2, hidden=(8,), out_features=2)
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.clone()
    state = torch.get_rng_state()
    fit(model, _blobs(), epochs=2, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    assert not model[0].weight.requires_grad and torch.equal(model[0].weight, frozen)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # a trainer inside an evaluation block still trains
        fit(model, _blobs(), epochs=1, device="cpu")
    with pytest.raises(ValueError, match="parameters: nothing to train"):
        fit(model, _blobs(), parameters=[], device="cpu")
