"""Graded questions of ``solutions/02_cam.ipynb``: CAM from the GAP weights, CAM with a hook, pointing games.

References: :class:`xnn_lab.cam.CAM` (on a GAP + linear model built around the given weights for
the first question), :func:`xnn_lab.metrics.pointing_game` and
:func:`xnn_lab.metrics.energy_pointing_game`, and the zoo's ``shapes_cnn``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
from torch import nn

from xnn_lab.grading.question import Question
from xnn_lab.grading.questions._random import generator, module, randint
from xnn_lab.models import SmallCNN


def cam_from_weights_reference(activations, weight, target):
    """:class:`xnn_lab.cam.CAM` on ``GAP + Linear(weight)`` over the activations themselves (maps stay h x w)."""
    from xnn_lab.cam import CAM

    head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
    model = nn.Sequential(OrderedDict(features=nn.Identity(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                      classifier=head))
    return CAM(model, "features")(activations, target)


def cam_from_weights_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for batch, channels, height, width in [(2, 4, 3, 3), (5, 16, 8, 6), (1, 7, 5, 9)]:
        classes = randint(g, 2, 7)
        activations = torch.rand(batch, channels, height, width, generator=g, dtype=torch.float64)
        weight = torch.randn(classes, channels, generator=g, dtype=torch.float64)
        trials.append((activations, weight, torch.randint(0, classes, (batch,), generator=g)))
    return trials


def cam_reference(model, x, target):
    """:class:`xnn_lab.cam.CAM` on the model's ``features``."""
    from xnn_lab.cam import CAM

    return CAM(model, "features")(x, target)


def cam_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, (batch, channels, size, widths) in enumerate([(2, 3, 16, (4, 8)), (3, 1, 24, (4, 4, 6)), (1, 3, 32, (8,))]):
        classes = randint(g, 2, 6)
        model = module(lambda: SmallCNN(classes, in_channels=channels, widths=widths), seed * 10 + i)
        x = torch.rand(batch, channels, size, size, generator=g, dtype=torch.float64)
        trials.append((model, x, torch.randint(0, classes, (batch,), generator=g)))
    return trials


def _maps_and_masks(seed: int) -> list[tuple]:
    """Random maps (one constant map among them) and masks that are hit about half the time."""
    g = generator(seed)
    trials = []
    for batch, height, width in [(4, 6, 6), (7, 10, 8), (3, 5, 12)]:
        maps = torch.rand(batch, height, width, generator=g, dtype=torch.float64)
        maps[0] = 0.5
        masks = torch.rand(batch, height, width, generator=g) < 0.5
        trials.append((maps, masks))
    return trials


def pointing_game_reference(maps, masks):
    """:func:`xnn_lab.metrics.pointing_game` (tolerance 0)."""
    from xnn_lab.metrics import pointing_game

    return pointing_game(maps, masks)


def energy_reference(maps, masks):
    """:func:`xnn_lab.metrics.energy_pointing_game` on the masks."""
    from xnn_lab.metrics import energy_pointing_game

    return energy_pointing_game(maps, masks)


@functools.lru_cache(maxsize=1)
def cam_hits_reference() -> int:
    """Pointing-game hits of CAM (predicted class) of the zoo's ``shapes_cnn`` on ``make_shapes(64, split="test", seed=1)``."""
    from xnn_lab import zoo
    from xnn_lab.cam import CAM
    from xnn_lab.data import make_shapes
    from xnn_lab.metrics import pointing_game

    data = make_shapes(64, split="test", seed=1)
    return int(pointing_game(CAM(zoo.load("shapes_cnn", device="cpu"), "features")(data.images), data.masks).sum())


# What CAM questions may not call: CAM itself, and Grad-CAM (CAM up to a scale on a GAP network) on its base.
CAM_FAMILY = ("xnn_lab.cam.BaseCAM", "xnn_lab.cam.CAM", "xnn_lab.cam.GradCAM", "xnn_lab.cam.GradCAMPlusPlus")

QUESTIONS = (
    Question("cam_from_weights", 2, "cam_from_weights", cam_from_weights_reference, cam_from_weights_inputs,
             forbidden=CAM_FAMILY),
    Question("cam", 2, "cam", cam_reference, cam_inputs, forbidden=CAM_FAMILY),
    Question("pointing_game", 1, "pointing_game", pointing_game_reference, _maps_and_masks,
             forbidden=("xnn_lab.metrics.pointing_game",)),
    Question("energy_pointing_game", 1, "energy_pointing_game", energy_reference, _maps_and_masks,
             forbidden=("xnn_lab.metrics.energy_pointing_game",)),
    Question("cam_hits", 1, "cam_hits", cam_hits_reference),
)
