"""Measures of explanations: against ground truth (mass in mask, pointing games), against the
model (deletion and insertion), and sanity checks (parameter randomisation), with baselines."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from xnn_lab._checks import check_float, check_int, check_tensor
from xnn_lab.cam import _eval_mode, normalize


def mass_in_mask(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive attribution mass that falls inside its mask.

    mass = sum_{p in mask} max(a_p, 0) / sum_p max(a_p, 0); a map with no positive mass scores 0.

    Args:
        attributions: (B, H, W) maps, or (B, C, H, W) per-channel attributions (summed over C).
        masks: (B, H, W) bool ground-truth regions.

    Returns:
        (B,) float tensor in [0, 1], on the attributions' device.
    """
    check_tensor("attributions", attributions, ndim=(3, 4), floating=True)
    check_tensor("masks", masks, ndim=3)
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor, got dtype {masks.dtype}")
    maps = attributions.sum(1) if attributions.ndim == 4 else attributions
    if maps.shape != masks.shape:
        raise ValueError(f"masks must have shape {tuple(maps.shape)} to match attributions, "
                         f"got {tuple(masks.shape)}")
    positive = maps.clamp(min=0)
    inside = (positive * masks.to(positive.device)).flatten(1).sum(1)
    total = positive.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def _check_maps_and_masks(maps: torch.Tensor, masks: torch.Tensor) -> None:
    check_tensor("maps", maps, ndim=3, floating=True)
    check_tensor("masks", masks, ndim=3)
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor, got dtype {masks.dtype}")
    if masks.shape != maps.shape:
        raise ValueError(f"masks must have shape {tuple(maps.shape)} to match maps, got {tuple(masks.shape)}")


def _dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Masks (B, H, W) grown by every pixel within Euclidean distance ``radius``."""
    if radius == 0:
        return masks
    offsets = torch.arange(-radius, radius + 1, device=masks.device)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
    grown = F.conv2d(masks.float()[:, None], disc[None, None], padding=radius)[:, 0]
    return grown > 0


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, *, tolerance: int = 0) -> torch.Tensor:
    """Pointing game (Zhang et al., 2018): does each map's maximum fall on its object?

    A hit when the pixel argmax_p L_p lies within ``tolerance`` pixels (Euclidean) of the mask.
    Where the maximum is attained several times, the first in row-major order counts; a
    constant map points nowhere and scores a miss.

    Args:
        maps: (B, H, W) saliency maps.
        masks: (B, H, W) bool ground-truth regions.
        tolerance: how far from the mask, in pixels, a hit may be (the paper uses 15 at 224 px).

    Returns:
        (B,) bool, on the maps' device.
    """
    _check_maps_and_masks(maps, masks)
    tolerance = check_int("tolerance", tolerance, minimum=0)
    flat = maps.flatten(1)
    peak = flat.argmax(1, keepdim=True)
    region = _dilate(masks.to(maps.device), tolerance).flatten(1)
    constant = flat.amax(1) == flat.amin(1)
    return region.gather(1, peak)[:, 0] & ~constant


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor, *, box: bool = False) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., 2020): the share of each map's energy on its object.

    Each map is min-max normalised (:func:`xnn_lab.cam.normalize`), then
    sum_{p in region} L_p / sum_p L_p, with the region the mask or, with ``box=True``, the
    mask's bounding box as in the paper. A constant map scores 0.

    Args:
        maps: (B, H, W) saliency maps.
        masks: (B, H, W) bool ground-truth regions, each non-empty when ``box=True``.
        box: measure against each mask's bounding box instead of the mask.

    Returns:
        (B,) float in [0, 1], on the maps' device.
    """
    _check_maps_and_masks(maps, masks)
    if not isinstance(box, bool):
        raise TypeError(f"box must be a bool, got {box!r} ({type(box).__name__})")
    region = masks.to(maps.device)
    if box:
        if not region.flatten(1).any(1).all():
            raise ValueError("masks must each hold at least one pixel when box=True")
        rows, cols = region.any(2), region.any(1)  # (B, H), (B, W)
        region = _span(rows)[:, :, None] & _span(cols)[:, None, :]
    return mass_in_mask(normalize(maps), region)


