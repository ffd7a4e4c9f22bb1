"""Concept bottlenecks, the multitask CNN and TED: the joint loss against its formula by hand, the
training order of independent and sequential bottlenecks, interventions, TED's (y, e) coding,
``explain``'s named results, the model state every public function gives back, and the errors of
bad input."""

import copy
import math

import pytest
import torch
from torch import nn

import xnn_lab.concepts
from tests._state import assert_state_kept, mix_states, public_api_taking_a_model, snapshot
from xnn_lab import fit
from xnn_lab.concepts import (
    ConceptBottleneck,
    ConceptExplanation,
    JointLoss,
    MultitaskCNN,
    TEDClassifier,
    TEDExplanation,
    decode_ted,
    encode_ted,
    joint_objective,
    joint_targets,
    train_bottleneck,
)
from xnn_lab.data import make_parts
from xnn_lab.data.parts import ATTRIBUTE_NAMES

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
WIDTHS = (4, 8)
K = len(ATTRIBUTE_NAMES)  # concepts per bird


@pytest.fixture(scope="module")
def parts():
    return make_parts(24, split="train", image_size=32, seed=0)


def _bottleneck(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ConceptBottleneck(8, K, widths=WIDTHS, **kwargs)


def test_joint_loss_equals_its_formula_by_hand():
    torch.manual_seed(0)
    B, C, k, lam = 5, 4, 3, 0.7
    outputs = torch.randn(B, C + k, dtype=torch.float64)
    labels = torch.randint(0, C, (B,))
    concepts = torch.rand(B, k, dtype=torch.float64)  # soft targets in [0, 1] are allowed
    loss = JointLoss(C, lam)(outputs, joint_targets(labels, concepts).double())
    # L_y: -log softmax of the true label; L_cj: -(c log s + (1 - c) log(1 - s)), s = 1 / (1 + e^-z).
    label_loss = sum(-(outputs[b, labels[b]] - math.log(sum(math.exp(v) for v in outputs[b, :C].tolist())))
                     for b in range(B)) / B
    concept_loss = 0.0
    for j in range(k):
        for b in range(B):
            s = 1 / (1 + math.exp(-float(outputs[b, C + j])))
            c = float(concepts[b, j])
            concept_loss += -(c * math.log(s) + (1 - c) * math.log(1 - s)) / B
    assert loss.item() == pytest.approx(float(label_loss) + lam * concept_loss, rel=1e-6)


def test_joint_loss_rejects_outputs_and_targets_that_disagree():
    with pytest.raises(ValueError, match="outputs"):
        JointLoss(4)(torch.zeros(2, 6), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="concept_weight"):
        JointLoss(4, concept_weight=-1.0)


def test_independent_f_is_trained_on_true_and_sequential_f_on_predicted_concepts(parts):
    settings = {"epochs": 1, "label_epochs": 3, "lr": 1e-2, "label_lr": 1e-2, "batch_size": 8, "seed": 3,
                "device": torch.device("cpu")}
    start = _bottleneck()
    models = {mode: copy.deepcopy(start) for mode in ("independent", "sequential")}
    for mode, model in models.items():
        train_bottleneck(model, parts.images, parts.labels, parts.attributes, mode=mode, **settings)

    # Both modes train g alone on the concepts first, identically.
    for p, q in zip(models["independent"].concept_model.parameters(), models["sequential"].concept_model.parameters()):
        assert torch.equal(p, q)
    # Reference f's: the untrained f fitted on the true concepts, and on g's predicted probabilities.
    g = models["sequential"].concept_model
    with torch.no_grad():
        predicted = torch.sigmoid(g.eval()(parts.images))
    assert not torch.equal(predicted, parts.attributes)
    reference = {}
    for name, inputs in (("true", parts.attributes), ("predicted", predicted)):
        f = copy.deepcopy(start.label_model)
        fit(f, (inputs, parts.labels), epochs=3, lr=1e-2, batch_size=256, seed=3, device=torch.device("cpu"),
            progress=False)
        reference[name] = f
    weight = {mode: model.label_model[-1].weight for mode, model in models.items()}
    assert torch.allclose(weight["independent"], reference["true"][-1].weight, atol=1e-6)
    assert torch.allclose(weight["sequential"], reference["predicted"][-1].weight, atol=1e-6)
    assert not torch.allclose(weight["independent"], weight["sequential"], atol=1e-4)

    # A sequential f on top of the independent model's g, without retraining g, is the same model.
    reused = copy.deepcopy(start)
    reused.concept_model.load_state_dict(g.state_dict())
    history = train_bottleneck(reused, parts.images, parts.labels, parts.attributes, mode="sequential",
                               concepts_trained=True, **settings)
    assert set(history) == {"labels"}
    assert torch.allclose(reused.label_model[-1].weight, weight["sequential"], atol=1e-6)


def test_joint_training_lowers_the_joint_loss_and_trains_g_and_f_together(parts):
    model = _bottleneck()
    before = copy.deepcopy(model)
    history = train_bottleneck(model, parts.images, parts.labels, parts.attributes, mode="joint", epochs=4,
                               lr=1e-2, batch_size=8, seed=0, device=torch.device("cpu"))
    losses = history["joint"].train_loss
    assert losses[-1] < losses[0]
    for old, new in ((before.concept_model, model.concept_model), (before.label_model, model.label_model)):
        assert not torch.equal(next(old.parameters()), next(new.parameters()))


def test_train_bottleneck_is_seeded_and_leaves_the_global_generator_alone(parts):
    def run(seed):
        model = _bottleneck()
        state = torch.get_rng_state()
        train_bottleneck(model, parts.images, parts.labels, parts.attributes, mode="joint", epochs=1, batch_size=8,
                         seed=seed, device=torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), state)
        return model.concept_model.classifier.weight.detach().clone()

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_joint_history_records_both_parts_of_the_loss(parts):
    lam = 0.3
    history = train_bottleneck(_bottleneck(), parts.images, parts.labels, parts.attributes, mode="joint",
                               concept_weight=lam, epochs=2, lr=1e-2, batch_size=8, device=torch.device("cpu"))
    joint = history["joint"]
    assert len(joint["label"]) == len(joint["concepts"]) == 2
    for total, label, concepts in zip(joint.train_loss, joint["label"], joint["concepts"]):
        assert total == pytest.approx(label + lam * concepts, rel=1e-6)
        assert label > 0 and concepts > 0


