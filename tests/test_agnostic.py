"""ICE / partial dependence against brute force and scikit-learn; grid segments for captum; captum's
methods through CaptumExplainer against captum called directly."""

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.inspection import partial_dependence as sklearn_partial_dependence
from sklearn.linear_model import LogisticRegression

from xnn_lab.agnostic import CaptumExplainer, grid_segments, ice_curves, partial_dependence
from xnn_lab.data.tabular import load_breast_cancer, load_digits
from xnn_lab.models import MLP, SmallCNN

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _mlp(num_features: int, num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(num_features, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes)).eval()


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """The least scikit-learn needs to see a torch network as a fitted classifier."""

    def __init__(self, net=None):
        self.net = net

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        with torch.no_grad():
            return self.net(torch.as_tensor(X, dtype=torch.float32)).softmax(1).numpy()


@pytest.fixture(scope="module")
def digits():
    return load_digits("val").X[:60]


def test_ice_matches_a_per_sample_per_grid_point_loop(digits):
    net = _mlp(64, 10)
    X, feature, target = digits[:8], 21, 3
    grid, curves = ice_curves(net, X, feature, num_points=5, target=target, batch_size=7)
    assert grid.shape == (5,) and curves.shape == (8, 5)
    expected = torch.empty(8, 5)
    with torch.no_grad():
        for i in range(len(X)):
            for g, value in enumerate(grid):
                x = X[i].clone()
                x[feature] = value
                expected[i, g] = net(x[None])[0, target]
    torch.testing.assert_close(curves, expected)
    assert torch.equal(X, digits[:8])  # the input is not modified in place


def test_default_grid_spans_the_1st_to_99th_percentile(digits):
    feature = 21
    grid, _ = ice_curves(_mlp(64, 10), digits, feature, num_points=7, target=0)
    low, high = np.percentile(digits[:, feature].numpy(), [1, 99])
    np.testing.assert_allclose(grid.numpy(), np.linspace(low, high, 7), atol=1e-6)


def test_chunking_does_not_change_the_result(digits):
    net = _mlp(64, 10)
    _, whole = ice_curves(net, digits, 5, num_points=4, target=2)
    _, chunked = ice_curves(net, digits, 5, num_points=4, target=2, batch_size=13)
    torch.testing.assert_close(whole, chunked)


def test_partial_dependence_matches_sklearn_on_a_torch_mlp(digits):
    net = _mlp(64, 10)
    X, feature = digits.numpy(), 26
    grid = torch.tensor([0.0, 0.2, 0.55, 0.9, 1.0])
    estimator = TorchClassifier(net).fit(X, np.arange(10))
    expected = sklearn_partial_dependence(estimator, X, [feature], custom_values={feature: grid.numpy()},
                                          kind="average", method="brute")
    np.testing.assert_allclose(expected["grid_values"][0], grid.numpy())
    for target in (0, 7):
        got_grid, pd = partial_dependence(lambda x: net(x).softmax(1), digits, feature, grid,
                                          target=target)
        assert torch.equal(got_grid, grid)
        np.testing.assert_allclose(pd.numpy(), expected["average"][target], rtol=1e-5, atol=1e-6)


def test_partial_dependence_matches_sklearn_on_a_wrapped_logistic_regression():
    data = load_breast_cancer("train")
    X, y = data.X.double().numpy(), data.y.numpy()
    logreg = LogisticRegression(max_iter=500).fit(X, y)
    feature = 7
    expected = sklearn_partial_dependence(logreg, X, [feature], grid_resolution=9,
                                          percentiles=(0.1, 0.9), kind="average", method="brute")
    grid = torch.from_numpy(expected["grid_values"][0])

    def benign_probability(x):  # a 1-D output: the binary positive class, as sklearn reports it
        return torch.from_numpy(logreg.predict_proba(x.numpy())[:, 1])

    _, pd = partial_dependence(benign_probability, torch.from_numpy(X), feature, grid)
    np.testing.assert_allclose(pd.numpy(), expected["average"][0], rtol=1e-10)


@pytest.mark.parametrize("height, width, cell, shape", [(8, 8, 4, (2, 2)), (7, 10, 3, (3, 4)),
                                                         (5, 5, 9, (1, 1)), (4, 6, 1, (4, 6))])
