r"""What ProtoPNet's prototypes are: push, nearest patches, pruning, "this looks like that"
explanations and part purity against ground-truth part masks.

Everything runs batched over the data: the distances of all prototypes to all patches of a batch
come in one call, and running minima (or top-k) per prototype are kept as tensors, so there is no
Python loop over prototypes or images.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from xnn_lab._checks import check_float, check_int, check_tensor
from xnn_lab.models.protopnet import ProtoPNet, ReceptiveField
from xnn_lab.train import iterate_batches, tensor_pair


def _check_model(model) -> ProtoPNet:
    if not isinstance(model, ProtoPNet):
        raise TypeError(f"model must be an xnn_lab.models.ProtoPNet, got {type(model).__name__}")
    return model


def _cell_indices(flat: torch.Tensor, width: int) -> torch.Tensor:
    """(..., 2) (row, column) of flat cell indices in a grid ``width`` cells wide."""
    return torch.stack([flat // width, flat % width], dim=-1)


class PushResult(NamedTuple):
    """Where each prototype came from after :func:`push_prototypes`; M prototypes, latent grid (h, w).

    Attributes:
        image_index: (M,) index in the pushed data of the source image.
        cells: (M, 2) (row, column) of the source patch in the latent grid.
        boxes: (M, 4) receptive field of the source patch in the image: (top, left, bottom, right),
            bottom and right exclusive.
        moved: (M,) squared distance from the prototype before the push to the patch that replaced it.
        activation_maps: (M, h, w) similarity of the pushed prototype to every patch of its source image.
    """

    image_index: torch.Tensor
    cells: torch.Tensor
    boxes: torch.Tensor
    moved: torch.Tensor
    activation_maps: torch.Tensor


@torch.no_grad()
def push_prototypes(model: ProtoPNet, data, *, batch_size: int = 256,
                    device: torch.device | None = None) -> PushResult:
    """Replace each prototype by the nearest latent patch of a training image of its own class.

    One pass over ``data`` in eval mode: for each batch, the distances of all prototypes to all
    patches (B, M, h, w), those of images of other classes set to infinity, and a running minimum
    per prototype with the patch vector, image, cell and latent grid where it was reached. The
    prototypes are then set to those patch vectors, exactly.

    Args:
        model: the ProtoPNet; its prototypes are overwritten.
        data: (X, y) tensors or a Dataset of (image, label) holding every class; indices in the
            result refer to its order.
        batch_size: images per batch.
        device: where to compute; the model's device by default.

    Returns:
        a :class:`PushResult`.
    """
    model = _check_model(model)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    tensor_pair("data", data)
    device = device or model.prototypes.device
    model.to(device)
    was_training = model.training
    model.eval()
    num, dim, dtype = model.num_prototypes, model.prototypes.shape[1], model.prototypes.dtype
    best = torch.full((num,), float("inf"), dtype=dtype, device=device)
    patches = torch.zeros(num, dim, dtype=dtype, device=device)
    image_index = torch.full((num,), -1, dtype=torch.long, device=device)
    flat_cell = torch.zeros(num, dtype=torch.long, device=device)
    grids = None
    start = 0
    try:
        for X, y in iterate_batches("data", data, batch_size, device=device):
            z = model.latent(X)                                                    # (B, D, h, w)
            batch, _, height, width = z.shape
            distances = model.distances(z)                                         # (B, M, h, w)
            own = y[:, None] == model.prototype_classes[None, :]                   # (B, M)
            distances = distances.masked_fill(~own[:, :, None, None], float("inf"))
            value, where = distances.transpose(0, 1).reshape(num, -1).min(dim=1)   # over (B, h, w)
            better = value < best
            image_in_batch, cell = where // (height * width), where % (height * width)
            if grids is None:
                grids = torch.zeros(num, dim, height, width, dtype=dtype, device=device)
            best = torch.where(better, value, best)
            patches[better] = z.permute(0, 2, 3, 1).reshape(-1, dim)[where[better]]
            image_index[better] = start + image_in_batch[better]
            flat_cell[better] = cell[better]
            grids[better] = z[image_in_batch[better]]
            start += batch
        missing = torch.isinf(best)
        if missing.any():
            classes = model.prototype_classes[missing].unique().tolist()
            raise ValueError(f"data must hold images of every class; none of class(es) {classes}")
        moved = ((model.prototypes[:, :, 0, 0] - patches) ** 2).sum(dim=1)
        model.prototypes.copy_(patches[:, :, None, None])
        maps = model.similarity(((grids - patches[:, :, None, None]) ** 2).sum(dim=1))
    finally:
        model.train(was_training)
    cells = _cell_indices(flat_cell, grids.shape[-1])
    image_size = tuple(_first_image(data).shape[-2:])
    return PushResult(image_index, cells, model.receptive_field().boxes(cells, image_size), moved, maps)


def _size(data) -> int:
    pair = tensor_pair("data", data)
    return len(pair[0]) if pair is not None else len(data)


def _first_image(data) -> torch.Tensor:
    pair = tensor_pair("data", data)
    return pair[0][0] if pair is not None else data[0][0]


class NearestPatches(NamedTuple):
    """The k images whose nearest patch is closest to each prototype (one patch per image).

    Attributes:
        image_index: (M, k) indices in the data, nearest first.
        cells: (M, k, 2) (row, column) of each image's nearest patch.
        distances: (M, k) its squared distance to the prototype.
        labels: (M, k) the images' labels.
    """

    image_index: torch.Tensor
    cells: torch.Tensor
    distances: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def nearest_patches(model: ProtoPNet, data, *, k: int = 5, batch_size: int = 256,
                    device: torch.device | None = None) -> NearestPatches:
    """For each prototype, the k images of ``data`` with the closest patches, over all classes.

    One pass in eval mode: per batch the distances (B, M, h, w), their minimum per image, and a
    running top-k per prototype.

    Args:
        model: the ProtoPNet.
        data: (X, y) tensors or a Dataset of (image, label), with at least k images.
        k: images per prototype.
        batch_size: images per batch.
        device: where to compute; the model's device by default.

    Returns:
        a :class:`NearestPatches`.
    """
    model = _check_model(model)
    k = check_int("k", k, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    size = _size(data)
    if size < k:
        raise ValueError(f"k must be at most the number of images ({size}), got {k}")
    device = device or model.prototypes.device
    model.to(device)
    was_training = model.training
    model.eval()
    num = model.num_prototypes
    empty_long = torch.empty(num, 0, dtype=torch.long, device=device)
    distances = torch.empty(num, 0, dtype=model.prototypes.dtype, device=device)
    image_index, flat_cell, labels = empty_long, empty_long, empty_long
    start, width = 0, 1
    try:
        for X, y in iterate_batches("data", data, batch_size, device=device):
            d = model.distances(model.latent(X))                                   # (B, M, h, w)
            width = d.shape[-1]
            value, cell = d.flatten(2).min(dim=2)                                  # (B, M)
            index = torch.arange(start, start + len(y), device=device)
            distances = torch.cat([distances, value.T], dim=1)
            image_index = torch.cat([image_index, index.expand(num, -1)], dim=1)
            flat_cell = torch.cat([flat_cell, cell.T], dim=1)
            labels = torch.cat([labels, y.expand(num, -1)], dim=1)
            distances, keep = distances.topk(min(k, distances.shape[1]), dim=1, largest=False)
            image_index, flat_cell, labels = (t.gather(1, keep) for t in (image_index, flat_cell, labels))
            start += len(y)
    finally:
        model.train(was_training)
    return NearestPatches(image_index, _cell_indices(flat_cell, width), distances, labels)


@torch.no_grad()
def prune_prototypes(model: ProtoPNet, data, *, k: int = 6, min_own: int = 3, batch_size: int = 256,
                     device: torch.device | None = None) -> torch.Tensor:
    """Remove the prototypes whose nearest patches mostly come from other classes (Chen et al. 2019).

    A prototype goes when fewer than ``min_own`` of the k images nearest to it
    (:func:`nearest_patches`) are of its class; a class that would lose all its prototypes keeps the
    one with the most images of its class among its k nearest.

    Args:
        model: the ProtoPNet; pruned in place (:meth:`ProtoPNet.keep_prototypes`).
        data: (X, y) tensors or a Dataset of (image, label), usually the training set.
        k: nearest images per prototype.
        min_own: how many of them must be of the prototype's class, in [1, k].
        batch_size, device: as for :func:`nearest_patches`.

    Returns:
        (M,) bool, which of the former prototypes were kept.
    """
    model = _check_model(model)
    k = check_int("k", k, minimum=1)
    min_own = check_int("min_own", min_own, minimum=1, maximum=k)
    nearest = nearest_patches(model, data, k=k, batch_size=batch_size, device=device)
    own = (nearest.labels == model.prototype_classes[:, None]).sum(dim=1)    # (M,)
    keep = own >= min_own
    for label in range(model.num_classes):   # a loop over classes, not data: C small steps at most
        members = (model.prototype_classes == label).nonzero().flatten()
        if not keep[members].any():
            keep[members[own[members].argmax()]] = True
    model.keep_prototypes(keep)
    return keep


class PrototypeExplanation(NamedTuple):
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
def explain_prediction(model: ProtoPNet, x: torch.Tensor, *, target: torch.Tensor | None = None,
                       top: int = 3) -> PrototypeExplanation:
    """Explain the logits of images x by their prototypes: "this (patch) looks like that (prototype)".

    The source patch of each prototype is in the :class:`PushResult` of the last push, at
    the indices ``prototypes``.

    Args:
        model: the ProtoPNet (evaluated in eval mode; its mode is restored).
        x: images (B, C_in, H, W).
        target: (B,) classes to explain; the predicted classes when ``None``.
        top: how many prototypes to list per image, at most M.

    Returns:
        a :class:`PrototypeExplanation` on x's device.
    """
    model = _check_model(model)
    top = check_int("top", top, minimum=1, maximum=model.num_prototypes)
    check_tensor("x", x, ndim=4, floating=True)
    was_training = model.training
    model.eval()
    try:
        out = model.explain(x.to(model.prototypes.device))
    finally:
        model.train(was_training)
    if target is None:
        target = out.logits.argmax(dim=1)
    check_tensor("target", target, ndim=1, integral=True)
    if target.shape[0] != x.shape[0] or target.min() < 0 or target.max() >= model.num_classes:
        raise ValueError(f"target must hold {x.shape[0]} classes in [0, {model.num_classes}), got {target.tolist()}")
    target = target.to(out.logits.device)
    weights_all = model.last_layer.weight[target]                                   # (B, M)
    contributions = out.similarities * weights_all
    _, prototypes = contributions.topk(top, dim=1)
    rows = torch.arange(x.shape[0], device=prototypes.device)[:, None]
    distances = out.distances[rows, prototypes]                                      # (B, top, h, w)
    cells = _cell_indices(distances.flatten(2).argmin(dim=2), distances.shape[-1])
    explanation = PrototypeExplanation(
        out.logits, target, contributions, prototypes, out.similarities.gather(1, prototypes),
        weights_all.gather(1, prototypes), cells, model.receptive_field().boxes(cells, tuple(x.shape[-2:])),
        model.similarity(distances))
    return PrototypeExplanation(*(value.to(x.device) for value in explanation))


def patch_parts(part_masks: torch.Tensor, field: ReceptiveField, grid_size: tuple[int, int], *,
                min_share: float = 0.25) -> torch.Tensor:
    """The part each latent cell stands for: the part that covers most of the cell's footprint.

    A cell's footprint is the jump x jump block of pixels centred on its receptive field's centre;
    footprints tile the image. A cell gets part p when p covers the largest share of its footprint
    and at least ``min_share`` of it, else -1 (background or a non-part region such as the body).

    Args:
        part_masks: (N, P, H, W) bool, one mask per part.
        field: the backbone's :class:`~xnn_lab.models.protopnet.ReceptiveField`.
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
        nearest: the :class:`NearestPatches` they came from.
    """

    purity: torch.Tensor
    part: torch.Tensor
    parts: torch.Tensor
    nearest: NearestPatches


def part_purity(model: ProtoPNet, data, part_masks: torch.Tensor, *, k: int = 10, min_share: float = 0.25,
                batch_size: int = 256, device: torch.device | None = None) -> PartPurity:
    """How consistently each prototype's k nearest patches (one per image) fall on one part.

    Args:
        model: the ProtoPNet.
        data: (X, y) tensors or a Dataset of (image, label), e.g. a held-out split.
        part_masks: (N, P, H, W) bool part masks of ``data``'s images.
        k: nearest images per prototype.
        min_share: passed to :func:`patch_parts`.
        batch_size, device: as for :func:`nearest_patches`.

    Returns:
        a :class:`PartPurity`.
    """
    model = _check_model(model)
    check_tensor("part_masks", part_masks, ndim=4)
    nearest = nearest_patches(model, data, k=k, batch_size=batch_size, device=device)
    image = _first_image(data)
    if part_masks.shape[-2:] != image.shape[-2:] or part_masks.shape[0] != _size(data):
        raise ValueError(f"part_masks must have shape ({_size(data)}, P, {image.shape[-2]}, {image.shape[-1]}), "
                         f"got {tuple(part_masks.shape)}")
    was_training = model.training
    try:
        with torch.no_grad():   # in eval mode: a batch of one must not move batch-norm statistics
            grid_size = tuple(model.eval().latent(image[None].to(model.prototypes.device)).shape[-2:])
    finally:
        model.train(was_training)
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
