"""xnn_lab: the companion package of the xnn-lab course on explainable neural networks."""

from xnn_lab._runtime import device, is_quick, seed_everything

__version__ = "0.1.0"
__all__ = ["device", "is_quick", "seed_everything", "__version__"]
