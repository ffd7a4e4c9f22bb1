r"""What ProtoPNet's prototypes explain and how they match ground truth: "this looks like that"
(the prototypes behind a prediction) and part purity against ground-truth part masks.

Each function that takes a model computes on the model's own device, in eval mode, and gives the
model back its modes and flags.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from xnn_lab._core.checks import check_float, check_images, check_int, check_tensor
from xnn_lab._core.state import model_device, model_state
from xnn_lab.protopnet.model import ProtoPNet, ReceptiveField, _check_model
from xnn_lab.protopnet.push import NearestPatches, _cell_indices, _first_image, _size, nearest_patches


class TopPrototypes(NamedTuple):
    """"This looks like that" for B images: the prototypes that add most to the explained class.

    Attributes:
        logits: (B, C).
        target: (B,) the explained class of each image.
        contributions: (B, M) similarity times last-layer weight of every prototype for the target
            class; they add up to ``logits[b, target[b]]``.
        prototypes: (B, top) indices of the prototypes with the largest contributions.
        similarities: (B, top) their similarity scores.
        weights: (B, top) their weights to the target class.
        cells: (B, top, 2) the patch of the image nearest to each of them (row, column).
        boxes: (B, top, 4) that patch's receptive field in the image (top, left, bottom, right).
        activation_maps: (B, top, h, w) their similarity to every patch of the image.
    """

    logits: torch.Tensor
    target: torch.Tensor
    contributions: torch.Tensor
    prototypes: torch.Tensor
    similarities: torch.Tensor
    weights: torch.Tensor
    cells: torch.Tensor
    boxes: torch.Tensor
    activation_maps: torch.Tensor


@torch.no_grad()
def top_prototypes(model: ProtoPNet, x: torch.Tensor, *, target: torch.Tensor | None = None,
                   top: int = 3) -> TopPrototypes:
    """The ``top`` prototypes that add most to each image's target logit: "this (patch) looks like
    that (prototype)", from :meth:`ProtoPNet.explain`.

    The source patch of each prototype is in the :class:`~xnn_lab.protopnet.PushResult` of the
    last push, at the indices ``prototypes``.

    Args:
        model: the ProtoPNet; evaluated in eval mode on its own device, its modes and flags given back.
        x: images (B, C_in, H, W).
        target: (B,) classes to explain; the predicted classes when ``None``.
        top: how many prototypes to list per image, at most M.

    Returns:
        a :class:`TopPrototypes` on x's device.
    """
    model = _check_model(model)
    top = check_int("top", top, minimum=1, maximum=model.num_prototypes)
    check_images("x", x, channels=model.in_channels)
    with model_state(model):
        out = model.explain(x.to(model_device(model)))
    if target is None:
        target = out.logits.argmax(dim=1)
    check_tensor("target", target, ndim=1, integral=True)
    if target.shape[0] != x.shape[0] or target.min() < 0 or target.max() >= model.num_classes:
        raise ValueError(f"target must hold {x.shape[0]} classes in [0, {model.num_classes}), got {target.tolist()}")
    target = target.to(out.logits.device)
    rows = torch.arange(x.shape[0], device=target.device)[:, None]
    weights_all = model.last_layer.weight[target]                                   # (B, M)
    contributions = out.contributions[rows[:, 0], target]                           # (B, M)
    _, prototypes = contributions.topk(top, dim=1)
    distances = out.distances[rows, prototypes]                                      # (B, top, h, w)
    cells = _cell_indices(distances.flatten(2).argmin(dim=2), distances.shape[-1])
    explanation = TopPrototypes(
        out.logits, target, contributions, prototypes, out.similarities.gather(1, prototypes),
        weights_all.gather(1, prototypes), cells, model.receptive_field().boxes(cells, tuple(x.shape[-2:])),
        model.similarity(distances))
    return TopPrototypes(*(value.to(x.device) for value in explanation))


def patch_parts(part_masks: torch.Tensor, field: ReceptiveField, grid_size: tuple[int, int], *,
                min_share: float = 0.25) -> torch.Tensor:
    """The part each latent cell stands for: the part that covers most of the cell's footprint.

    A cell's footprint is the jump x jump block of pixels centred on its receptive field's centre;
    footprints tile the image. A cell gets part p when p covers the largest share of its footprint
    and at least ``min_share`` of it, else -1 (background or a non-part region such as the body).

    Args:
        part_masks: (N, P, H, W) bool, one mask per part.
        field: the backbone's :class:`~xnn_lab.protopnet.ReceptiveField`.
        grid_size: (h, w) of the latent grid.
        min_share: in (0, 1].

    Returns:
        (N, h, w) int64 part indices in [0, P), or -1.
    """
    check_tensor("part_masks", part_masks, ndim=4)
    min_share = check_float("min_share", min_share, minimum=0.0, maximum=1.0, open_min=True)
    masks = part_masks.float()
    pads = []
    for axis in (1, 0):  # F.pad takes the last axis first
        first = round(field.start[axis] - (field.jump[axis] - 1) / 2)    # first pixel of cell 0's footprint
        needed = grid_size[axis] * field.jump[axis]
        pads += [-first, needed + first - masks.shape[2 + axis]]
    shares = F.avg_pool2d(F.pad(masks, pads), field.jump, field.jump)[:, :, :grid_size[0], :grid_size[1]]
    share, part = shares.max(dim=1)
    return torch.where(share >= min_share, part, torch.full_like(part, -1))


def _purity(parts: torch.Tensor, num_parts: int) -> torch.Tensor:
    """(G,) largest share of one part among the k patches of each group; parts (G, k), -1 for none."""
    counts = F.one_hot(parts.clamp_min(0), num_parts) * (parts >= 0)[..., None]
    return counts.sum(dim=1).max(dim=1).values / parts.shape[1]


class PartPurity(NamedTuple):
    """Part purity of each prototype over held-out images.

    Attributes:
        purity: (M,) the largest share of one part among the prototype's k nearest patches.
        part: (M,) that part (-1 when no nearest patch falls on a part).
        parts: (M, k) the part of each nearest patch (-1: none).
        nearest: the :class:`~xnn_lab.protopnet.NearestPatches` they came from.
    """

    purity: torch.Tensor
    part: torch.Tensor
    parts: torch.Tensor
    nearest: NearestPatches


def part_purity(model: ProtoPNet, data, part_masks: torch.Tensor, *, k: int = 10, min_share: float = 0.25,
                batch_size: int = 256) -> PartPurity:
    """How consistently each prototype's k nearest patches (one per image) fall on one part.

    Args:
        model: the ProtoPNet; computed on its device, its modes and flags given back.
        data: (X, y) tensors or a Dataset of (image, label), e.g. a held-out split.
        part_masks: (N, P, H, W) bool part masks of ``data``'s images.
        k: nearest images per prototype.
        min_share: passed to :func:`patch_parts`.
        batch_size: as for :func:`~xnn_lab.protopnet.nearest_patches`.

    Returns:
        a :class:`PartPurity`.
    """
    model = _check_model(model)
    check_tensor("part_masks", part_masks, ndim=4)
    nearest = nearest_patches(model, data, k=k, batch_size=batch_size)
    image = _first_image(data)
    if part_masks.shape[-2:] != image.shape[-2:] or part_masks.shape[0] != _size(data):
        raise ValueError(f"part_masks must have shape ({_size(data)}, P, {image.shape[-2]}, {image.shape[-1]}), "
                         f"got {tuple(part_masks.shape)}")
    # In eval mode: a batch of one must not move batch-norm statistics.
    with model_state(model), torch.no_grad():
        grid_size = tuple(model.latent(image[None].to(model_device(model))).shape[-2:])
    cell_parts = patch_parts(part_masks, model.receptive_field(), grid_size, min_share=min_share)
    cells = nearest.cells.cpu()
    parts = cell_parts[nearest.image_index.cpu(), cells[..., 0], cells[..., 1]]       # (M, k)
    purity = _purity(parts, part_masks.shape[1])
    counts = F.one_hot(parts.clamp_min(0), part_masks.shape[1]) * (parts >= 0)[..., None]
    part = torch.where(purity > 0, counts.sum(dim=1).argmax(dim=1), torch.full_like(purity, -1, dtype=torch.long))
    return PartPurity(purity, part, parts, nearest)


def random_patch_purity(part_masks: torch.Tensor, field: ReceptiveField, grid_size: tuple[int, int], *,
                        k: int = 10, groups: int = 1000, min_share: float = 0.25, seed: int = 0) -> torch.Tensor:
    """Part purity of groups of k random patches (random image, random cell): the chance level.

    Args:
        part_masks: (N, P, H, W) bool part masks.
        field, grid_size, min_share: as for :func:`patch_parts`.
        k: patches per group, as in :func:`part_purity`.
        groups: how many groups to draw.
        seed: seeds the draw.

    Returns:
        (groups,) purity of each group.
    """
    k = check_int("k", k, minimum=1)
    groups = check_int("groups", groups, minimum=1)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    cell_parts = patch_parts(part_masks, field, grid_size, min_share=min_share).flatten()
    draw = torch.randint(0, cell_parts.numel(), (groups, k), generator=generator)
    return _purity(cell_parts[draw], part_masks.shape[1])
