"""Grad-CAM and Grad-CAM++: channel weights from the gradients of the class score (chapter 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xnn_lab.cam.base import BaseCAM


class GradCAM(BaseCAM):
    r"""Grad-CAM (Selvaraju et al., 2017): channel weights are the spatially averaged gradients.

    .. math:: \alpha_k^c = \frac{1}{Z} \sum_i \sum_j \frac{\partial y^c}{\partial A^k_{ij}},
        \qquad L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big),

    with :math:`Z = h w`. See :class:`BaseCAM` for the arguments and the call.
    """

    def channel_weights(self, activations, gradients, targets):
        return gradients.mean(dim=(-2, -1)).transpose(0, 1)


class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighed pixel by pixel.

    With :math:`Y^c = \exp(S^c)` and a piecewise-linear network after the layer, the paper's
    closed form (its eq. 19) is

    .. math:: \alpha^{kc}_{ij} = \frac{(g^{kc}_{ij})^2}
        {2 (g^{kc}_{ij})^2 + \sum_{a,b} A^k_{ab} (g^{kc}_{ij})^3},
        \qquad w^c_k = \sum_{i,j} \alpha^{kc}_{ij}\, \mathrm{ReLU}(g^{kc}_{ij}),

    where :math:`g^{kc}_{ij} = \partial S^c / \partial A^k_{ij}` and :math:`\alpha = 0` where
    the denominator is 0. The paper's weights carry one more factor :math:`\exp(S^c)`
    (:math:`\partial Y^c / \partial A = \exp(S^c)\, g`); it is the same for every pixel and
    channel of a map, so it changes the map's scale only, and it overflows float32 for scores
    above about 88, so it is left out. See :class:`BaseCAM` for the arguments and the call.
    """

    def channel_weights(self, activations, gradients, targets):
        squared = gradients.pow(2)
        denominator = 2 * squared + activations.sum(dim=(-2, -1), keepdim=True) * squared * gradients
        alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator, 1.0),
                            torch.zeros_like(squared))
        return (alpha * F.relu(gradients)).sum(dim=(-2, -1)).transpose(0, 1)