def test_joint_objective_is_the_joint_loss_on_both_heads(parts):
    torch.manual_seed(0)
    x, targets = parts.images[:6], joint_targets(parts.labels[:6], parts.attributes[:6])
    for model in (ConceptBottleneck(8, K, widths=WIDTHS).eval(), MultitaskCNN(8, K, widths=WIDTHS).eval()):
        step = joint_objective(model, 0.7)(x, targets)
        explanation = model.explain(x)
        stacked = torch.cat([explanation.logits, explanation.concept_logits], dim=1)
        torch.testing.assert_close(step.loss, JointLoss(8, 0.7)(stacked, targets))
        torch.testing.assert_close(step.logits, model(x))
        torch.testing.assert_close(step.loss, step.terms["label"] + 0.7 * step.terms["concepts"])
    with pytest.raises(TypeError, match="model"):
        joint_objective(nn.Linear(2, 2))


def test_multitask_training_runs_on_fit_with_the_joint_objective(parts):
    torch.manual_seed(0)
    model = MultitaskCNN(8, K, widths=WIDTHS)
    start = copy.deepcopy(model)
    data = (parts.images, joint_targets(parts.labels, parts.attributes))
    history = fit(model, data, objective=joint_objective(model), epochs=3, lr=1e-2, batch_size=8,
                  device=torch.device("cpu"))
    assert history["concepts"][-1] < history["concepts"][0]
    for old, new in zip(start.parameters(), model.parameters()):
        assert not torch.equal(old, new)


def test_intervention_with_all_true_concepts_is_f_of_the_true_concepts(parts):
    model = _bottleneck(label_hidden=(6,)).eval()
    x, c = parts.images[:6], parts.attributes[:6]
    with torch.no_grad():
        expected = model.label_model(c)
        assert torch.allclose(model.intervene(x, c, range(K)), expected, atol=1e-6)
        assert torch.allclose(model.intervene(x, c, torch.ones(K, dtype=torch.bool)), expected, atol=1e-6)
        # Nothing replaced: the plain prediction.
        assert torch.allclose(model.intervene(x, c, []), model(x), atol=1e-6)
        # Replacing concepts 0 and 4 by hand.
        manual = torch.sigmoid(model.concept_logits(x))
        manual[:, [0, 4]] = c[:, [0, 4]]
        assert torch.allclose(model.intervene(x, c, [0, 4]), model.label_model(manual), atol=1e-6)
        # A per-sample mask replaces different concepts in different rows.
        mask = torch.zeros(6, K, dtype=torch.bool)
        mask[0, 2] = mask[3, 7] = True
        manual = torch.where(mask, c, torch.sigmoid(model.concept_logits(x)))
        assert torch.allclose(model.intervene(x, c, mask), model.label_model(manual), atol=1e-6)


