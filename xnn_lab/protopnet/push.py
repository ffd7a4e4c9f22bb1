r"""Where ProtoPNet's prototypes come from and what they are near: push, nearest patches, pruning.

Everything runs batched over the data: the distances of all prototypes to all patches of a batch
come in one call, and running minima (or top-k) per prototype are kept as tensors, so there is no
Python loop over prototypes or images. Each function computes on the model's own device, in eval
mode, and gives the model back its modes and flags.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from xnn_lab._core.checks import check_int, check_labels
from xnn_lab._core.state import model_device, model_state
from xnn_lab._core.training import iterate_batches, tensor_pair
from xnn_lab.protopnet.model import ProtoPNet, _check_model


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
def push_prototypes(model: ProtoPNet, data, *, batch_size: int = 256) -> PushResult:
    """Replace each prototype by the nearest latent patch of a training image of its own class.

    One pass over ``data`` in eval mode: for each batch, the distances of all prototypes to all
    patches (B, M, h, w), those of images of other classes set to infinity, and a running minimum
    per prototype with the patch vector, image, cell and latent grid where it was reached. The
    prototypes are then set to those patch vectors, exactly.

    Args:
        model: the ProtoPNet; its prototypes are overwritten (the purpose of the push), on its own
            device; its modes and flags are given back.
        data: (X, y) tensors or a Dataset of (image, label) holding every class; indices in the
            result refer to its order.
        batch_size: images per batch.

    Returns:
        a :class:`PushResult`.
    """
    model = _check_model(model)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    tensor_pair("data", data)
    device = model_device(model)
    num, dim, dtype = model.num_prototypes, model.prototypes.shape[1], model.prototypes.dtype
    best = torch.full((num,), float("inf"), dtype=dtype, device=device)
    patches = torch.zeros(num, dim, dtype=dtype, device=device)
    image_index = torch.full((num,), -1, dtype=torch.long, device=device)
    flat_cell = torch.zeros(num, dtype=torch.long, device=device)
    grids = None
    start = 0
    with model_state(model):
        for X, y in iterate_batches("data", data, batch_size, device=device):
            check_labels("data's y", y, model.num_classes)
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
def nearest_patches(model: ProtoPNet, data, *, k: int = 5, batch_size: int = 256) -> NearestPatches:
    """For each prototype, the k images of ``data`` with the closest patches, over all classes.

    One pass in eval mode: per batch the distances (B, M, h, w), their minimum per image, and a
    running top-k per prototype.

    Args:
        model: the ProtoPNet; computed on its device, its modes and flags given back.
        data: (X, y) tensors or a Dataset of (image, label), with at least k images.
        k: images per prototype.
        batch_size: images per batch.

    Returns:
        a :class:`NearestPatches`.
    """
    model = _check_model(model)
    k = check_int("k", k, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    size = _size(data)
    if size < k:
        raise ValueError(f"k must be at most the number of images ({size}), got {k}")
    device = model_device(model)
    num = model.num_prototypes
    empty_long = torch.empty(num, 0, dtype=torch.long, device=device)
    distances = torch.empty(num, 0, dtype=model.prototypes.dtype, device=device)
    image_index, flat_cell, labels = empty_long, empty_long, empty_long
    start, width = 0, 1
    with model_state(model):
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
    return NearestPatches(image_index, _cell_indices(flat_cell, width), distances, labels)


@torch.no_grad()
def prune_prototypes(model: ProtoPNet, data, *, k: int = 6, min_own: int = 3,
                     batch_size: int = 256) -> torch.Tensor:
    """Remove the prototypes whose nearest patches mostly come from other classes (Chen et al. 2019).

    A prototype goes when fewer than ``min_own`` of the k images nearest to it
    (:func:`nearest_patches`) are of its class; a class that would lose all its prototypes keeps the
    one with the most images of its class among its k nearest.

    Args:
        model: the ProtoPNet; pruned in place (:meth:`ProtoPNet.keep_prototypes`, the purpose of
            this function), its modes and flags given back.
        data: (X, y) tensors or a Dataset of (image, label), usually the training set.
        k: nearest images per prototype.
        min_own: how many of them must be of the prototype's class, in [1, k].
        batch_size: as for :func:`nearest_patches`.

    Returns:
        (M,) bool, which of the former prototypes were kept.
    """
    model = _check_model(model)
    k = check_int("k", k, minimum=1)
    min_own = check_int("min_own", min_own, minimum=1, maximum=k)
    nearest = nearest_patches(model, data, k=k, batch_size=batch_size)
    own = (nearest.labels == model.prototype_classes[:, None]).sum(dim=1)    # (M,)
    keep = own >= min_own
    for label in range(model.num_classes):   # a loop over classes, not data: C small steps at most
        members = (model.prototype_classes == label).nonzero().flatten()
        if not keep[members].any():
            keep[members[own[members].argmax()]] = True
    model.keep_prototypes(keep)
    return keep
