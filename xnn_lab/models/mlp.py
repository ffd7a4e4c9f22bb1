"""A multilayer perceptron as a plain ``nn.Sequential`` of Linear and activation layers."""

from __future__ import annotations

from torch import nn

from xnn_lab._core.checks import check_choice, check_int

_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Linear -> activation, repeated, then a final Linear (no activation on the output).

    Being a plain ``nn.Sequential`` of Linear and ReLU layers keeps it convertible into an
    exact decision tree (chapter 4).

    Args:
        in_features: input width F.
        hidden: widths of the hidden layers (may be empty: logistic regression).
        out_features: output width (number of classes, or 1).
        activation: "relu", "leaky_relu" or "tanh".
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (64, 64), out_features: int = 2,
                 activation: str = "relu"):
        check_int("in_features", in_features, minimum=1)
        check_int("out_features", out_features, minimum=1)
        check_choice("activation", activation, _ACTIVATIONS)
        if not isinstance(hidden, (tuple, list)):
            raise TypeError(f"hidden must be a tuple of layer widths, got {hidden!r}")
        for i, h in enumerate(hidden):
            check_int(f"hidden[{i}]", h, minimum=1)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.config = {"in_features": in_features, "hidden": list(hidden), "out_features": out_features,
                       "activation": activation}
