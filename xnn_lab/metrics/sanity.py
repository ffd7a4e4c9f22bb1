"""Sanity checks (Adebayo et al., 2018): do the maps change when the model does?"""

from __future__ import annotations

from typing import NamedTuple

import copy

import torch
from torch import nn

from xnn_lab._core.checks import check_finite, check_images, check_int, check_tensor, input_errors
from xnn_lab._core.state import model_device, model_state


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
    check_finite("first", first)
    check_finite("second", second)
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


class SanityCheck(NamedTuple):
    """What :func:`randomization_sanity_check` measured, in randomisation order.

    Attributes:
        correlations: ``{layer: (N,) rank correlations}`` of the maps of the model with that layer,
            and every layer before it in the cascade, randomised, against the trained model's maps.
        maps: the maps of the first ``keep_maps`` images: ``"trained"`` first, then one entry per
            layer, each (keep_maps, H, W); empty when ``keep_maps`` is 0.
    """

    correlations: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor]


def randomization_sanity_check(explainer, x: torch.Tensor, target=None, *, layers=None, seed: int = 0,
                               keep_maps: int = 0) -> SanityCheck:
    """Model-parameter randomisation test (Adebayo et al., 2018), cascading from the top layer.

    A copy of the explainer, its model with it, has the model's layers re-initialised one after
    another, from the output towards the input, keeping the earlier ones randomised; after each,
    the maps are computed again and compared with those of the trained model by Spearman rank
    correlation. A method that explains the model must give maps that change (low correlation)
    once the weights are. The explainer and its model are not changed.

    Args:
        explainer: a saliency explainer, ``explainer(x, target) -> (N, H, W)`` maps, that holds
            the model it explains as ``explainer.model`` (``GradCAM(model, "features")``,
            ``CaptumExplainer(Saliency(model))``); it is copied with ``copy.deepcopy``, so that the
            copy explains the copied model.
        x: (N, C, H, W) images.
        target: the class each map explains, an int or an (N,) int tensor; the trained model's
            predicted class when ``None``, kept for every randomised copy.
        layers: dotted names of the modules to randomise, in order (top first); a module's
            submodules are randomised with it. By default every module that holds parameters
            itself, in reverse order of registration.
        seed: seeds the re-initialisation.
        keep_maps: also return the maps of the first ``keep_maps`` images at every step.

    Returns:
        a :class:`SanityCheck`.
    """
    model = getattr(explainer, "model", None)
    if not callable(explainer) or not isinstance(model, nn.Module):
        raise TypeError("explainer must be a saliency explainer, callable as explainer(x, target), that holds "
                        f"its model as explainer.model (an nn.Module); got {type(explainer).__name__}"
                        + ("" if model is None else f" whose .model is a {type(model).__name__}"))
    check_images("x", x)
    seed = check_int("seed", seed, minimum=0)
    keep_maps = check_int("keep_maps", keep_maps, minimum=0)
    if layers is None:
        layers = [name for name, module in model.named_modules()
                  if any(True for _ in module.parameters(recurse=False))][::-1]
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers) or not layers:
        raise TypeError(f"layers must be a non-empty list of dotted module names, got {layers!r}")
    for name in layers:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layers: {name!r} is not a submodule of the explainer's model") from None
    with torch.inference_mode(False):  # the copy must stay trainable, even inside the caller's inference mode
        randomized = copy.deepcopy(explainer)
    if randomized.model is model:
        raise TypeError(f"explainer: a deep copy of the {type(explainer).__name__} still explains the original "
                        "model; give it the model as an attribute it owns (explainer.model)")
    if target is None:
        with model_state(model), torch.no_grad(), input_errors("x", x):
            target = model(x.to(model_device(model, x.device))).argmax(1).to(x.device)
    reference = explainer(x, target)
    correlations, maps = {}, {}
    if keep_maps:
        maps["trained"] = reference[:keep_maps]
    for step, name in enumerate(layers):
        with torch.inference_mode(False):
            _randomize(randomized.model.get_submodule(name), seed + step)
        randomized_maps = randomized(x, target)
        correlations[name] = rank_correlation(reference, randomized_maps)
        if keep_maps:
            maps[name] = randomized_maps[:keep_maps]
    return SanityCheck(correlations, maps)
