"""Model-agnostic tools that treat a network as a black box (chapter 1): ICE curves and partial
dependence, and captum's attribution methods (occlusion, LIME, KernelSHAP, gradients, ...) as
saliency explainers through one adapter, with the square-cell feature masks they take on images."""

from xnn_lab.agnostic.attribution import CaptumExplainer, grid_segments
from xnn_lab.agnostic.dependence import ice_curves, partial_dependence

__all__ = ["CaptumExplainer", "grid_segments", "ice_curves", "partial_dependence"]
