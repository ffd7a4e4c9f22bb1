"""xnn_lab: the companion package of the xnn-lab course on explainable neural networks.

The top level holds what every chapter uses: the device, quick mode and seeding, and the one
training loop. Each method lives in its own subpackage, named as the book names it
(``xnn_lab.cam``, ``xnn_lab.protopnet``, ``xnn_lab.senn``, ...).
"""

import importlib

__version__ = "0.1.0"

# Imported on first use, so that ``import xnn_lab`` (and ``xnn-lab --help``) does not load PyTorch.
_HOMES = {
    "History": "xnn_lab._core.training", "Step": "xnn_lab._core.training", "evaluate": "xnn_lab._core.training",
    "fit": "xnn_lab._core.training", "predict": "xnn_lab._core.training",
    "device": "xnn_lab._core.runtime", "is_quick": "xnn_lab._core.runtime",
    "seed_everything": "xnn_lab._core.runtime",
}
__all__ = ["History", "Step", "device", "evaluate", "fit", "is_quick", "predict", "seed_everything",
           "__version__"]


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xnn_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
