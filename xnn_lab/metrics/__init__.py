"""Measures of explanations (chapters 3 and 6): against ground truth (mass in mask, pointing games),
against the model (deletion and insertion, ROAD's remove-and-debias), sanity checks (parameter randomisation), stability
(local Lipschitz estimates), and the baselines every method must beat.

Each takes a saliency explainer, ``explainer(x, target=None) -> (B, H, W)``, or its maps, as they are.
"""

from xnn_lab.metrics.baselines import centre_maps, random_maps
from xnn_lab.metrics.ground_truth import energy_pointing_game, mass_in_mask, pointing_game
from xnn_lab.metrics.perturbation import (BASELINES, area_under_curve, blur_images, deletion_curve, insertion_curve,
                                          saliency_ranks)
from xnn_lab.metrics.road import noisy_linear_imputation, road_curve
from xnn_lab.metrics.sanity import SanityCheck, randomization_sanity_check, rank_correlation
from xnn_lab.metrics.stability import LipschitzEstimate, local_lipschitz

__all__ = ["BASELINES", "LipschitzEstimate", "SanityCheck", "area_under_curve", "blur_images", "centre_maps",
           "deletion_curve", "energy_pointing_game", "insertion_curve", "local_lipschitz", "mass_in_mask",
           "noisy_linear_imputation", "pointing_game", "random_maps", "randomization_sanity_check",
           "rank_correlation", "road_curve", "saliency_ranks"]
