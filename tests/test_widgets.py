import sys

import pytest
import torch

from xnn_lab.cam import GradCAM, cam_explainers
from xnn_lab.models import SmallCNN
from xnn_lab.widgets import cam_explorer, cam_grid



def _model():
    torch.manual_seed(0)
    return SmallCNN(3, widths=(4, 8)).eval()


def test_cam_grid_draws_every_layer_and_method():
    model, image = _model(), torch.rand(3, 16, 16)
    fig = cam_grid(image, cam_explainers(model, ["features.2", "features"]), target=1, class_names=["a", "b", "c"])
    axes = fig.axes
    assert len(axes) == 2 * 4
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "b"
    assert titles[1:4] == ["CAM @ features.2: n/a", "Grad-CAM @ features.2", "Grad-CAM++ @ features.2"]
    assert titles[5:] == ["CAM @ features", "Grad-CAM @ features", "Grad-CAM++ @ features"]
    # the Grad-CAM panel shows the Grad-CAM map (overlay rescales it to [0, 1] for display)
    shown = torch.tensor(axes[6].images[1].get_array().data)
    expected = GradCAM(model, "features")(image[None], 1)[0]
    torch.testing.assert_close(shown.float(), (expected - expected.min()) / (expected.max() - expected.min()))


def test_cam_grid_checks_its_arguments():
    model, image = _model(), torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="methods must be a non-empty list drawn from"):
        cam_explainers(model, ["features"], ["LIME"])
    explainers = cam_explainers(model, ["features"])
    with pytest.raises(ValueError, match="class_names must name the model's 3 classes"):
        cam_grid(image, explainers, class_names=["a"])
    with pytest.raises(ValueError, match="target must be <= 2"):
        cam_grid(image, explainers, target=3)
    with pytest.raises(TypeError, match=r"explainers\['features'\]\['mine'\] must be a saliency explainer"):
        cam_grid(image, {"features": {"mine": "not callable"}})


def test_cam_grid_takes_any_saliency_explainer_and_keeps_the_model_state():
    from captum.attr import Saliency

    from tests._state import assert_state_kept, mix_states, snapshot
    from xnn_lab.agnostic import CaptumExplainer

    model, image = _model(), torch.rand(3, 16, 16)
    mix_states(model)
    before = snapshot(model)
    fig = cam_grid(image, {"input": {"saliency": CaptumExplainer(Saliency(model)),
                                     "Grad-CAM": GradCAM(model, "features")}}, class_names=["a", "b", "c"])
    assert [ax.get_title() for ax in fig.axes][1:] == ["saliency @ input", "Grad-CAM @ input"]
    assert_state_kept(model, before)


def test_cam_explorer_says_what_it_needs_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # makes `import ipywidgets` fail
    with pytest.raises(ImportError, match="cam_explorer needs ipywidgets"):
        cam_explorer(torch.rand(2, 3, 16, 16), cam_explainers(_model(), ["features"]))


class _Control:
    def __init__(self, *args, options=None, value=None, description=""):
        self.options, self.description, self.observers = options, description, []
        self.value = value if value is not None else (args[0] if args else options[0])
        if isinstance(self.value, tuple):
            self.value = self.value[1]

    def observe(self, callback, names):
        self.observers.append(callback)

    def set(self, value):
        self.value = value
        for callback in self.observers:
            callback({"new": value})


class _Output:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def clear_output(self, wait=False):
        pass


class _Box:
    def __init__(self, children):
        self.children = children


def test_cam_explorer_redraws_when_a_control_changes(monkeypatch):
    import types

    import matplotlib.pyplot as plt

    fake = types.SimpleNamespace(IntSlider=_Control, Dropdown=_Control, Output=_Output, HBox=_Box, VBox=_Box)
    monkeypatch.setitem(sys.modules, "ipywidgets", fake)
    plt.close("all")
    ui = cam_explorer(torch.rand(2, 3, 16, 16), cam_explainers(_model(), ["features.2", "features"]),
                      class_names=["a", "b", "c"])
    (_, target), (layer, method) = (box.children for box in ui.children[:2])
    assert layer.value == "features" and method.value == "CAM" and target.value == 0
    assert plt.gcf().axes[0].get_title() == "CAM @ features"
    method.set("Grad-CAM++")
    assert plt.gcf().axes[0].get_title() == "Grad-CAM++ @ features"
    layer.set("features.2")
    assert plt.gcf().axes[0].get_title() == "Grad-CAM++ @ features.2"
