"""Class activation maps (chapters 2 and 3): CAM, Grad-CAM and Grad-CAM++ over one base class.

Each explainer is a saliency explainer, ``explainer(x, target=None) -> (B, H, W)`` maps, that the
metrics, sanity checks, stability estimates and widgets take as it is; ``explainer.explain(x)``
also returns the logits and the classes explained (:class:`CAMExplanation`).
"""

from xnn_lab.cam.base import BaseCAM, CAMExplanation, normalize
from xnn_lab.cam.gap import CAM, find_gap_head, retrain_gap_head
from xnn_lab.cam.catalog import METHODS, cam_explainers
from xnn_lab.cam.gradients import GradCAM, GradCAMPlusPlus

__all__ = ["CAM", "METHODS", "BaseCAM", "CAMExplanation", "GradCAM", "GradCAMPlusPlus", "cam_explainers",
           "find_gap_head", "normalize", "retrain_gap_head"]
