"""The class-activation-map methods by name, and explainers for every (layer, method) pair."""

from __future__ import annotations

from xnn_lab.cam.base import BaseCAM
from xnn_lab.cam.gap import CAM
from xnn_lab.cam.gradients import GradCAM, GradCAMPlusPlus

METHODS = {"CAM": CAM, "Grad-CAM": GradCAM, "Grad-CAM++": GradCAMPlusPlus}


def cam_explainers(model, layers, methods=tuple(METHODS)) -> dict[str, dict[str, BaseCAM]]:
    """``{layer: {method: explainer}}`` for every layer and method, as the widgets take them.

    Args:
        model: the classifier.
        layers: dotted names of the layers, one row each.
        methods: names from ``METHODS`` ("CAM", "Grad-CAM", "Grad-CAM++"), one column each.
    """
    if isinstance(layers, str) or not layers:
        raise TypeError(f"layers must be a non-empty list of dotted layer names, got {layers!r}")
    unknown = [m for m in methods if m not in METHODS]
    if isinstance(methods, str) or not methods or unknown:
        raise ValueError(f"methods must be a non-empty list drawn from {tuple(METHODS)}, got {methods!r}")
    return {layer: {method: METHODS[method](model, layer) for method in methods} for layer in layers}
