"""Device choice, seeding and quick mode: the runtime switches every chapter uses."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from xnn_lab._core.checks import check_int

QUICK_ENV = "XNN_LAB_QUICK"


def device() -> torch.device:
    """The device to compute on: CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_quick() -> bool:
    """Whether quick mode is on (``XNN_LAB_QUICK`` set to anything but ``""``, ``0``, ``false``, ``no``).

    Chapters and recipes shrink their budgets in quick mode; the tests set it.
    """
    return os.environ.get(QUICK_ENV, "").strip().lower() not in {"", "0", "false", "no"}


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) generators.

    Args:
        seed: a non-negative integer.

    Returns:
        a fresh ``torch.Generator`` seeded with ``seed``, for code that takes one.
    """
    check_int("seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
