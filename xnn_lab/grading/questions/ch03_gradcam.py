"""Graded questions of ``solutions/03_gradcam.ipynb``: Grad-CAM weights and maps, deletion curves, rank correlation,
Integrated Gradients and ROAD's linear imputation.

References: the Grad-CAM weights are computed here independently of hooks, by splitting the
``nn.Sequential`` at the layer and differentiating the second half with autograd (xnn_lab exposes
the maps, not the weights); the maps come from :class:`xnn_lab.cam.GradCAM`, the curves from
:func:`xnn_lab.metrics.deletion_curve`, the correlations from :func:`xnn_lab.metrics.rank_correlation`,
and the CAM / Grad-CAM ratio from both explainers on the zoo's ``shapes_cnn``. Integrated Gradients
(midpoint rule) is computed here with autograd on the whole path at once; the imputation comes from
:func:`xnn_lab.metrics.noisy_linear_imputation` without noise, solved to a tight tolerance.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from xnn_lab.grading.question import Question, allclose_compare
from xnn_lab.grading.questions._random import generator, module, randint


def _plain_cnn(channels: int, classes: int, size: int) -> nn.Sequential:
    """Conv blocks and a flatten + linear head (no GAP, so the gradients vary over the map)."""
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * (size // 2) ** 2, classes))


def _gradcam_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, (batch, channels, size, layer) in enumerate([(2, 3, 8, "3"), (3, 1, 12, "6"), (1, 3, 10, "1")]):
        classes = randint(g, 2, 6)
        model = module(lambda: _plain_cnn(channels, classes, size), seed * 10 + i)
        x = torch.randn(batch, channels, size, size, generator=g, dtype=torch.float64)
        trials.append((model, layer, x, torch.randint(0, classes, (batch,), generator=g)))
    return trials


def gradcam_weights_reference(model, layer, x, target):
    r"""alpha_k^c = mean_ij dy^c/dA^k_ij, by running the Sequential in two halves around ``layer``."""
    names = [name for name, _ in model.named_children()]
    split = names.index(layer) + 1
    with torch.enable_grad():
        activations = model[:split](x).detach().requires_grad_(True)
        scores = model[split:](activations)
        (gradients,) = torch.autograd.grad(scores.gather(1, target[:, None]).sum(), activations)
    return gradients.mean(dim=(2, 3))


def gradcam_reference(model, layer, x, target):
    """:class:`xnn_lab.cam.GradCAM` at ``layer``."""
    from xnn_lab.cam import GradCAM

    return GradCAM(model, layer)(x, target)


def deletion_reference(model, images, maps, target, steps, baseline):
    """:func:`xnn_lab.metrics.deletion_curve` (maps without ties, so the tie order plays no part)."""
    from xnn_lab.metrics import deletion_curve

    return deletion_curve(model, images, maps, target, steps=steps, baseline=baseline)


def deletion_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, (batch, channels, size, steps) in enumerate([(2, 3, 8, 4), (3, 1, 12, 5), (1, 3, 10, 7)]):
        classes = randint(g, 2, 6)
        model = module(lambda: _plain_cnn(channels, classes, size), seed * 10 + i)
        images = torch.rand(batch, channels, size, size, generator=g, dtype=torch.float64)
        maps = torch.rand(batch, size, size, generator=g, dtype=torch.float64)
        trials.append((model, images, maps, torch.randint(0, classes, (batch,), generator=g), steps,
                       float(torch.rand((), generator=g))))
    return trials


def rank_correlation_reference(first, second):
    """:func:`xnn_lab.metrics.rank_correlation`."""
    from xnn_lab.metrics import rank_correlation

    return rank_correlation(first, second)


def rank_correlation_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for batch, height, width in [(3, 4, 4), (5, 8, 6), (2, 3, 7)]:
        first = torch.rand(batch, height, width, generator=g, dtype=torch.float64)
        second = first + 0.5 * torch.rand(batch, height, width, generator=g, dtype=torch.float64)
        second[-1] = torch.rand(height, width, generator=g, dtype=torch.float64)
        trials.append((first, second))
    return trials


@functools.lru_cache(maxsize=1)
def cam_over_gradcam_reference() -> float:
    """Median of CAM / Grad-CAM where Grad-CAM > 0, zoo ``shapes_cnn``, layer ``features``, ``make_shapes(16, split="test", seed=1)``."""
    from xnn_lab import zoo
    from xnn_lab.cam import CAM, GradCAM
    from xnn_lab.data import make_shapes

    model = zoo.load("shapes_cnn", device="cpu")
    x = make_shapes(16, split="test", seed=1).images
    cam, grad_cam = CAM(model, "features")(x), GradCAM(model, "features")(x)
    positive = grad_cam > 1e-6 * grad_cam.amax()
    return (cam[positive] / grad_cam[positive]).median().item()


def integrated_gradients_reference(model, x, baseline, target, steps):
    r"""IG_i = (x_i - x'_i) mean_k dy^c/dx_i at x' + (k - 1/2)/m (x - x'), k = 1..m, all path points in one batch."""
    alphas = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps
    path = (baseline[None] + alphas.view(-1, 1, 1, 1, 1) * (x - baseline)[None]).flatten(0, 1)
    with torch.enable_grad():
        path.requires_grad_(True)
        scores = model(path).view(steps, len(x), -1)
        chosen = scores.gather(2, target.view(1, -1, 1).expand(steps, -1, 1)).sum()
        (gradients,) = torch.autograd.grad(chosen, path)
    return (x - baseline) * gradients.view(steps, *x.shape).mean(0)


def integrated_gradients_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for i, (batch, channels, size, steps) in enumerate([(2, 3, 8, 5), (3, 1, 12, 8), (1, 3, 10, 13)]):
        classes = randint(g, 2, 6)
        model = module(lambda: _plain_cnn(channels, classes, size), seed * 10 + 5 + i)
        x = torch.rand(batch, channels, size, size, generator=g, dtype=torch.float64)
        baseline = (torch.zeros_like(x) if i == 0 else
                    torch.rand(batch, channels, size, size, generator=g, dtype=torch.float64))
        trials.append((model, x, baseline, torch.randint(0, classes, (batch,), generator=g), steps))
    return trials


def linear_imputation_reference(images, removed):
    """:func:`xnn_lab.metrics.noisy_linear_imputation` without noise, to a tight tolerance."""
    from xnn_lab.metrics import noisy_linear_imputation

    return noisy_linear_imputation(images, removed, noise=0.0, tol=1e-12)


def linear_imputation_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for batch, channels, height, width in [(2, 3, 6, 6), (3, 1, 9, 7), (1, 2, 5, 11)]:
        images = torch.rand(batch, channels, height, width, generator=g, dtype=torch.float64)
        removed = torch.rand(batch, height, width, generator=g) < 0.5
        removed[:, 0, 0] = False  # at least one pixel kept, so the system has one solution
        removed[0, 1:4, 1:4] = True  # a block, as the top of a saliency map
        trials.append((images, removed))
    return trials


# What the Grad-CAM questions may not call: the library's explainers and the base that owns their hooks.
GRADCAM_FAMILY = ("xnn_lab.cam.BaseCAM", "xnn_lab.cam.CAM", "xnn_lab.cam.GradCAM", "xnn_lab.cam.GradCAMPlusPlus")

QUESTIONS = (
    Question("gradcam_weights", 2, "gradcam_weights", gradcam_weights_reference, _gradcam_inputs,
             forbidden=GRADCAM_FAMILY),
    Question("gradcam", 2, "gradcam", gradcam_reference, _gradcam_inputs, forbidden=GRADCAM_FAMILY),
    Question("deletion_curve", 1, "deletion_curve", deletion_reference, deletion_inputs,
             forbidden=("xnn_lab.metrics.deletion_curve", "xnn_lab.metrics.insertion_curve")),
    Question("rank_correlation", 1, "rank_correlation", rank_correlation_reference, rank_correlation_inputs,
             forbidden=("xnn_lab.metrics.rank_correlation",)),
    # The ratio is Z = h w exactly in theory; float32 maps give it to about 1e-5.
    Question("cam_over_gradcam", 1, "cam_over_gradcam", cam_over_gradcam_reference,
             compare=functools.partial(allclose_compare, rtol=1e-3)),
    Question("integrated_gradients", 2, "integrated_gradients", integrated_gradients_reference,
             integrated_gradients_inputs, forbidden=("xnn_lab.agnostic.CaptumExplainer",)),
    Question("linear_imputation", 2, "linear_imputation", linear_imputation_reference, linear_imputation_inputs,
             forbidden=("xnn_lab.metrics.noisy_linear_imputation", "xnn_lab.metrics.road_curve")),
)
