"""Interactive explorers for live lectures (ipywidgets), and the static figure the book shows instead.

``cam_explorer`` needs ``ipywidgets`` and a running Jupyter kernel; it is imported only when
called. ``cam_grid`` draws the same views without it: one image, every layer and method.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from xnn_lab._checks import check_int, check_tensor
from xnn_lab.cam import CAM, GradCAM, GradCAMPlusPlus
from xnn_lab.viz import overlay

METHODS = {"CAM": CAM, "Grad-CAM": GradCAM, "Grad-CAM++": GradCAMPlusPlus}


class _Views:
    """Explainers for every (method, layer) of one model, built once and reused."""

    def __init__(self, model: nn.Module, images: torch.Tensor, layers: Sequence[str], methods: Sequence[str],
                 class_names: Sequence[str] | None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_tensor("images", images, ndim=4, floating=True)
        if isinstance(layers, str) or not layers:
            raise TypeError(f"layers must be a non-empty list of dotted layer names, got {layers!r}")
        unknown = [m for m in methods if m not in METHODS]
        if isinstance(methods, str) or not methods or unknown:
            raise ValueError(f"methods must be a non-empty list drawn from {tuple(METHODS)}, got {methods!r}")
        self.model, self.images, self.layers, self.methods = model, images, list(layers), list(methods)
        with torch.no_grad():
            self.classes = model(images[:1].to(next(model.parameters()).device)).shape[1]
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(self.classes)]
        if len(self.class_names) != self.classes:
            raise ValueError(f"class_names must name the model's {self.classes} classes, got {len(self.class_names)}")
        self.explainers: dict[tuple[str, str], object] = {}

    def draw(self, ax: Axes, index: int, target: int, layer: str, method: str) -> Axes:
        """Draw the map of ``method`` at ``layer`` for image ``index`` and class ``target`` on ``ax``."""
        image = self.images[index:index + 1]
        try:
            if (method, layer) not in self.explainers:
                self.explainers[(method, layer)] = METHODS[method](self.model, layer)
            heat, title = self.explainers[(method, layer)](image, target)[0], f"{method} @ {layer}"
        except ValueError:  # CAM explains only the layer its head pools: show an empty panel
            heat, title = torch.zeros(image.shape[-2:]), f"{method} @ {layer}: n/a"
        return overlay(image[0], heat, ax=ax, title=title)


def cam_grid(model: nn.Module, image: torch.Tensor, layers: Sequence[str],
             methods: Sequence[str] = tuple(METHODS), *, target: int | None = None,
             class_names: Sequence[str] | None = None, size: float = 2.0) -> Figure:
    """Every (layer, method) map of one image in a grid: the explorer's views, as a static figure.

    Args:
        model: the classifier.
        image: (C, H, W) image.
        layers: dotted names of the layers, one row each.
        methods: names from ``METHODS``, one column each; CAM shows "n/a" at layers it cannot explain.
        target: the class to explain; the predicted class when ``None``.
        class_names: names of the model's classes, for the title.
        size: width and height of each panel in inches.

    Returns:
        the figure: the image, then a row of maps per layer.
    """
    check_tensor("image", image, ndim=3, floating=True)
    views = _Views(model, image[None], layers, methods, class_names)
    if target is None:
        with torch.no_grad():
            target = int(model(image[None].to(next(model.parameters()).device)).argmax())
    target = check_int("target", target, minimum=0, maximum=views.classes - 1)
    columns = len(views.methods) + 1
    fig, axes = plt.subplots(len(views.layers), columns, figsize=(columns * size, len(views.layers) * size),
                             squeeze=False)
    for row, layer in enumerate(views.layers):
        overlay(image, torch.zeros(image.shape[-2:]), ax=axes[row, 0], alpha=0.0,
                title=views.class_names[target] if row == 0 else None)
        for column, method in enumerate(views.methods, start=1):
            views.draw(axes[row, column], 0, target, layer, method)
    return fig


def cam_explorer(model: nn.Module, images: torch.Tensor, layers: Sequence[str],
                 methods: Sequence[str] = tuple(METHODS), *, class_names: Sequence[str] | None = None):
    """An ipywidgets explorer for live lectures: pick an image, a class, a layer and a method.

    Args:
        model: the classifier.
        images: (N, C, H, W) images to choose from.
        layers: dotted names of the layers to offer.
        methods: names from ``METHODS`` to offer.
        class_names: names of the model's classes.

    Returns:
        the ``ipywidgets`` widget; display it in a notebook.

    Raises:
        ImportError: ``ipywidgets`` is not installed.
    """
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("cam_explorer needs ipywidgets (pip install ipywidgets) and a Jupyter kernel; "
                          "without it, xnn_lab.widgets.cam_grid draws the same views as a static figure") from None
    views = _Views(model, images, layers, methods, class_names)
    output = ipywidgets.Output()
    controls = {
        "index": ipywidgets.IntSlider(0, 0, len(images) - 1, description="image"),
        "target": ipywidgets.Dropdown(options=[(n, c) for c, n in enumerate(views.class_names)], description="class"),
        "layer": ipywidgets.Dropdown(options=views.layers, value=views.layers[-1], description="layer"),
        "method": ipywidgets.Dropdown(options=views.methods, description="method"),
    }

    def redraw(_=None):
        with output:
            output.clear_output(wait=True)
            _, ax = plt.subplots(figsize=(3.5, 3.5))
            views.draw(ax, **{name: control.value for name, control in controls.items()})
            plt.show()

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    return ipywidgets.VBox([ipywidgets.HBox(list(controls.values())[:2]),
                            ipywidgets.HBox(list(controls.values())[2:]), output])
