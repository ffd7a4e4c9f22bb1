"""Seeded building blocks for questions' trials: tensors and freshly initialised modules."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def module(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with its initial weights drawn from ``seed``, in float64 and eval mode.

    The global RNG is forked, so building a trial does not change anyone else's random stream.
    Float64 keeps the student's and the reference's rounding far below the comparison's tolerance.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().double().eval()


def randint(g: torch.Generator, low: int, high: int) -> int:
    """A Python int in [low, high)."""
    return int(torch.randint(low, high, (), generator=g))
