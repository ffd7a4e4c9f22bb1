"""xnn_lab: the companion package of the xnn-lab course on explainable neural networks.

The top level holds what every chapter uses: the device, quick mode and seeding, and the one
training loop. Each method lives in its own subpackage, named as the book names it
(``xnn_lab.cam``, ``xnn_lab.protopnet``, ``xnn_lab.senn``, ...).
"""

from xnn_lab._core.runtime import device, is_quick, seed_everything
from xnn_lab._core.training import History, Step, evaluate, fit, predict

__version__ = "0.1.0"
__all__ = ["History", "Step", "device", "evaluate", "fit", "is_quick", "predict", "seed_everything",
           "__version__"]
