"""Image grids, heatmap overlays, ICE/PD curves and training histories.

Every function draws with matplotlib (any backend, Agg included), takes tensors on any device,
and returns the figure or axes it drew on; none calls ``plt.show()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from xnn_lab._core.checks import check_finite, check_float, check_int, check_tensor

# Smallest positive float32: dividing by max(range, _TINY) maps a constant heatmap to zeros.
_TINY = torch.finfo(torch.float32).tiny


def _image_array(name: str, image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) or (H, W) tensor in [0, 1] as an array imshow takes: (H, W, 3) or (H, W)."""
    check_tensor(name, image, ndim=(2, 3))
    check_finite(name, image)
    image = image.detach().float().cpu()
    if image.ndim == 3:
        if image.shape[0] not in (1, 3):
            raise ValueError(f"{name} must have 1 or 3 channels in (C, H, W), "
                             f"got shape {tuple(image.shape)}")
        image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    return image.clamp(0, 1).numpy()


def _draw_image(ax: Axes, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_axis_off()


def _cpu_batch(name: str, images: torch.Tensor) -> torch.Tensor:
    """A batch of images, (N, C, H, W) or (N, H, W), with at least one, copied to the CPU at once
    rather than image by image."""
    check_tensor(name, images, ndim=(3, 4))
    if len(images) == 0:
        raise ValueError(f"{name} must hold at least one image, got shape {tuple(images.shape)}")
    check_finite(name, images)
    return images.detach().float().cpu()


def _check_titles(titles: Sequence[str] | None, count: int) -> None:
    if titles is not None and len(titles) != count:
        raise ValueError(f"titles must give one title per image ({count}), got {len(titles)}")


def _grid_axes(count: int, ncols: int, size: float) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` axes in rows of ``ncols``; the unused cells of the last row removed."""
    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    axes = list(axes.flat)
    for unused in axes[count:]:
        fig.delaxes(unused)
    return fig, axes[:count]


def _display_heatmap(heatmap: torch.Tensor, size: tuple[int, int], signed: bool) -> np.ndarray:
    """The heatmap resized to ``size`` and scaled for display: to [-1, 1] by max |value| if signed
    (so 0 stays the colormap's centre), else min-max to [0, 1]."""
    heat = heatmap.detach().float()
    if tuple(heat.shape) != size:
        heat = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    if signed:
        heat = heat / heat.abs().max().clamp_min(_TINY)
    else:
        low = heat.min()
        heat = (heat - low) / (heat.max() - low).clamp_min(_TINY)
    return heat.cpu().numpy()


def show_images(images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 8,
                size: float = 1.6) -> Figure:
    """A grid of images.

    Args:
        images: shape (N, 3, H, W), (N, 1, H, W) or (N, H, W), values in [0, 1] (clipped).
        titles: one title per image, or ``None``.
        ncols: images per row, at least 1.
        size: width and height of each image in inches.

    Returns:
        the figure, with one axes per image.
    """
    images = _cpu_batch("images", images)
    _check_titles(titles, len(images))
    ncols = check_int("ncols", ncols, minimum=1)
    size = check_float("size", size, minimum=0, open_min=True)
    fig, axes = _grid_axes(len(images), ncols, size)
    for i, ax in enumerate(axes):
        _draw_image(ax, _image_array("images", images[i]))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    return fig


def overlay(image: torch.Tensor, heatmap: torch.Tensor, ax: Axes | None = None, alpha: float = 0.5,
            cmap: str | None = None, title: str | None = None, signed: bool = False) -> Axes:
    """A heatmap drawn semi-transparently over an image.

    The heatmap is resized (bilinear) to the image and rescaled for display only: min-max to
    [0, 1], or, with ``signed=True`` (e.g. SHAP values), divided by its largest magnitude and
    drawn with a diverging colormap whose centre is 0.

    Args:
        image: shape (C, H, W) with C = 1 or 3, or (H, W); values in [0, 1].
        heatmap: shape (h, w).
        ax: the axes to draw on; a new figure when ``None``.
        alpha: opacity of the heatmap, in [0, 1].
        cmap: colormap name; ``None`` gives ``"jet"``, or ``"RdBu_r"`` when ``signed``.
        title: axes title.
        signed: keep the sign of the heatmap (negative blue, positive red by default).

    Returns:
        the axes.
    """
    picture = _image_array("image", image)
    check_tensor("heatmap", heatmap, ndim=2)
    check_finite("heatmap", heatmap)
    alpha = check_float("alpha", alpha, minimum=0, maximum=1)
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {signed!r} ({type(signed).__name__})")
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    heat = _display_heatmap(heatmap, picture.shape[:2], signed)
    _draw_image(ax, picture)
    ax.imshow(heat, cmap=cmap or ("RdBu_r" if signed else "jet"), alpha=alpha,
              vmin=-1 if signed else 0, vmax=1)
    if title is not None:
        ax.set_title(title, fontsize=8)
    return ax


def show_overlays(images: torch.Tensor, heatmaps: torch.Tensor, titles: Sequence[str] | None = None,
                  ncols: int = 6, signed: bool = False, size: float = 2.0) -> Figure:
    """A grid of heatmaps over their images (see :func:`overlay`).

    Args:
        images: shape (N, 3, H, W), (N, 1, H, W) or (N, H, W), values in [0, 1].
        heatmaps: shape (N, h, w); each is resized to its image and scaled on its own.
        titles: one title per image, or ``None``.
        ncols: images per row, at least 1.
        signed: draw signed heatmaps with a diverging colormap centred at 0.
        size: width and height of each image in inches.

    Returns:
        the figure, with one axes per image.
    """
    images = _cpu_batch("images", images)
    check_tensor("heatmaps", heatmaps, ndim=3)
    check_finite("heatmaps", heatmaps)
    if len(heatmaps) != len(images):
        raise ValueError(f"heatmaps must hold one heatmap per image ({len(images)}), "
                         f"got {len(heatmaps)}")
    heatmaps = heatmaps.detach().float().cpu()
    _check_titles(titles, len(images))
    ncols = check_int("ncols", ncols, minimum=1)
    size = check_float("size", size, minimum=0, open_min=True)
    fig, axes = _grid_axes(len(images), ncols, size)
    for i, ax in enumerate(axes):
        overlay(images[i], heatmaps[i], ax=ax, signed=signed,
                title=None if titles is None else titles[i])
    return fig


def plot_ice(grid: torch.Tensor, curves: torch.Tensor, ax: Axes | None = None,
             feature_name: str | None = None, max_curves: int = 50) -> Axes:
    """ICE curves as thin lines and their mean, the partial dependence, as a thick line.

    Args:
        grid: the feature values, shape (G,).
        curves: the ICE curves, shape (N, G), as returned by :func:`xnn_lab.agnostic.ice_curves`.
        ax: the axes to draw on; a new figure when ``None``.
        feature_name: x-axis label.
        max_curves: at most this many ICE lines are drawn, evenly picked from the N; the mean
            always uses all N.

    Returns:
        the axes, holding ``min(N, max_curves)`` thin lines and then the mean line.
    """
    check_tensor("grid", grid, ndim=1)
    check_tensor("curves", curves, ndim=2)
    if curves.shape[1] != len(grid):
        raise ValueError(f"curves must have one column per grid value ({len(grid)}), "
                         f"got shape {tuple(curves.shape)}")
    max_curves = check_int("max_curves", max_curves, minimum=0)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    shown = torch.linspace(0, len(curves) - 1, min(len(curves), max_curves)).round().long()
    x = grid.detach().float().cpu().numpy()
    curves = curves.detach().float().cpu()
    if len(shown):
        ax.plot(x, curves[shown].T.numpy(), color="0.5", linewidth=0.6, alpha=0.5)
    ax.plot(x, curves.mean(0).numpy(), color="C3", linewidth=2.5, label="PD (mean of ICE)")
    ax.set_xlabel(feature_name or "feature value")
    ax.set_ylabel("model output")
    ax.legend()
    return ax


def _series(history, key: str) -> list[float]:
    try:
        return [float(value) for value in history[key]]
    except (TypeError, ValueError) as err:
        raise TypeError(f"history[{key!r}] must be a sequence of numbers, "
                        f"got {history[key]!r}") from err


def plot_history(history, ax: Sequence[Axes] | None = None) -> Figure:
    """Loss and accuracy per epoch, train and (if present) validation, in two panels.

    Args:
        history: a dict-like (``dict``, ``xnn_lab.History``) with ``"train_loss"`` and
            ``"train_acc"``, and optionally ``"val_loss"`` and ``"val_acc"``: sequences of
            numbers, one per epoch.
        ax: a pair of axes ``(loss_ax, acc_ax)`` to draw on; a new figure when ``None``.

    Returns:
        the figure holding the two panels.
    """
    # Duck-typed rather than a Mapping check, so that xnn_lab.History (no __iter__) passes.
    if not (hasattr(history, "__getitem__") and hasattr(history, "__contains__")):
        raise TypeError(f"history must be dict-like (a dict or a History), got {type(history).__name__}")
    for key in ("train_loss", "train_acc"):
        if key not in history:
            raise ValueError(f"history must have the key {key!r}, got a {type(history).__name__} without it")
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(8, 3))
    elif (not isinstance(ax, (list, tuple, np.ndarray)) or len(ax) != 2
          or not all(isinstance(a, Axes) for a in ax)):
        raise TypeError(f"ax must be a pair of Axes (loss, accuracy) or None, got {ax!r}")
    loss_ax, acc_ax = ax
    for panel, metric, label in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if key in history:
                values = _series(history, key)
                panel.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=split)
        panel.set_xlabel("epoch")
        panel.set_ylabel(label)
        panel.legend()
    return loss_ax.figure
