"""Measures of explanations against ground truth."""

from __future__ import annotations

import torch

from xnn_lab._checks import check_tensor


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