def test_intervention_restores_train_mode(parts):
    model = _bottleneck().train()
    model.intervene(parts.images[:2], parts.attributes[:2], [0])
    assert model.training


def test_interventions_run_in_eval_mode_and_give_every_module_its_mode_back(parts):
    model = mix_states(_bottleneck(label_hidden=(5,)))
    x, c = parts.images[:5], parts.attributes[:5]
    expected = copy.deepcopy(model).eval()
    with torch.no_grad():
        reference = expected.label_model(torch.where(torch.arange(K) < 3, c, torch.sigmoid(expected.concept_logits(x))))
    before = snapshot(model)
    torch.testing.assert_close(model.intervene(x, c, [0, 1, 2]), reference)
    assert_state_kept(model, before)
    torch.testing.assert_close(model.intervention_curve(x, c, [0, 1, 2])[-1], reference)
    assert_state_kept(model, before)


@pytest.mark.parametrize("concepts, message", [
    (torch.zeros(3, K - 1), rf"true_concepts must have shape \(B, k\) = \(3, {K}\)"),
    (torch.zeros(2, K), r"true_concepts must have shape"),
    (torch.full((3, K), 1.5), r"true_concepts must hold values in \[0, 1\]"),
    (torch.full((3, K), -0.1), r"true_concepts must hold values in \[0, 1\]"),
    (torch.zeros(3), r"true_concepts must have 2 dimensions"),
])
def test_intervention_refuses_bad_concept_vectors(parts, concepts, message):
    with pytest.raises(ValueError, match=message):
        _bottleneck().intervene(parts.images[:3], concepts, [0])


@pytest.mark.parametrize("which, error", [
    ([K], ValueError), ([-1], ValueError), (torch.ones(8, dtype=torch.bool), ValueError),
    (torch.tensor([0.5]), TypeError), ("head", TypeError),
])
def test_intervention_refuses_bad_concept_choices(parts, which, error):
    with pytest.raises(error, match="which"):
        _bottleneck().intervene(parts.images[:3], parts.attributes[:3], which)


@pytest.mark.parametrize("build", [lambda: ConceptBottleneck(8, K, widths=WIDTHS, label_hidden=(6,)),
                                   lambda: MultitaskCNN(8, K, widths=WIDTHS)])
def test_explain_gives_the_logits_of_forward_with_the_predicted_concepts(parts, build):
    torch.manual_seed(0)
    model = build().eval()
    x = parts.images[:4]
    explanation = model.explain(x)
    assert isinstance(explanation, ConceptExplanation)
    assert explanation.logits.shape == (4, 8) and explanation.concept_logits.shape == (4, K)
    torch.testing.assert_close(explanation.logits, model(x))
    torch.testing.assert_close(explanation.concept_logits, model.concept_logits(x))
    torch.testing.assert_close(explanation.concepts, torch.sigmoid(model.concept_logits(x)))
    assert explanation.logits.requires_grad  # as forward: a differentiable pass
    if isinstance(model, ConceptBottleneck):  # the label is computed from the concepts alone
        torch.testing.assert_close(explanation.logits, model.label_model(explanation.concepts))
    with pytest.raises(ValueError, match="x"):
        model.explain(x[0])


def test_ted_coding_round_trips_every_pair():
    C, E = 8, 3
    y, e = torch.cartesian_prod(torch.arange(C), torch.arange(E)).unbind(1)
    z = encode_ted(y, e, E)
    assert sorted(z.tolist()) == list(range(C * E))  # a bijection onto the C * E classes
    y_back, e_back = decode_ted(z, E)
    assert torch.equal(y_back, y) and torch.equal(e_back, e)


def test_ted_classifier_decodes_its_argmax(parts):
    torch.manual_seed(0)
    model = TEDClassifier(8, 3, widths=WIDTHS).eval()
    x = parts.images[:5]
    explanation = model.explain(x)
    assert isinstance(explanation, TEDExplanation)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(explanation.logits, logits)
    y, e = explanation.labels, explanation.explanations
    assert torch.equal(y * 3 + e, logits.argmax(1))
    assert int(y.max()) < 8 and int(e.max()) < 3
    assert y.dtype == e.dtype == torch.int64


def test_ted_coding_refuses_bad_input():
    with pytest.raises(ValueError, match="explanations"):
        encode_ted(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="labels"):
        encode_ted(torch.tensor([-1]), torch.tensor([0]), 3)
    with pytest.raises(TypeError, match="explanations"):
        encode_ted(torch.tensor([0]), torch.tensor([0.0]), 3)
    with pytest.raises(ValueError, match="classes"):
        decode_ted(torch.tensor([-2]), 3)


