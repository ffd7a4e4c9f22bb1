import pytest
import torch
from torch import nn

from xnn_lab.models import MLP, SmallCNN


def test_small_cnn_shapes_and_gap_head():
    model = SmallCNN(num_classes=5, widths=(8, 16, 32)).eval()
    x = torch.rand(4, 3, 64, 64)
    features = model.features(x)
    assert features.shape == (4, 32, 16, 16)
    # The head is exactly GAP + linear: y^c = sum_k w_k^c mean_ij A^k_ij + b^c.
    by_hand = features.mean(dim=(2, 3)) @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model(x), by_hand)


def test_small_cnn_accepts_other_sizes_and_channels():
    model = SmallCNN(num_classes=3, in_channels=1, widths=(4, 8))
    assert model(torch.rand(2, 1, 32, 48)).shape == (2, 3)


@pytest.mark.parametrize("kwargs, name", [
    ({"num_classes": 1}, "num_classes"), ({"num_classes": 3, "in_channels": 0}, "in_channels"),
    ({"num_classes": 3, "widths": ()}, "widths"), ({"num_classes": 3, "widths": (8, -1)}, r"widths\[1\]"),
])
def test_small_cnn_rejects_bad_config(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        SmallCNN(**kwargs)


def test_small_cnn_rejects_bad_input():
    model = SmallCNN(num_classes=3)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="x must have 3 channels"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_mlp_is_a_sequential_of_linear_and_activations():
    model = MLP(5, hidden=(7, 3), out_features=2)
    assert isinstance(model, nn.Sequential)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert model(torch.rand(4, 5)).shape == (4, 2)
    assert len(MLP(5, hidden=(), out_features=1)) == 1


def test_mlp_rejects_bad_config():
    with pytest.raises(ValueError, match="activation"):
        MLP(3, activation="sigmoidish")
    with pytest.raises(ValueError, match=r"hidden\[0\]"):
        MLP(3, hidden=(0,))
    with pytest.raises(TypeError, match="in_features"):
        MLP(3.0)
