"""Graded questions of ``solutions/01_black_boxes.ipynb``: occlusion, exact Shapley values, ICE curves, the shortcut.

References: occlusion and Shapley values from captum (a peer library, independent of the
notebook), ICE curves from :func:`xnn_lab.agnostic.ice_curves`, the shortcut model's accuracy
from the zoo checkpoint.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from xnn_lab.grading.question import Question
from xnn_lab.grading.questions._random import generator, module, randint
from xnn_lab.models import MLP


def occlusion_reference(model, x, target, patch, baseline):
    """Captum's ``Occlusion`` with non-overlapping ``patch`` x ``patch`` windows over all channels, as (B, H, W)."""
    from captum.attr import Occlusion

    window = (x.shape[1], patch, patch)
    return Occlusion(model).attribute(x, target=target, sliding_window_shapes=window, strides=window,
                                      baselines=baseline)[:, 0]


def occlusion_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, (batch, channels, height, width, patch) in enumerate([(2, 3, 8, 8, 4), (3, 1, 12, 16, 4), (1, 3, 6, 9, 3)]):
        classes = randint(g, 2, 6)
        features = 4 * (height // 2) * (width // 2)
        model = module(lambda: nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                             nn.Flatten(), nn.Linear(features, classes)), seed * 10 + i)
        x = torch.rand(batch, channels, height, width, generator=g, dtype=torch.float64)
        target = torch.randint(0, classes, (batch,), generator=g)
        trials.append((model, x, target, patch, float(torch.rand((), generator=g))))
    return trials


def shapley_reference(f, x, baseline):
    """Captum's exact ``ShapleyValues`` (every permutation of the features), for one input."""
    from captum.attr import ShapleyValues

    return ShapleyValues(f).attribute(x[None], baselines=baseline[None])[0]


def shapley_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, features in enumerate((3, 4, 5)):
        f = module(lambda: nn.Sequential(nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, 1), nn.Flatten(0)),
                   seed * 10 + i)
        x, baseline = torch.randn(2, features, generator=g, dtype=torch.float64)
        trials.append((f, x, baseline))
    return trials


def ice_reference(model, X, feature, grid, target):
    """:func:`xnn_lab.agnostic.ice_curves` on the given grid."""
    from xnn_lab.agnostic import ice_curves

    return ice_curves(model, X, feature, grid, target=target)[1]


def ice_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, (rows, features, points) in enumerate([(5, 3, 4), (12, 6, 7), (1, 2, 3)]):
        classes = randint(g, 2, 4)
        model = module(lambda: MLP(features, hidden=(8,), out_features=classes), seed * 10 + i)
        X = torch.randn(rows, features, generator=g, dtype=torch.float64)
        grid = torch.linspace(-2, 2, points, dtype=torch.float64) + 0.1 * torch.randn(points, generator=g,
                                                                                    dtype=torch.float64)
        trials.append((model, X, randint(g, 0, features), grid, randint(g, 0, classes)))
    return trials


@functools.lru_cache(maxsize=1)
def shortcut_accuracy_reference() -> float:
    """Accuracy of the zoo's ``shapes_cnn_shortcut`` on ``make_shapes(100, split="clean_test", spurious=True, seed=0)``."""
    from xnn_lab import zoo
    from xnn_lab.data import make_shapes

    data = make_shapes(100, split="clean_test", spurious=True, seed=0)
    model = zoo.load("shapes_cnn_shortcut", device="cpu")
    with torch.no_grad():
        return (model(data.images).argmax(1) == data.labels).double().mean().item()


QUESTIONS = (
    Question("occlusion_map", 2, "occlusion_map", occlusion_reference, occlusion_inputs),
    Question("shapley_values", 2, "shapley_values", shapley_reference, shapley_inputs),
    Question("ice", 1, "ice", ice_reference, ice_inputs,
             forbidden=("xnn_lab.agnostic.ice_curves", "xnn_lab.agnostic.partial_dependence")),
    Question("shortcut_clean_accuracy", 1, "shortcut_clean_accuracy", shortcut_accuracy_reference),
)
