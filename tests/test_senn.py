"""SENN: the aggregator, the robustness loss against brute-force autograd, the loss terms, training,
the caller's model state, and the local Lipschitz search against the analytic constant of a linear map."""

import math

import pytest
import torch
import torch.nn.functional as F

import xnn_lab.senn
from tests._state import assert_state_kept, mix_states, public_api_taking_a_model, snapshot
from xnn_lab import History
from xnn_lab.data import load_breast_cancer
from xnn_lab.metrics import local_lipschitz
from xnn_lab.senn import (SENN, SENNExplanation, evaluate_senn, fit_senn, robustness_loss,
                          robustness_residual, senn_loss)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _senn(num_concepts=3, in_features=6, num_classes=4, seed=0, activation="tanh"):
    torch.manual_seed(seed)
    return SENN(in_features, num_classes, num_concepts, concept_hidden=(8,), relevance_hidden=(8,),
                activation=activation).double()


def _brute_force_residual(model, x):
    """grad_x f_c - sum_i theta_ic grad_x h_i, one autograd call per sample, class and concept."""
    rows = []
    for b in range(len(x)):
        xb = x[b:b + 1].clone().requires_grad_(True)
        logits, concepts, relevances, _ = model.explain(xb)
        grad_f = torch.stack([torch.autograd.grad(logits[0, c], xb, retain_graph=True, create_graph=True)[0][0]
                              for c in range(logits.shape[1])])
        grad_h = torch.stack([torch.autograd.grad(concepts[0, i], xb, retain_graph=True, create_graph=True)[0][0]
                              for i in range(concepts.shape[1])])
        rows.append(grad_f - relevances[0].T @ grad_h)
    return torch.stack(rows)


@pytest.mark.parametrize("num_concepts", [3, None], ids=["learned", "identity"])
def test_robustness_residual_matches_per_sample_per_output_autograd(num_concepts):
    model = _senn(num_concepts)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _brute_force_residual(model, x)
    residual = robustness_residual(model, x)
    assert residual.shape == (5, 4, 6)
    torch.testing.assert_close(residual, expected)
    assert expected.abs().max() > 1e-3  # a generic SENN is not locally linear in its concepts
    torch.testing.assert_close(robustness_loss(model, x), expected.flatten(1).norm(dim=1).mean())


def test_robustness_loss_trains_like_the_brute_force_loss():
    """The batched loss has the same gradient in every parameter as the brute-force one."""
    model = _senn()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # The decoder does not enter the residual, nor does theta's last bias (in the brute force its
    # terms cancel): their gradients are None or zero.
    params = list(model.parameters())
    fast = torch.autograd.grad(robustness_loss(model, x), params, allow_unused=True, materialize_grads=True)
    slow = torch.autograd.grad(_brute_force_residual(model, x).flatten(1).norm(dim=1).mean(), params,
                               allow_unused=True, materialize_grads=True)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b)
    assert fast[0].abs().max() > 0  # the loss also trains the conceptizer, through h


@pytest.mark.parametrize("num_concepts", [3, None], ids=["learned", "identity"])
def test_robustness_loss_is_zero_for_constant_relevances(num_concepts):
    """theta constant: f = theta^T h(x) is linear in h, though nonlinear in x when h is learned."""
    model = _senn(num_concepts)
    with torch.no_grad():
        model.parametrizer[-1].weight.zero_()  # theta(x) = the last layer's bias, for every x
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert robustness_residual(model, x).abs().max() < 1e-12
    assert robustness_loss(model, x) < 1e-12
    assert _brute_force_residual(model, x).abs().max() < 1e-12


def test_aggregator_is_the_explicit_sum_over_concepts():
    model = _senn()
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    out = model.explain(x)
    assert isinstance(out, SENNExplanation)
    assert out.concepts.shape == (7, 3) and out.relevances.shape == (7, 3, 4)
    assert out.logits.shape == (7, 4) and out.reconstruction.shape == (7, 6)
    explicit = torch.zeros(7, 4, dtype=torch.float64)
    for b in range(7):
        for c in range(4):
            for i in range(3):
                explicit[b, c] += out.relevances[b, i, c] * out.concepts[b, i]
    torch.testing.assert_close(out.logits, explicit)
    torch.testing.assert_close(model(x), explicit)
    torch.testing.assert_close(out.reconstruction, model.decode(out.concepts))


