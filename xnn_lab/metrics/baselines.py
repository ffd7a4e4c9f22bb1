"""The baselines every saliency method must beat: random maps and a centre bump."""

from __future__ import annotations


import torch

from xnn_lab._core.checks import check_device, check_float, check_int


def random_maps(n: int, height: int, width: int, *, seed: int = 0,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The random baseline: (n, height, width) maps of independent uniform [0, 1) values."""
    n = check_int("n", n, minimum=1)
    device = check_device("device", device)
    height, width = check_int("height", height, minimum=1), check_int("width", width, minimum=1)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    return torch.rand(n, height, width, generator=generator).to(device)


def centre_maps(n: int, height: int, width: int, *, sigma: float = 0.25,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The centre baseline: a Gaussian bump at the image centre, the same for all n maps.

    L_ij = exp(-((i - i0)^2 / h^2 + (j - j0)^2 / w^2) / (2 sigma^2)) with (i0, j0) the centre,
    so ``sigma`` is a fraction of the image's side.

    Returns:
        (n, height, width) maps in (0, 1].
    """
    n = check_int("n", n, minimum=1)
    device = check_device("device", device)
    height, width = check_int("height", height, minimum=1), check_int("width", width, minimum=1)
    sigma = check_float("sigma", sigma, minimum=0.0, open_min=True)
    rows = (torch.arange(height, dtype=torch.float32, device=device) - (height - 1) / 2) / height
    cols = (torch.arange(width, dtype=torch.float32, device=device) - (width - 1) / 2) / width
    bump = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2))
    return bump.expand(n, height, width).clone()
