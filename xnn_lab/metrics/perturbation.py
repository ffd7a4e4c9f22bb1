"""Saliency maps scored against the model: deletion and insertion (Petsiuk et al., 2018).

What a removed pixel becomes is the ``baseline``: a number, a tensor, or one of the named
canvases of :data:`BASELINES`: ``"grey"`` (0.5, the canvas chapter 3 uses), ``"zero"`` (RISE's
deletion: zeros in the model's input space) and ``"blur"`` (RISE's insertion: a Gaussian blur of
the image, :func:`blur_images`).
"""

from __future__ import annotations

from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._core.checks import (check_choice, check_finite, check_float, check_images, check_int, check_tensor,
                                  input_errors)
from xnn_lab._core.state import model_state


#: The named baselines of :func:`deletion_curve` and :func:`insertion_curve`.
BASELINES = ("grey", "zero", "blur")


def blur_images(images: torch.Tensor, *, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """A Gaussian blur of each channel: RISE's insertion canvas (its code uses an 11 x 11 kernel, sigma 5).

    The kernel is normalised to sum 1 and the image is padded by reflection, so a constant image
    stays constant.

    Args:
        images: (N, C, H, W) images.
        kernel_size: odd side of the square kernel, at least 1 (1 returns the images unchanged).
        sigma: the Gaussian's standard deviation in pixels, > 0.

    Returns:
        (N, C, H, W) blurred images, on the images' device and dtype.
    """
    check_images("images", images)
    kernel_size = check_int("kernel_size", kernel_size, minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    sigma = check_float("sigma", sigma, minimum=0.0, open_min=True)
    half = kernel_size // 2
    if half >= min(images.shape[-2:]):
        raise ValueError(f"kernel_size must be smaller than twice the images' side, got {kernel_size} for images "
                         f"of shape {tuple(images.shape)}")
    offsets = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - half
    weights = torch.exp(-offsets**2 / (2 * sigma**2))
    weights = weights / weights.sum()
    n, c, h, w = images.shape
    flat = F.pad(images.reshape(n * c, 1, h, w), (half, half, half, half), mode="reflect")
    # The 2-D Gaussian is separable: a row pass then a column pass.
    flat = F.conv2d(flat, weights.view(1, 1, 1, -1))
    flat = F.conv2d(flat, weights.view(1, 1, -1, 1))
    return flat.view(n, c, h, w)


def _baseline_images(baseline, images: torch.Tensor) -> torch.Tensor:
    """``baseline`` (a name, a number or a tensor) as an images-shaped tensor."""
    if isinstance(baseline, str):
        check_choice("baseline", baseline, BASELINES)
        if baseline == "blur":
            return blur_images(images)
        value = 0.5 if baseline == "grey" else 0.0
        return torch.full((1,), value, dtype=images.dtype, device=images.device).expand(images.shape)
    if isinstance(baseline, torch.Tensor):
        try:
            baseline = torch.broadcast_to(baseline.to(images), images.shape)
        except RuntimeError:
            raise ValueError(f"baseline must broadcast to the images' shape {tuple(images.shape)}, "
                             f"got shape {tuple(baseline.shape)}") from None
        return check_finite("baseline", baseline)
    if isinstance(baseline, bool) or not isinstance(baseline, Real):
        raise TypeError(f"baseline must be a number, a tensor or one of {BASELINES}, got {baseline!r}")
    return torch.full((1,), check_float("baseline", baseline), dtype=images.dtype,
                      device=images.device).expand(images.shape)


def saliency_ranks(maps: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Each pixel's rank in decreasing saliency, 0 for the most salient; ties in random order.

    Args:
        maps: (B, H, W) saliency maps.
        seed: orders tied pixels (the same random order of positions for every map).

    Returns:
        (B, H * W) int64 ranks, row-major pixel order, on the maps' device.
    """
    check_tensor("maps", maps, ndim=3, floating=True)
    check_finite("maps", maps)
    check_int("seed", seed, minimum=0)
    flat = maps.flatten(1)
    shuffle = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed)).to(flat.device)
    order = shuffle[torch.argsort(flat[:, shuffle], dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _check_curve_inputs(model, images, maps, target) -> torch.Tensor:
    """The checks every curve of the model's probability shares; returns target as an (N,) int64 tensor."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images("images", images)
    check_tensor("maps", maps, ndim=3, floating=True)
    check_finite("maps", maps)
    n, _, height, width = images.shape
    if maps.shape != (n, height, width):
        raise ValueError(f"maps must have shape {(n, height, width)} (one map per image, at its size), "
                         f"got {tuple(maps.shape)}")
    return _check_class_target(target, n, images.device)


def _target_probabilities(logits: torch.Tensor, target: torch.Tensor, rows_target: torch.Tensor, *,
                          first: bool) -> torch.Tensor:
    """Softmax probability of each row's class; on the first chunk, every target checked against the outputs."""
    if first and int(target.max()) >= logits.shape[1]:
        raise ValueError(f"target must hold classes in [0, {logits.shape[1]}) for a model with "
                         f"{logits.shape[1]} outputs, got {int(target.max())}")
    return F.softmax(logits, dim=1).gather(1, rows_target[:, None])[:, 0]


def _perturbation_curves(model, images, maps, target, *, insert: bool, steps: int, baseline,
                         batch_size: int, seed: int) -> torch.Tensor:
    target = _check_curve_inputs(model, images, maps, target)
    n, _, height, width = images.shape
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    baseline = _baseline_images(baseline, images)
    pixels = height * width
    ranks = saliency_ranks(maps.to(images.device), seed=seed)
    counts = torch.arange(steps + 1, device=images.device) * pixels // steps
    pairs = n * (steps + 1)
    scores = torch.empty(pairs, dtype=images.dtype, device=images.device)
    with model_state(model), torch.no_grad():
        # Row k of the flattened (image, step) grid is image k // (steps + 1) at step k % (steps + 1);
        # each chunk of rows becomes one batch of perturbed images and one forward pass.
        for start in range(0, pairs, batch_size):
            rows = torch.arange(start, min(start + batch_size, pairs), device=images.device)
            image, step = rows // (steps + 1), rows % (steps + 1)
            changed = (ranks[image] < counts[step][:, None]).view(-1, 1, height, width)
            # Deletion puts the baseline on the changed pixels, insertion puts the image there.
            on_changed, elsewhere = ((images[image], baseline[image]) if insert
                                     else (baseline[image], images[image]))
            with input_errors("images", images):
                logits = model(torch.where(changed, on_changed, elsewhere))
            scores[start:start + len(rows)] = _target_probabilities(logits, target, target[image], first=start == 0)
    return scores.view(n, steps + 1)


def _check_class_target(target, n: int, device: torch.device) -> torch.Tensor:
    """``target`` (an int or an (n,) int tensor) as an (n,) int64 tensor on ``device``."""
    if isinstance(target, torch.Tensor):
        check_tensor("target", target, ndim=1, integral=True)
        if len(target) != n:
            raise ValueError(f"target must have one class per image ({n}), got shape {tuple(target.shape)}")
        if len(target) and int(target.min()) < 0:
            raise ValueError(f"target must hold classes >= 0, got {int(target.min())}")
        return target.to(device, torch.int64)
    return torch.full((n,), check_int("target", target, minimum=0), dtype=torch.int64, device=device)


def deletion_curve(model, images: torch.Tensor, maps: torch.Tensor, target, *, steps: int = 32,
                   baseline=0.0, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Deletion (Petsiuk et al., 2018): the class probability as the most salient pixels are removed.

    Step s replaces the top-ranked pixels of each image by the baseline; a faithful map makes
    the probability fall fast (a low :func:`area_under_curve` is good).

    Args:
        model: the classifier, mapping (B, C, H, W) images to (B, classes) logits; run in eval
            mode (each module's flag restored afterwards), without gradients.
        images: (N, C, H, W) images.
        maps: (N, H, W) saliency maps at the images' size; pixels are taken in decreasing
            saliency, ties in random order (see :func:`saliency_ranks`).
        target: the class to score, an int or an (N,) int tensor.
        steps: S; step s changes the floor(s H W / S) most salient pixels, s = 0 .. S.
        baseline: what a removed pixel becomes: a number, a tensor broadcastable to
            ``images``, or a name from :data:`BASELINES`: ``"grey"`` (0.5), ``"zero"`` (RISE's
            deletion) or ``"blur"`` (:func:`blur_images` of each image).
        batch_size: perturbed images per forward pass; all N (S + 1) of them are built and
            scored in chunks of this size on the images' device.
        seed: orders pixels of equal saliency.

    Returns:
        (N, S + 1) softmax probabilities of the target class, step 0 first.
    """
    return _perturbation_curves(model, images, maps, target, insert=False, steps=steps, baseline=baseline,
                                batch_size=batch_size, seed=seed)


def insertion_curve(model, images: torch.Tensor, maps: torch.Tensor, target, *, steps: int = 32,
                    baseline=0.0, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Insertion (Petsiuk et al., 2018): the class probability as the most salient pixels are restored.

    Step s starts from the baseline and puts back the top-ranked pixels of each image; a
    faithful map makes the probability rise fast (a high :func:`area_under_curve` is good).

    Args:
        model: the classifier, mapping (B, C, H, W) images to (B, classes) logits; run in eval
            mode (each module's flag restored afterwards), without gradients.
        images: (N, C, H, W) images.
        maps: (N, H, W) saliency maps at the images' size; pixels are taken in decreasing
            saliency, ties in random order (see :func:`saliency_ranks`).
        target: the class to score, an int or an (N,) int tensor.
        steps: S; step s changes the floor(s H W / S) most salient pixels, s = 0 .. S.
        baseline: the image the pixels are inserted into: a number, a tensor broadcastable
            to ``images``, or a name from :data:`BASELINES`: ``"grey"`` (0.5), ``"zero"`` or
            ``"blur"`` (:func:`blur_images` of each image, RISE's insertion canvas).
        batch_size: perturbed images per forward pass; all N (S + 1) of them are built and
            scored in chunks of this size on the images' device.
        seed: orders pixels of equal saliency.

    Returns:
        (N, S + 1) softmax probabilities of the target class, step 0 first.
    """
    return _perturbation_curves(model, images, maps, target, insert=True, steps=steps, baseline=baseline,
                                batch_size=batch_size, seed=seed)


def area_under_curve(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under curves sampled at x = s / S, s = 0 .. S (the fraction of pixels changed).

    Args:
        curves: (N, S + 1), as from :func:`deletion_curve` or :func:`insertion_curve`.

    Returns:
        (N,) areas.
    """
    check_tensor("curves", curves, ndim=2, floating=True)
    check_finite("curves", curves)
    if curves.shape[1] < 2:
        raise ValueError(f"curves must have at least 2 points each, got shape {tuple(curves.shape)}")
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * (curves.shape[1] - 1))