def test_identity_conceptizer_uses_the_input_features():
    model = _senn(num_concepts=None)
    x = torch.randn(3, 6, dtype=torch.float64)
    out = model.explain(x)
    assert model.num_concepts == 6 and not model.learns_concepts
    assert torch.equal(out.concepts, x) and out.reconstruction is None
    assert out.relevances.shape == (3, 6, 4)


def test_senn_loss_terms_and_weights():
    model = _senn()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(8, 6, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 4, (8,), generator=generator)
    terms = senn_loss(model, x, y, lam=0.3, xi=2.0, sparsity=0.1)
    out = model.explain(x)
    torch.testing.assert_close(terms.classification, F.cross_entropy(out.logits, y))
    torch.testing.assert_close(terms.robustness, robustness_loss(model, x))
    torch.testing.assert_close(terms.reconstruction, ((out.reconstruction - x) ** 2).mean())
    torch.testing.assert_close(terms.sparsity, out.concepts.abs().mean())
    torch.testing.assert_close(terms.total, terms.classification + 0.3 * terms.robustness
                               + 2.0 * terms.reconstruction + 0.1 * terms.sparsity)
    # the total trains every term: its gradient is the weighted sum of the terms' gradients
    params = list(model.parameters())
    independent = (F.cross_entropy(out.logits, y) + 0.3 * robustness_loss(model, x)
                   + 2.0 * ((out.reconstruction - x) ** 2).mean() + 0.1 * out.concepts.abs().mean())
    for a, b in zip(torch.autograd.grad(terms.total, params), torch.autograd.grad(independent, params)):
        torch.testing.assert_close(a, b)
    plain = senn_loss(model, x, y, lam=0.0, xi=2.0, sparsity=0.1)
    assert plain.robustness is None  # not computed: that is what makes a plain step cheap
    torch.testing.assert_close(plain.total, terms.total - 0.3 * terms.robustness)
    scores = evaluate_senn(model, (x, y), lam=0.3, xi=2.0, sparsity=0.1, batch_size=3)
    assert scores["loss"] == pytest.approx(terms.total.item())
    assert scores["robustness"] == pytest.approx(terms.robustness.item())
    assert scores["accuracy"] == pytest.approx((out.logits.argmax(1) == y).double().mean().item())
    identity = senn_loss(_senn(num_concepts=None), x, y, lam=0.0, xi=2.0, sparsity=0.1)
    assert identity.reconstruction == 0 and identity.sparsity == 0


def test_fit_senn_learns_and_records_each_term():
    train, val = load_breast_cancer("train"), load_breast_cancer("val")
    model = SENN(30, 2, relevance_hidden=(16,))
    history = fit_senn(model, train, val, lam=0.0, epochs=8, lr=3e-3, seed=0, device=torch.device("cpu"),
                       restore_best=False)
    assert isinstance(history, History) and not model.training
    assert len(history.train_loss) == len(history.val_acc) == len(history["classification"]) == 8
    assert set(history.terms) == set(history.val_terms) == {"classification", "robustness", "reconstruction",
                                                             "sparsity"}
    assert all(math.isnan(v) for v in history["robustness"])  # lam = 0: not computed
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_acc[-1] >= 0.9
    scores = evaluate_senn(model, val)
    assert scores["accuracy"] == pytest.approx(history.val_acc[-1])
    assert scores["classification"] == pytest.approx(history.val_terms["classification"][-1])
    assert scores["robustness"] > 0  # measured here whatever lam


def test_fit_senn_validates_on_the_senn_loss_and_keeps_the_best_epoch():
    train, val = load_breast_cancer("train"), load_breast_cancer("val")
    # A learning rate this large makes the validation loss go up and down: the best epoch is not the last.
    kwargs = {"lam": 0.1, "epochs": 3, "lr": 0.05, "batch_size": 32, "seed": 0, "device": torch.device("cpu")}
    torch.manual_seed(0)
    model = SENN(30, 2, relevance_hidden=(16,))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit_senn(model, train, val, **kwargs)
    assert history.best_epoch == min(range(3), key=history.val_loss.__getitem__)
    assert history.best_epoch < 2, history.val_loss  # otherwise this test could not tell the two apart
    scores = evaluate_senn(model, val, lam=0.1, xi=1.0, sparsity=1e-3)
    assert scores["loss"] == pytest.approx(history.val_loss[history.best_epoch])
    assert scores["robustness"] == pytest.approx(history.val_terms["robustness"][history.best_epoch])
    last = SENN(30, 2, relevance_hidden=(16,))
    last.load_state_dict(initial)
    fit_senn(last, train, val, restore_best=False, **kwargs)
    assert evaluate_senn(last, val, lam=0.1, xi=1.0, sparsity=1e-3)["loss"] == pytest.approx(history.val_loss[-1])
    stopped = SENN(30, 2, relevance_hidden=(16,))
    stopped.load_state_dict(initial)
    early = fit_senn(stopped, train, val, patience=1, **{**kwargs, "epochs": 6})
    assert early.stopped_early and len(early.train_loss) < 6


