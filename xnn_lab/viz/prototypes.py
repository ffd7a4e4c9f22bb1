""""This looks like that": ProtoPNet's figures, readable at the book's page width.

:func:`plot_pushed_prototypes` shows where each prototype came from (its source image, patch and
similarity map); :func:`plot_prototype_explanations` shows the prototypes behind predictions, each
test patch (*this*) beside the training patch of the prototype it matched (*that*);
:func:`draw_patch` marks a latent cell's receptive field and footprint on an image. Figures are at
most 12 inches wide, with titles in at least 9-point type, wrapped to their panel.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from xnn_lab._core.checks import check_int, check_tensor
from xnn_lab.viz._images import _image_array

if TYPE_CHECKING:
    from xnn_lab.protopnet import PushResult, ReceptiveField, TopPrototypes

TITLE_SIZE = 9          # points
PAGE_WIDTH = 7.5        # inches: a figure this wide is shown at full size (100 dpi) on the book's page
_CHAR_WIDTH = 0.55 * TITLE_SIZE / 72   # inches per character of a title, on average


def _wrap(title: str, width_inches: float) -> str:
    """``title`` with each of its lines wrapped to fit a panel ``width_inches`` wide."""
    chars = max(8, int(width_inches / _CHAR_WIDTH))
    return "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))


def draw_patch(ax: Axes, box, *, cell=None, field: ReceptiveField | None = None, color: str = "white",
               footprint_color: str = "magenta", linewidth: float = 1.5) -> Axes:
    """Mark a latent cell on an image drawn with ``imshow``: its receptive field and its footprint.

    Args:
        ax: the axes showing the image, in pixel coordinates.
        box: (4,) receptive field (top, left, bottom, right), bottom and right exclusive, as in
            ``PushResult.boxes`` and ``TopPrototypes.boxes``.
        cell: (2,) (row, column) of the cell; with ``field``, its footprint (the jump x jump block
            of pixels centred on the field's centre) is drawn too.
        field: the model's :class:`~xnn_lab.protopnet.ReceptiveField`.
        color, footprint_color: edge colours of the two boxes.
        linewidth: their line width.

    Returns:
        ``ax``.
    """
    top, left, bottom, right = (int(v) for v in torch.as_tensor(box).tolist())
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, color=color,
                           lw=linewidth))
    if cell is not None and field is not None:
        row, column = (int(v) for v in torch.as_tensor(cell).tolist())
        centre_y = field.start[0] + field.jump[0] * row
        centre_x = field.start[1] + field.jump[1] * column
        ax.add_patch(Rectangle((centre_x - field.jump[1] / 2, centre_y - field.jump[0] / 2), field.jump[1],
                               field.jump[0], fill=False, color=footprint_color, lw=linewidth))
    return ax


def _upsampled(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Similarity maps (N, h, w) resized to the image size (N, H, W), bilinearly, on the CPU."""
    maps = maps.detach().float().cpu()
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _source_images(push: PushResult, source_images: torch.Tensor) -> torch.Tensor:
    """(M, C, H, W) on the CPU: the training image each prototype was pushed to."""
    check_tensor("source_images", source_images, ndim=4)
    index = push.image_index.detach()
    if index.numel() and (index.min() < 0 or index.max() >= len(source_images)):
        raise ValueError(f"source_images must be the images the push ran on (push.image_index reaches "
                         f"{int(index.max())}), got {len(source_images)} images")
    return source_images[index.to(source_images.device)].detach().float().cpu()


def _check_classes(prototype_classes: torch.Tensor, count: int) -> list[int]:
    check_tensor("prototype_classes", prototype_classes, ndim=1, integral=True)
    if len(prototype_classes) != count:
        raise ValueError(f"prototype_classes must give the class of each of the {count} prototypes, "
                         f"got shape {tuple(prototype_classes.shape)}")
    return prototype_classes.tolist()


def _default_per_row(classes: list[int]) -> int:
    """Prototypes per row: one class per row when the classes come in equal consecutive runs."""
    _, runs = torch.unique_consecutive(torch.tensor(classes), return_counts=True)
    if len(set(runs.tolist())) == 1 and runs[0] <= 8:
        return int(runs[0])
    return min(5, len(classes))


def plot_pushed_prototypes(push: PushResult, source_images: torch.Tensor, prototype_classes: torch.Tensor, *,
                           field: ReceptiveField | None = None, captions: Sequence[str] | None = None,
                           per_row: int | None = None) -> Figure:
    """The gallery of pushed prototypes: for each, its source image with the patch it became, and
    its similarity map over that image.

    Args:
        push: the :class:`~xnn_lab.protopnet.PushResult` of :func:`~xnn_lab.protopnet.push_prototypes`.
        source_images: (N, C, H, W) the images the push ran on, values in [0, 1].
        prototype_classes: (M,) class of each prototype (``model.prototype_classes``).
        field: the model's :class:`~xnn_lab.protopnet.ReceptiveField`, to draw each patch's
            footprint too.
        captions: M titles for the similarity maps (e.g. the part under each patch);
            ``"similarity"`` by default.
        per_row: prototypes per row; one class per row by default (when classes have equally
            many prototypes, at most 8), else 5.

    Returns:
        the figure; prototype j is titled "p<j>, class <c>".
    """
    count = len(push.image_index)
    classes = _check_classes(prototype_classes, count)
    if captions is not None and len(captions) != count:
        raise ValueError(f"captions must give one caption per prototype ({count}), got {len(captions)}")
    per_row = check_int("per_row", per_row, minimum=1) if per_row is not None else _default_per_row(classes)
    images = _source_images(push, source_images)
    maps = _upsampled(push.activation_maps, tuple(images.shape[-2:]))
    rows, columns = -(-count // per_row), 2 * per_row
    size = min(1.2, PAGE_WIDTH / columns)   # not scaled down on the page: 9-point titles stay readable
    text = 0.8 * size                       # a panel's width less the padding between panels
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * (size + 0.6)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for j in range(count):
        row, column = divmod(j, per_row)
        source, heat = axes[row, 2 * column], axes[row, 2 * column + 1]
        image = _image_array("source_images", images[j])
        source.imshow(image)
        draw_patch(source, push.boxes[j], cell=push.cells[j], field=field)
        source.set_title(_wrap(f"p{j}, class {classes[j]}", text), fontsize=TITLE_SIZE)
        heat.imshow(image)
        heat.imshow(maps[j].numpy(), cmap="jet", alpha=0.5)
        heat.set_title(_wrap(captions[j] if captions is not None else "similarity", text), fontsize=TITLE_SIZE)
    fig.tight_layout()
    return fig


def plot_prototype_explanations(images: torch.Tensor, explanation: TopPrototypes, push: PushResult,
                                source_images: torch.Tensor, prototype_classes: torch.Tensor, *,
                                field: ReceptiveField | None = None,
                                labels: torch.Tensor | None = None) -> Figure:
    """"This looks like that": one row per image, its top prototypes side by side.

    For each image: the image, titled with its (true and) explained class and logit; then for each
    of its ``top`` prototypes the image with the matching patch and the similarity map (*this*,
    titled with similarity g, weight w and contribution g w), and the prototype's source patch in
    its training image (*that*, titled with the prototype and its class).

    Args:
        images: (B, C, H, W) the explained images, values in [0, 1].
        explanation: their :class:`~xnn_lab.protopnet.TopPrototypes`.
        push: the :class:`~xnn_lab.protopnet.PushResult` of the model's last push.
        source_images: (N, C, H, W) the images that push ran on.
        prototype_classes: (M,) class of each prototype (``model.prototype_classes``).
        field: the model's :class:`~xnn_lab.protopnet.ReceptiveField`, to draw footprints too.
        labels: (B,) true classes, shown in the first column's titles.

    Returns:
        the figure.
    """
    check_tensor("images", images, ndim=4)
    batch, top = explanation.prototypes.shape
    if len(images) != batch:
        raise ValueError(f"images must be the {batch} explained images, got shape {tuple(images.shape)}")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (batch,)):
        raise ValueError(f"labels must have shape ({batch},), got {getattr(labels, 'shape', labels)}")
    classes = _check_classes(prototype_classes, len(push.image_index))
    images = images.detach().float().cpu()
    sources = _source_images(push, source_images)
    explanation = type(explanation)(*(value.detach().cpu() for value in explanation))
    maps = _upsampled(explanation.activation_maps.flatten(0, 1), tuple(images.shape[-2:]))
    maps = maps.reshape(batch, top, *images.shape[-2:])
    columns = 1 + 2 * top
    size = min(1.6, PAGE_WIDTH / columns)   # not scaled down on the page: 9-point titles stay readable
    text = 0.8 * size                       # a panel's width less the padding between panels
    fig, axes = plt.subplots(batch, columns, figsize=(columns * size, batch * (size + 1.0)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(batch):
        image = _image_array("images", images[i])
        target = int(explanation.target[i])
        kind = "predicted" if target == int(explanation.logits[i].argmax()) else "explained"
        truth = f"true {int(labels[i])}, " if labels is not None else ""
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(_wrap(f"{truth}{kind} {target}\nlogit {explanation.logits[i, target]:.2f}", text),
                             fontsize=TITLE_SIZE)
        for k in range(top):
            j = int(explanation.prototypes[i, k])
            g, w = float(explanation.similarities[i, k]), float(explanation.weights[i, k])
            this, that = axes[i, 1 + 2 * k], axes[i, 2 + 2 * k]
            this.imshow(image)
            this.imshow(maps[i, k].numpy(), cmap="jet", alpha=0.35)
            draw_patch(this, explanation.boxes[i, k], cell=explanation.cells[i, k], field=field)
            this.set_title(_wrap(f"this: g {g:.2f}\nx w {w:.2f}\n= {g * w:.2f}", text), fontsize=TITLE_SIZE)
            that.imshow(_image_array("source_images", sources[j]))
            draw_patch(that, push.boxes[j], cell=push.cells[j], field=field)
            that.set_title(_wrap(f"that: p{j}\nclass {classes[j]}", text), fontsize=TITLE_SIZE)
    fig.tight_layout()
    return fig
