"""Concept bottlenecks, the multitask CNN and TED: the joint loss against its formula by hand, the
training order of independent and sequential bottlenecks, interventions, TED's (y, e) coding, and
the errors of bad input."""

import copy
import math

import pytest
import torch
from torch import nn

from xnn_lab.data import make_parts
from xnn_lab.data.parts import ATTRIBUTE_NAMES
from xnn_lab.models.concepts import (
    ConceptBottleneck,
    JointLoss,
    MultitaskCNN,
    StackedOutputs,
    TEDClassifier,
    decode_ted,
    encode_ted,
    joint_targets,
    train_bottleneck,
)
from xnn_lab.train import fit

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


def test_multitask_stacked_output_is_both_heads_on_one_trunk(parts):
    torch.manual_seed(0)
    model = MultitaskCNN(8, K, widths=WIDTHS).eval()
    x = parts.images[:4]
    with torch.no_grad():
        stacked = model.stacked(x)
        assert torch.allclose(stacked[:, :8], model(x), atol=1e-6)
        assert torch.allclose(stacked[:, 8:], model.concept_logits(x), atol=1e-6)
    with pytest.raises(TypeError, match="model"):
        StackedOutputs(nn.Linear(2, 2))


def test_ted_coding_round_trips_every_pair():
    C, E = 8, 3
    y, e = torch.cartesian_prod(torch.arange(C), torch.arange(E)).unbind(1)
    z = encode_ted(y, e, E)
    assert sorted(z.tolist()) == list(range(C * E))  # a bijection onto the C * E classes
    y_back, e_back = decode_ted(z, E)
    assert torch.equal(y_back, y) and torch.equal(e_back, e)


def test_ted_classifier_decodes_its_argmax(parts):
    torch.manual_seed(0)
    model = TEDClassifier(8, 3, widths=WIDTHS)
    x = parts.images[:5]
    y, e = model.explain_predict(x)
    with torch.no_grad():
        z = model.eval()(x).argmax(1)
    assert torch.equal(y * 3 + e, z)
    assert int(y.max()) < 8 and int(e.max()) < 3


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