def test_fit_senn_is_seeded_and_leaves_the_global_generator_alone():
    train = load_breast_cancer("train")

    def run(seed):
        torch.manual_seed(123)  # the same initial weights; fit_senn's seed fixes the order
        model = SENN(30, 2, relevance_hidden=(8,))
        state = torch.get_rng_state()
        fit_senn(model, train, lam=0.1, epochs=2, seed=seed, device=torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), state)
        return model.parametrizer[0].weight.detach().clone()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def _mixed_senn(num_concepts=3):
    return mix_states(_senn(num_concepts))


def _data(n=10):
    generator = torch.Generator().manual_seed(9)
    return torch.randn(n, 6, dtype=torch.float64, generator=generator), torch.randint(0, 4, (n,), generator=generator)


STATE_CALLS = {
    "robustness_residual": lambda model: robustness_residual(model, _data()[0]),
    "robustness_loss": lambda model: robustness_loss(model, _data()[0]),
    "senn_loss": lambda model: senn_loss(model, *_data(), lam=0.5, xi=1.0, sparsity=0.1),
    "evaluate_senn": lambda model: evaluate_senn(model, _data(), lam=0.5, xi=1.0, sparsity=0.1, batch_size=4),
    "fit_senn": lambda model: fit_senn(model, _data(), _data(6), lam=0.5, epochs=2, batch_size=4,
                                       device=torch.device("cpu")),
}


@pytest.mark.parametrize("name", sorted(STATE_CALLS))
def test_public_functions_give_the_model_state_back(name):
    """Modes, requires_grad flags, gradients and device come back; only the trainer changes weights."""
    for num_concepts in (3, None):
        model = _mixed_senn(num_concepts)
        before = snapshot(model)
        STATE_CALLS[name](model)
        assert_state_kept(model, before, trains=name == "fit_senn")


def test_fit_senn_trains_only_the_parameters_that_require_grad():
    model = _mixed_senn()
    frozen = [(p, p.detach().clone()) for p in model.parameters() if not p.requires_grad]
    trained = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
    fit_senn(model, _data(), lam=0.5, epochs=2, batch_size=4, device=torch.device("cpu"))
    assert frozen and all(torch.equal(p, value) for p, value in frozen)
    assert any(not torch.equal(p, value) for p, value in trained)


def test_the_state_tests_cover_every_public_function_that_takes_a_model():
    assert set(STATE_CALLS) == public_api_taking_a_model(xnn_lab.senn)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="in_features"):
        SENN(0, 2)
    with pytest.raises(TypeError, match="num_concepts"):
        SENN(4, 2, num_concepts=2.5)
    with pytest.raises(TypeError, match="relevance_hidden"):
        SENN(4, 2, relevance_hidden=8)
    model = SENN(4, 2, 3)
    with pytest.raises(ValueError, match="x must have 4 features"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match="decode"):
        SENN(4, 2).decode(torch.randn(2, 4))
    with pytest.raises(TypeError, match="model"):
        senn_loss(torch.nn.Linear(4, 2), torch.randn(2, 4), torch.tensor([0, 1]), 0.1, 1.0, 0.0)
    with pytest.raises(ValueError, match="lam"):
        senn_loss(model, torch.randn(2, 4), torch.tensor([0, 1]), -0.1, 1.0, 0.0)
    with pytest.raises(ValueError, match="y must"):
        senn_loss(model, torch.randn(2, 4), torch.tensor([0, 1, 1]), 0.1, 1.0, 0.0)


@CUDA
def test_robustness_and_lipschitz_on_cuda_match_the_cpu():
    model = _senn()
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(robustness_residual(model.cuda(), x.cuda()).cpu(),
                               robustness_residual(model.cpu(), x))
    explain = lambda z: torch.tanh(z) * 2  # noqa: E731
    on_gpu = local_lipschitz(explain, x.cuda(), radius=0.3, num_samples=4, steps=5, seed=0)
    on_cpu = local_lipschitz(explain, x, radius=0.3, num_samples=4, steps=5, seed=0)
    assert on_gpu.values.device.type == "cuda"
    torch.testing.assert_close(on_gpu.values.cpu(), on_cpu.values)
