"""Graded questions of ``solutions/05_protopnet.ipynb``: ProtoPNet's distances, similarity, costs and push.

References come from ``xnn_lab.protopnet`` (``ProtoPNet.distances``, ``ProtoPNet.from_latent``,
``protopnet_loss``, ``wrong_class_l1``); the push is a short independent computation (see ``pushed_prototypes``).
Trials are fresh ProtoPNets of random sizes on a tiny SmallCNN backbone (float64, eval mode,
random batch-norm statistics), with random latent grids or images.
"""

from __future__ import annotations

import math

import torch

from xnn_lab.grading.question import Question
from xnn_lab.models import SmallCNN
from xnn_lab.protopnet import ProtoPNet, log_similarity, protopnet_loss, wrong_class_l1


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + salt)


def _size(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (), generator=generator))


def _random_protopnet(generator: torch.Generator) -> ProtoPNet:
    """A fresh float64 ProtoPNet in eval mode: C in [2, 4], m in [1, 3] prototypes per class, D in [3, 6].

    float64, because the similarity's slope near a distance of 0 is 1 / epsilon: float32 rounding of
    a small distance would move it by more than the comparison's tolerance.
    """
    classes, per_class, dim = _size(generator, 2, 4), _size(generator, 1, 3), _size(generator, 3, 6)
    epsilon = float(10 ** -_size(generator, 2, 5))
    with torch.random.fork_rng(devices=[]):   # the initial weights, without touching the global generator
        torch.manual_seed(_size(generator, 0, 2**31 - 1))
        backbone = SmallCNN(2, widths=(4, 6)).features
        model = ProtoPNet(backbone, classes, per_class, dim, feature_channels=6, epsilon=epsilon)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
        # A last layer that is not the initial +1 / -0.5 pattern, so that the L1 term depends on it.
        model.last_layer.weight.add_(0.3 * torch.randn(model.last_layer.weight.shape, generator=generator))
    return model.double().eval()


def _latent_trials(seed: int, salt: int) -> list[tuple]:
    """(model, z): latent grids in (0, 1) like the add-on layers' sigmoid outputs, of random sizes."""
    generator = _generator(seed, salt)
    trials = []
    for _ in range(3):
        model = _random_protopnet(generator)
        batch, height, width = _size(generator, 1, 4), _size(generator, 1, 5), _size(generator, 1, 5)
        z = torch.rand(batch, model.prototypes.shape[1], height, width, generator=generator, dtype=torch.float64)
        trials.append((model, z))
    return trials


def _image_trials(seed: int, salt: int) -> list[tuple]:
    """(model, images, labels), every class present among the labels."""
    generator = _generator(seed, salt)
    trials = []
    for _ in range(3):
        model = _random_protopnet(generator)
        batch, side = model.num_classes + _size(generator, 0, 5), _size(generator, 6, 14)
        images = torch.rand(batch, 3, side, side, generator=generator, dtype=torch.float64) \
            + torch.randn(batch, 3, 1, 1, generator=generator, dtype=torch.float64)
        labels = torch.cat([torch.arange(model.num_classes),
                            torch.randint(0, model.num_classes, (batch - model.num_classes,), generator=generator)])
        labels = labels[torch.randperm(batch, generator=generator)]
        trials.append((model, images, labels))
    return trials


def _distances(model, z):
    return model.distances(z)


def _similarity_scores(model, z):
    return model.from_latent(z).similarities


def _cluster_cost(model, images, labels):
    return protopnet_loss(model, images, labels).cluster


def _separation_cost(model, images, labels):
    return protopnet_loss(model, images, labels).separation


@torch.no_grad()
def pushed_prototypes(model: ProtoPNet, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The prototype vectors (M, D) after the push: each the nearest latent patch of an image of its class.

    Written here, independently of the solution and of ``xnn_lab.protopnet.push_prototypes`` (a
    test checks that the two agree): all distances at once, in the model's dtype.
    """
    z = model.latent(images)                                                      # (B, D, h, w)
    batch, dim = z.shape[:2]
    patches = z.permute(0, 2, 3, 1).reshape(batch, -1, dim)                       # (B, hw, D)
    prototypes = model.prototypes[:, :, 0, 0]                                     # (M, D)
    distances = ((patches[None] - prototypes[:, None, None]) ** 2).sum(dim=3)     # (M, B, hw)
    own = labels.to(model.prototype_classes.device)[None, :] == model.prototype_classes[:, None]
    nearest = distances.masked_fill(~own[:, :, None], float("inf")).flatten(1).argmin(dim=1)
    return patches.reshape(-1, dim)[nearest]


EPSILON = 1e-4


def half_similarity_distance() -> float:
    """The squared distance d at which log((d + 1) / (d + epsilon)) is half its value at d = 0, epsilon = 1e-4.

    Found by bisection on ``xnn_lab.protopnet.log_similarity`` (decreasing in d), in float64.
    """
    half = 0.5 * math.log(1 / EPSILON)
    low, high = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for _ in range(200):
        middle = (low + high) / 2
        if log_similarity(middle, EPSILON) > half:
            low = middle
        else:
            high = middle
    return float((low + high) / 2)


QUESTIONS: tuple[Question, ...] = (
    Question("prototype_distances", 2, "prototype_distances", _distances, lambda seed: _latent_trials(seed, 1),
             forbidden=("xnn_lab.protopnet.ProtoPNet.distances", "xnn_lab.protopnet.ProtoPNet.from_latent")),
    Question("similarity_scores", 2, "similarity_scores", _similarity_scores, lambda seed: _latent_trials(seed, 2),
             forbidden=("xnn_lab.protopnet.ProtoPNet.from_latent", "xnn_lab.protopnet.ProtoPNet.explain")),
    Question("cluster_cost", 2, "cluster_cost", _cluster_cost, lambda seed: _image_trials(seed, 3),
             forbidden=("xnn_lab.protopnet.protopnet_loss",)),
    Question("separation_cost", 1, "separation_cost", _separation_cost, lambda seed: _image_trials(seed, 4),
             forbidden=("xnn_lab.protopnet.protopnet_loss",)),
    Question("wrong_class_l1", 1, "wrong_class_l1", wrong_class_l1,
             lambda seed: [(model,) for model, _ in _latent_trials(seed, 5)],
             forbidden=("xnn_lab.protopnet.wrong_class_l1", "xnn_lab.protopnet.protopnet_loss")),
    Question("push", 3, "push", pushed_prototypes, lambda seed: _image_trials(seed, 6),
             forbidden=("xnn_lab.protopnet.push_prototypes", "xnn_lab.protopnet.nearest_patches")),
    Question("half_similarity_distance", 1, "HALF_SIMILARITY_DISTANCE", half_similarity_distance),
)