def test_grid_segments(height, width, cell, shape):
    mask = grid_segments(height, width, cell)
    assert mask.shape == (height, width) and mask.dtype == torch.int64
    rows, cols = shape
    assert torch.equal(mask.unique(), torch.arange(rows * cols))
    for r in range(rows):  # cell (r, c) is the block of pixels [r*cell, (r+1)*cell) x [c*cell, ...)
        for c in range(cols):
            block = mask[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            assert (block == r * cols + c).all()
            assert (mask == r * cols + c).sum() == block.numel()


def test_errors_name_the_argument(digits):
    net = _mlp(64, 10)
    cases = [
        (TypeError, "model", lambda: ice_curves("net", digits, 0, target=0)),
        (ValueError, "X", lambda: ice_curves(net, digits[0], 0, target=0)),
        (TypeError, "X", lambda: ice_curves(net, digits.long(), 0, target=0)),
        (TypeError, "X", lambda: ice_curves(net, digits.numpy(), 0, target=0)),
        (ValueError, "feature", lambda: ice_curves(net, digits, 64, target=0)),
        (ValueError, "feature", lambda: ice_curves(net, digits, -1, target=0)),
        (TypeError, "feature", lambda: ice_curves(net, digits, 1.0, target=0)),
        (ValueError, "grid", lambda: ice_curves(net, digits, 0, torch.zeros(2, 2), target=0)),
        (ValueError, "grid", lambda: ice_curves(net, digits, 0, torch.zeros(0), target=0)),
        (TypeError, "grid", lambda: ice_curves(net, digits, 0, [0.0, 1.0], target=0)),
        (ValueError, "num_points", lambda: ice_curves(net, digits, 0, num_points=1, target=0)),
        (ValueError, "batch_size", lambda: ice_curves(net, digits, 0, target=0, batch_size=0)),
        (ValueError, "target", lambda: ice_curves(net, digits, 0)),
        (ValueError, "target", lambda: partial_dependence(net, digits, 0, target=10)),
        (ValueError, "target", lambda: ice_curves(lambda x: x.sum(1), digits, 0, target=0)),
        (ValueError, "model", lambda: ice_curves(lambda x: x[None], digits, 0, target=0)),
        (ValueError, "height", lambda: grid_segments(0, 8, 2)),
        (TypeError, "cell", lambda: grid_segments(8, 8, 2.5)),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()


@CUDA
def test_runs_on_cuda(digits):
    net = _mlp(64, 10).cuda()
    grid, curves = ice_curves(net, digits.cuda(), 21, num_points=5, target=1, batch_size=50)
    assert grid.is_cuda and curves.is_cuda
    _, cpu_curves = ice_curves(net.cpu(), digits, 21, grid.cpu(), target=1)
    torch.testing.assert_close(curves.cpu(), cpu_curves, rtol=1e-4, atol=1e-5)
    assert grid_segments(8, 8, 4, device="cuda").is_cuda


def _cnn():
    torch.manual_seed(0)
    return SmallCNN(3, widths=(4, 8)).eval()


def test_captum_explainer_gives_captums_attributions_summed_over_channels():
    from captum.attr import IntegratedGradients, Saliency

    model, x = _cnn(), torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 2, 1])
    for method in (Saliency(model), IntegratedGradients(model)):
        expected = method.attribute(x, target=target).sum(1)
        maps = CaptumExplainer(method)(x, target)
        assert maps.shape == (3, 12, 12)
        torch.testing.assert_close(maps, expected)
    with torch.no_grad():  # gradients are on inside, whatever the caller's mode
        predicted = model(x).argmax(1)
        torch.testing.assert_close(CaptumExplainer(Saliency(model))(x), Saliency(model).attribute(
            x.clone(), target=predicted).sum(1))


def test_captum_explainer_seeds_sampling_methods_and_leaves_the_global_generator():
    from captum.attr import Lime

    model, x = _cnn(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cells = grid_segments(8, 8, 4)
    lime = CaptumExplainer(Lime(model), per_image=True, seed=3, feature_mask=cells, n_samples=20, baselines=0.5)
    state = torch.get_rng_state()
    first, second = lime(x, 1), lime(x, 1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, second)
    # each image is explained as if alone: the batch gives what one call per image gives
    torch.testing.assert_close(first[1:], lime(x[1:], 1))


def test_captum_explainer_returns_tabular_attributions_as_they_are():
    from captum.attr import FeatureAblation

    torch.manual_seed(0)
    model = MLP(5, hidden=(8,), out_features=3).eval()
    rows = torch.randn(4, 5)
    attributions = CaptumExplainer(FeatureAblation(model))(rows, 2)
    torch.testing.assert_close(attributions, FeatureAblation(model).attribute(rows, target=2))


def test_captum_explainer_errors_name_the_argument():
    from captum.attr import Saliency

    model = _cnn()
    with pytest.raises(TypeError, match="method must be a captum attribution object"):
        CaptumExplainer(model)
    with pytest.raises(TypeError, match="method must be built on an nn.Module"):
        CaptumExplainer(Saliency(lambda x: x))
    with pytest.raises(ValueError, match=r"target must hold classes in \[0, 3\)"):
        CaptumExplainer(Saliency(model))(torch.rand(1, 3, 8, 8), 5)
    with pytest.raises(ValueError, match=r"target must have one class per input \(2\)"):
        CaptumExplainer(Saliency(model))(torch.rand(2, 3, 8, 8), torch.tensor([0]))
