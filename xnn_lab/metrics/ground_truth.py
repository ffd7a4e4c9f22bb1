"""Saliency maps scored against ground truth: the mass on the object and the pointing games."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from xnn_lab._core.checks import check_finite, check_int, check_tensor
from xnn_lab.cam import normalize


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
    check_finite("attributions", attributions)
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
    check_finite("maps", maps)
    check_tensor("masks", masks, ndim=3)
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor, got dtype {masks.dtype}")
    if masks.shape != maps.shape:
        raise ValueError(f"masks must have shape {tuple(maps.shape)} to match maps, got {tuple(masks.shape)}")
    empty = (~masks.flatten(1).any(1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"masks must each hold at least one pixel (a map cannot point at nothing), got an "
                         f"empty mask for image {int(empty[0])}")


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
        masks: (B, H, W) bool ground-truth regions, each non-empty.
        box: measure against each mask's bounding box instead of the mask.

    Returns:
        (B,) float in [0, 1], on the maps' device.
    """
    _check_maps_and_masks(maps, masks)
    if not isinstance(box, bool):
        raise TypeError(f"box must be a bool, got {box!r} ({type(box).__name__})")
    region = masks.to(maps.device)
    if box:
        rows, cols = region.any(2), region.any(1)  # (B, H), (B, W)
        region = _span(rows)[:, :, None] & _span(cols)[:, None, :]
    return mass_in_mask(normalize(maps), region)


def _span(occupied: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True from the first to the last True of each row (inclusive)."""
    index = torch.arange(occupied.shape[1], device=occupied.device)
    first = torch.where(occupied, index, occupied.shape[1]).amin(1, keepdim=True)
    last = torch.where(occupied, index, -1).amax(1, keepdim=True)
    return (index >= first) & (index <= last)
