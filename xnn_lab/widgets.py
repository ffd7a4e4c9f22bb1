"""Interactive explorers for live lectures (ipywidgets), and the static figure the book shows instead.

Both take saliency explainers as they are, ``explainer(x, target=None) -> (B, H, W)``, arranged
as ``{row: {column: explainer}}`` (rows are usually layers, columns methods);
:func:`xnn_lab.cam.cam_explainers` builds that for CAM, Grad-CAM and Grad-CAM++.
``cam_explorer`` needs ``ipywidgets`` and a running Jupyter kernel; it is imported only when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from xnn_lab._core.checks import check_int, check_tensor
from xnn_lab._core.state import model_device, model_state
from xnn_lab.viz import overlay

Explainers = Mapping[str, Mapping[str, Callable]]


class _Views:
    """The explainers' maps of a batch of images, each view drawn on demand."""

    def __init__(self, images: torch.Tensor, explainers: Explainers, class_names: Sequence[str] | None):
        check_tensor("images", images, ndim=4, floating=True)
        if (not isinstance(explainers, Mapping) or not explainers
                or not all(isinstance(row, Mapping) and row for row in explainers.values())):
            raise TypeError("explainers must map each row name to a non-empty {column name: explainer} mapping, "
                            f"got {type(explainers).__name__}")
        for row, columns in explainers.items():
            for column, explainer in columns.items():
                if not callable(explainer):
                    raise TypeError(f"explainers[{row!r}][{column!r}] must be a saliency explainer "
                                    f"(callable), got {type(explainer).__name__}")
        self.images, self.explainers = images, explainers
        self.rows = list(explainers)
        self.columns = list(dict.fromkeys(column for row in explainers.values() for column in row))
        self.model = next((e.model for row in explainers.values() for e in row.values()
                           if isinstance(getattr(e, "model", None), nn.Module)), None)
        self.classes = None if self.model is None else int(self._logits(images[:1]).shape[1])
        if class_names is not None and self.classes is not None and len(class_names) != self.classes:
            raise ValueError(f"class_names must name the model's {self.classes} classes, got {len(class_names)}")
        count = self.classes if class_names is None else len(class_names)
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(count or 0)]

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        with model_state(self.model), torch.no_grad():
            return self.model(images.to(model_device(self.model, images.device)))

    def predicted(self, index: int) -> int | None:
        """The class the explainers' model predicts for image ``index`` (None without a model)."""
        return None if self.model is None else int(self._logits(self.images[index:index + 1]).argmax())

    def draw(self, ax: Axes, index: int, target: int | None, row: str, column: str) -> Axes:
        """Draw the map of ``explainers[row][column]`` for image ``index`` and class ``target`` on ``ax``."""
        image = self.images[index:index + 1]
        explainer, title = self.explainers[row].get(column), f"{column} @ {row}"
        try:
            if explainer is None:
                raise ValueError(f"no {column} at {row}")
            heat = explainer(image, target)[0]
        except ValueError:  # e.g. CAM explains only the layer its head pools: show an empty panel
            heat, title = torch.zeros(image.shape[-2:]), f"{title}: n/a"
        return overlay(image[0], heat, ax=ax, title=title)


def cam_grid(image: torch.Tensor, explainers: Explainers, *, target: int | None = None,
             class_names: Sequence[str] | None = None, size: float = 2.0) -> Figure:
    """Every explainer's map of one image in a grid: the explorer's views, as a static figure.

    Args:
        image: (C, H, W) image.
        explainers: ``{row: {column: explainer}}``; a column missing from a row, or an explainer
            that cannot explain it (``ValueError``), shows an "n/a" panel.
        target: the class to explain; the class the explainers' model (``explainer.model``)
            predicts when ``None``.
        class_names: names of the model's classes, for the title.
        size: width and height of each panel in inches.

    Returns:
        the figure: the image, then a row of maps per row of ``explainers``.
    """
    check_tensor("image", image, ndim=3, floating=True)
    views = _Views(image[None], explainers, class_names)
    if target is None:
        target = views.predicted(0)
    elif views.classes is not None:
        target = check_int("target", target, minimum=0, maximum=views.classes - 1)
    columns = len(views.columns) + 1
    fig, axes = plt.subplots(len(views.rows), columns, figsize=(columns * size, len(views.rows) * size),
                             squeeze=False)
    for r, row in enumerate(views.rows):
        title = (views.class_names[target] if target is not None and views.class_names else None) if r == 0 else None
        overlay(image, torch.zeros(image.shape[-2:]), ax=axes[r, 0], alpha=0.0, title=title)
        for c, column in enumerate(views.columns, start=1):
            views.draw(axes[r, c], 0, target, row, column)
    return fig


def cam_explorer(images: torch.Tensor, explainers: Explainers, *, class_names: Sequence[str] | None = None):
    """An ipywidgets explorer for live lectures: pick an image, a class, a row (layer) and a column (method).

    Args:
        images: (N, C, H, W) images to choose from.
        explainers: ``{row: {column: explainer}}``, as :func:`cam_grid` takes them; the explainers
            need a ``.model`` to offer the classes.
        class_names: names of the model's classes.

    Returns:
        the ``ipywidgets`` widget; display it in a notebook.

    Raises:
        ImportError: ``ipywidgets`` is not installed.
    """
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("cam_explorer needs ipywidgets (pip install 'xnn_lab[widgets]') and a Jupyter kernel; "
                          "without it, xnn_lab.widgets.cam_grid draws the same views as a static figure") from None
    views = _Views(images, explainers, class_names)
    if not views.class_names:
        raise ValueError("explainers: cam_explorer needs explainers that hold their model (explainer.model) "
                         "or class_names, to offer the classes")
    output = ipywidgets.Output()
    controls = {
        "index": ipywidgets.IntSlider(0, 0, len(images) - 1, description="image"),
        "target": ipywidgets.Dropdown(options=[(n, c) for c, n in enumerate(views.class_names)], description="class"),
        "row": ipywidgets.Dropdown(options=views.rows, value=views.rows[-1], description="layer"),
        "column": ipywidgets.Dropdown(options=views.columns, description="method"),
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