def test_train_bottleneck_refuses_bad_arguments(parts):
    model = _bottleneck()
    with pytest.raises(ValueError, match="mode"):
        train_bottleneck(model, parts.images, parts.labels, parts.attributes, mode="greedy")
    with pytest.raises(ValueError, match="concepts"):
        train_bottleneck(model, parts.images, parts.labels, parts.attributes[:, :5], mode="joint")
    with pytest.raises(ValueError, match="concepts_trained"):
        train_bottleneck(model, parts.images, parts.labels, parts.attributes, mode="joint", concepts_trained=True)
    with pytest.raises(TypeError, match="model"):
        train_bottleneck(nn.Linear(2, 2), parts.images, parts.labels, parts.attributes, mode="joint")


@CUDA
def test_intervention_stays_on_the_cuda_device(parts):
    model = _bottleneck().cuda()
    x, c = parts.images[:3].cuda(), parts.attributes[:3].cuda()
    assert model.intervene(x, c, [0, 1]).device.type == "cuda"
    order = torch.tensor([2, 0, 1], device="cuda")  # a CUDA order indexes the curve's CPU bookkeeping
    curve = model.intervention_curve(x, c, order)
    assert curve.device.type == "cuda"
    torch.testing.assert_close(curve[2], model.intervene(x, c, [2, 0]))


def test_intervention_curve_row_n_is_intervene_on_the_first_n(parts):
    model = _bottleneck(label_hidden=(5,)).train()
    x, c = parts.images[:5], parts.attributes[:5]
    order = [3, 0, 12, 7]
    curve = model.intervention_curve(x, c, order)
    assert curve.shape == (len(order) + 1, 5, 8) and model.training
    for n in range(len(order) + 1):
        assert torch.allclose(curve[n], model.intervene(x, c, order[:n]), atol=1e-6)


@pytest.mark.parametrize("order, message", [([0, 0], "must not repeat"), ([K], r"\[0, 13\)"), ([-1], "order"),
                                            (torch.tensor([0.5]), "order")])
def test_intervention_curve_refuses_bad_orders(parts, order, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _bottleneck().intervention_curve(parts.images[:2], parts.attributes[:2], order)


def _forward_like(model, parts):
    """The state a plain forward pass on parts.images[:4] leaves: batch norms in train mode update
    their running statistics, as in any forward pass; nothing else changes."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference(parts.images[:4])
    return snapshot(reference)


STATE_CALLS = {
    "train_bottleneck": lambda model, parts: [
        train_bottleneck(model, parts.images[:8], parts.labels[:8], parts.attributes[:8], mode=mode, epochs=1,
                         label_epochs=1, batch_size=4, device=torch.device("cpu"))
        for mode in ("independent", "sequential", "joint")],
    # fit's objective is one training forward pass: it must leave the model as model(x) would.
    "joint_objective": lambda model, parts: joint_objective(model)(
        parts.images[:4], joint_targets(parts.labels[:4], parts.attributes[:4])),
}


@pytest.mark.parametrize("name", sorted(STATE_CALLS))
def test_public_functions_give_the_model_state_back(parts, name):
    """Modes, requires_grad flags, gradients and device come back; only the trainer changes weights."""
    for model in (_bottleneck(label_hidden=(5,)), MultitaskCNN(8, K, widths=WIDTHS)):
        if name == "train_bottleneck" and not isinstance(model, ConceptBottleneck):
            continue
        mix_states(model)
        before = _forward_like(model, parts) if name == "joint_objective" else snapshot(model)
        STATE_CALLS[name](model, parts)
        assert_state_kept(model, before, trains=name == "train_bottleneck")


def test_train_bottleneck_trains_only_the_parameters_that_require_grad(parts):
    model = mix_states(_bottleneck(label_hidden=(5,)))
    frozen = [(p, p.detach().clone()) for p in model.parameters() if not p.requires_grad]
    trained = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
    train_bottleneck(model, parts.images, parts.labels, parts.attributes, mode="joint", epochs=1, batch_size=8,
                     device=torch.device("cpu"))
    assert frozen and all(torch.equal(p, value) for p, value in frozen)
    assert any(not torch.equal(p, value) for p, value in trained)


def test_the_state_tests_cover_every_public_function_that_takes_a_model():
    assert set(STATE_CALLS) == public_api_taking_a_model(xnn_lab.concepts)