def _span(occupied: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True from the first to the last True of each row (inclusive)."""
    index = torch.arange(occupied.shape[1], device=occupied.device)
    first = torch.where(occupied, index, occupied.shape[1]).amin(1, keepdim=True)
    last = torch.where(occupied, index, -1).amax(1, keepdim=True)
    return (index >= first) & (index <= last)


def saliency_ranks(maps: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Each pixel's rank in decreasing saliency, 0 for the most salient; ties in random order.

    Args:
        maps: (B, H, W) saliency maps.
        seed: orders tied pixels (the same random order of positions for every map).

    Returns:
        (B, H * W) int64 ranks, row-major pixel order, on the maps' device.
    """
    check_tensor("maps", maps, ndim=3, floating=True)
    check_int("seed", seed, minimum=0)
    flat = maps.flatten(1)
    shuffle = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed)).to(flat.device)
    order = shuffle[torch.argsort(flat[:, shuffle], dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _perturbation_curves(model, images, maps, target, *, insert: bool, steps: int, baseline,
                         batch_size: int, seed: int) -> torch.Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor("images", images, ndim=4, floating=True)
    check_tensor("maps", maps, ndim=3, floating=True)
    n, _, height, width = images.shape
    if maps.shape != (n, height, width):
        raise ValueError(f"maps must have shape {(n, height, width)} (one map per image, at its size), "
                         f"got {tuple(maps.shape)}")
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    target = _check_class_target(target, n, images.device)
    if isinstance(baseline, torch.Tensor):
        try:
            baseline = torch.broadcast_to(baseline.to(images), images.shape)
        except RuntimeError:
            raise ValueError(f"baseline must broadcast to the images' shape {tuple(images.shape)}, "
                             f"got shape {tuple(baseline.shape)}") from None
    else:
        baseline = torch.full((1,), check_float("baseline", baseline), dtype=images.dtype,
                              device=images.device).expand(images.shape)
    pixels = height * width
    ranks = saliency_ranks(maps.to(images.device), seed=seed)
    counts = torch.arange(steps + 1, device=images.device) * pixels // steps
    pairs = n * (steps + 1)
    scores = torch.empty(pairs, dtype=images.dtype, device=images.device)
    with _eval_mode(model), torch.no_grad():
        # Row k of the flattened (image, step) grid is image k // (steps + 1) at step k % (steps + 1);
        # each chunk of rows becomes one batch of perturbed images and one forward pass.
        for start in range(0, pairs, batch_size):
            rows = torch.arange(start, min(start + batch_size, pairs), device=images.device)
            image, step = rows // (steps + 1), rows % (steps + 1)
            changed = (ranks[image] < counts[step][:, None]).view(-1, 1, height, width)
            # Deletion puts the baseline on the changed pixels, insertion puts the image there.
            on_changed, elsewhere = ((images[image], baseline[image]) if insert
                                     else (baseline[image], images[image]))
            logits = model(torch.where(changed, on_changed, elsewhere))
            scores[start:start + len(rows)] = F.softmax(logits, dim=1).gather(1, target[image][:, None])[:, 0]
    return scores.view(n, steps + 1)


def _check_class_target(target, n: int, device: torch.device) -> torch.Tensor:
    """``target`` (an int or an (n,) int tensor) as an (n,) int64 tensor on ``device``."""
    if isinstance(target, torch.Tensor):
        check_tensor("target", target, ndim=1, integral=True)
        if len(target) != n:
            raise ValueError(f"target must have one class per image ({n}), got shape {tuple(target.shape)}")
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
        baseline: what a removed pixel becomes: a number or a tensor broadcastable to
            ``images``.
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
        baseline: the image the pixels are inserted into: a number or a tensor broadcastable
            to ``images`` (the paper uses a blurred copy).
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
    if curves.shape[1] < 2:
        raise ValueError(f"curves must have at least 2 points each, got shape {tuple(curves.shape)}")
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * (curves.shape[1] - 1))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0 .. P-1 of each row of (N, P) values, tied values sharing their mean rank."""
    ordered = values.sort(dim=1).values
    # A value's ties occupy sorted positions [first, last); their mean position is (first + last - 1) / 2.
    first = torch.searchsorted(ordered, values, side="left")
    last = torch.searchsorted(ordered, values, side="right")
    return (first + last - 1).to(values.dtype) / 2


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (ties get their mean rank).

    Args:
        first: (N, ...) maps; each row is flattened.
        second: maps of the same shape.

    Returns:
        (N,) correlations in [-1, 1]; NaN where a map is constant (its ranks carry no order).
    """
    check_tensor("first", first, floating=True)
    check_tensor("second", second, floating=True)
    if first.shape != second.shape or first.ndim < 2:
        raise ValueError(f"first and second must have the same shape (N, ...) with N maps, got "
                         f"{tuple(first.shape)} and {tuple(second.shape)}")
    ranks = [_average_ranks(m.flatten(1).to(torch.float64)) for m in (first, second.to(first.device))]
    centred = [r - r.mean(1, keepdim=True) for r in ranks]
    covariance = (centred[0] * centred[1]).sum(1)
    scale = (centred[0].pow(2).sum(1) * centred[1].pow(2).sum(1)).sqrt()
    return (covariance / scale).to(first.dtype)  # 0 / 0 gives NaN for a constant map


def _randomize(module: nn.Module, generator_seed: int) -> None:
    """Re-draw every parameter of ``module`` (and its submodules) from its initialisation.

    The draw is made on a CPU copy and copied back, so one seed gives the same weights on every
    device (a CUDA module would draw from CUDA's own generator); no global generator changes.
    """
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(generator_seed)
        for sub in fresh.modules():
            if hasattr(sub, "reset_parameters"):  # batch norm's also resets its running statistics
                sub.reset_parameters()
    module.load_state_dict(fresh.state_dict())


def randomization_sanity_check(model: nn.Module, explain, x: torch.Tensor, target=None, *,
                               layers=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Model-parameter randomisation test (Adebayo et al., 2018), cascading from the top layer.

    A copy of the model has its layers re-initialised one after another, from the output
    towards the input, keeping the earlier ones randomised; after each, the maps are computed
    again and compared with those of the trained model by Spearman rank correlation. A method
    that explains the model must give maps that change (low correlation) once the weights are.
    The model itself is not changed.

    Args:
        model: the trained network.
        explain: ``explain(model, x, target) -> (N, H, W)`` maps, e.g.
            ``lambda m, x, t: GradCAM(m, "features")(x, t)``.
        x: (N, C, H, W) images.
        target: the class each map explains, an int or an (N,) int tensor; the trained model's
            predicted class when ``None``, kept for every randomised copy.
        layers: dotted names of the modules to randomise, in order (top first); a module's
            submodules are randomised with it. By default every module that holds parameters
            itself, in reverse order of registration.
        seed: seeds the re-initialisation.

    Returns:
        ``{layer: (N,) rank correlations}`` in randomisation order; the entry of a layer holds
        the maps of the model with that layer and all before it in ``layers`` randomised.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(explain):
        raise TypeError(f"explain must be callable as explain(model, x, target), got {type(explain).__name__}")
    check_tensor("x", x, ndim=4, floating=True)
    seed = check_int("seed", seed, minimum=0)
    if layers is None:
        layers = [name for name, module in model.named_modules()
                  if any(True for _ in module.parameters(recurse=False))][::-1]
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers) or not layers:
        raise TypeError(f"layers must be a non-empty list of dotted module names, got {layers!r}")
    copy_ = copy.deepcopy(model)
    for name in layers:
        try:
            copy_.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layers: {name!r} is not a submodule of model") from None
    if target is None:
        with _eval_mode(model), torch.no_grad():
            target = model(x).argmax(1)
    reference = explain(model, x, target)
    correlations = {}
    for step, name in enumerate(layers):
        _randomize(copy_.get_submodule(name), seed + step)
        correlations[name] = rank_correlation(reference, explain(copy_, x, target))
    return correlations


def random_maps(n: int, height: int, width: int, *, seed: int = 0,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The random baseline: (n, height, width) maps of independent uniform [0, 1) values."""
    n = check_int("n", n, minimum=1)
    height, width = check_int("height", height, minimum=1), check_int("width", width, minimum=1)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    return torch.rand(n, height, width, generator=generator).to(device)


def centre_maps(n: int, height: int, width: int, *, sigma: float = 0.25,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The centre baseline: a Gaussian bump at the image centre, the same for all n maps.

    L_ij = exp(-((i - i0)^2 / h^2 + (j - j0)^2 / w^2) / (2 sigma^2)) with (i0, j0) the centre,
    so ``sigma`` is a fraction of the image's side.

    Returns:
        (n, height, width) maps in (0, 1].
    """
    n = check_int("n", n, minimum=1)
    height, width = check_int("height", height, minimum=1), check_int("width", width, minimum=1)
    sigma = check_float("sigma", sigma, minimum=0.0, open_min=True)
    rows = (torch.arange(height, dtype=torch.float32, device=device) - (height - 1) / 2) / height
    cols = (torch.arange(width, dtype=torch.float32, device=device) - (width - 1) / 2) / width
    bump = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2))
    return bump.expand(n, height, width).clone()
