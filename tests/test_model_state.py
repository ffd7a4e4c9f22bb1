"""No public function moves the caller's model, changes its modes or flags, or leaves gradients in
it, unless that is its stated purpose (training): checked for every public function of the shared
core, the saliency explainers, the metrics and the model-agnostic tools that takes a model, on a
model whose modules and parameters are in mixed states. Each method's subpackage has the same
test in its own test file."""

import pytest
import torch
from captum.attr import Occlusion, Saliency

import xnn_lab
from tests._state import assert_state_kept, mix_states, public_api_taking_a_model, snapshot
from xnn_lab import agnostic, cam, metrics
from xnn_lab.models import SmallCNN


def _cnn():
    torch.manual_seed(0)
    return SmallCNN(3, widths=(4, 8))


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.2),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3))


IMAGES = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
MAPS = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(2))
ROWS = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
LABELS = torch.arange(16) % 3

# name -> (model factory, call(model), whether it trains the model)
CASES = {
    "fit": (_mlp, lambda m: xnn_lab.fit(m, (ROWS, LABELS), (ROWS, LABELS), epochs=2, device="cpu"), True),
    "evaluate": (_mlp, lambda m: xnn_lab.evaluate(m, (ROWS, LABELS)), False),
    "predict": (_mlp, lambda m: xnn_lab.predict(m, ROWS), False),
    "CAM": (_cnn, lambda m: cam.CAM(m, "features")(IMAGES, "all"), False),
    "GradCAM": (_cnn, lambda m: cam.GradCAM(m, "features.2")(IMAGES, topk=2), False),
    "GradCAMPlusPlus": (_cnn, lambda m: cam.GradCAMPlusPlus(m, "features")(IMAGES), False),
    "BaseCAM": (_cnn, lambda m: cam.GradCAM(m, "features").explain(IMAGES), False),
    "cam_explainers": (_cnn, lambda m: [e(IMAGES) for e in cam.cam_explainers(m, ["features"])["features"].values()],
                       False),
    "find_gap_head": (_cnn, lambda m: cam.find_gap_head(m), False),
    "retrain_gap_head": (_cnn, lambda m: cam.retrain_gap_head(m.features, (IMAGES, torch.arange(4) % 3),
                                                              num_classes=3, epochs=2), False),
    "deletion_curve": (_cnn, lambda m: metrics.deletion_curve(m, IMAGES, MAPS, 0, steps=4), False),
    "insertion_curve": (_cnn, lambda m: metrics.insertion_curve(m, IMAGES, MAPS, 1, steps=4), False),
    "road_curve": (_cnn, lambda m: metrics.road_curve(m, IMAGES, MAPS, 2, fractions=[0.0, 0.5]), False),
    "randomization_sanity_check": (_cnn, lambda m: metrics.randomization_sanity_check(
        cam.GradCAM(m, "features"), IMAGES, layers=["classifier", "features.0"]), False),
    "local_lipschitz": (_cnn, lambda m: metrics.local_lipschitz(cam.GradCAM(m, "features"), IMAGES[:2], 0.1,
                                                                  num_samples=2), False),
    "ice_curves": (_mlp, lambda m: agnostic.ice_curves(m, ROWS, 1, target=0, num_points=3), False),
    "partial_dependence": (_mlp, lambda m: agnostic.partial_dependence(m, ROWS, 2, target=1, num_points=3),
                           False),
    "CaptumExplainer": (_cnn, lambda m: agnostic.CaptumExplainer(Saliency(m))(IMAGES), False),
    "CaptumExplainer (occlusion)": (_cnn, lambda m: agnostic.CaptumExplainer(
        Occlusion(m), sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4))(IMAGES, 1), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_public_function_keeps_the_model_state(name):
    factory, call, trains = CASES[name]
    model = mix_states(factory())
    before = snapshot(model)
    call(model)
    assert_state_kept(model, before, trains=trains)


@pytest.mark.parametrize("name", sorted(CASES))
def test_public_function_keeps_the_model_state_under_no_grad(name):
    factory, call, trains = CASES[name]
    if trains:
        pytest.skip("training needs gradients")
    model = mix_states(factory())
    before = snapshot(model)
    with torch.no_grad():
        call(model)
    assert_state_kept(model, before)


def test_every_public_function_that_takes_a_model_is_covered():
    """A new public function that takes a model must join CASES (here or in its method's tests)."""
    covered = {name.split(" ")[0] for name in CASES}
    for package in (xnn_lab, cam, metrics, agnostic):
        missing = public_api_taking_a_model(package) - covered
        assert not missing, f"{package.__name__}: no state test for {sorted(missing)}"


def test_the_state_check_fails_for_the_bugs_it_guards_against():
    """The check is not vacuous: a flattening train(was_training), a move or a leftover gradient fail it."""
    model = mix_states(_mlp())
    before = snapshot(model)
    was_training = model.training
    model.eval()
    model.train(was_training)  # the old way of restoring: flattens every module's own flag
    with pytest.raises(AssertionError, match="train/eval flags"):
        assert_state_kept(model, before)
    model = mix_states(_mlp())
    before = snapshot(model)
    first = next(model.parameters())
    first.grad = torch.ones_like(first)
    with pytest.raises(AssertionError, match="gradients left"):
        assert_state_kept(model, before)
    model = mix_states(_mlp())
    before = snapshot(model)
    model.to("meta")
    with pytest.raises(AssertionError, match="moved"):
        assert_state_kept(model, before)
