r"""The SENN loss: the robustness loss :math:`\mathcal{L}_\theta` and the slide's loss
:math:`\mathcal{L}_y(f(x), y) + \lambda \mathcal{L}_\theta(f) + \xi \mathcal{L}_h(x, \hat{x})`, term by term."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from xnn_lab._core.checks import check_float, check_labels, check_tensor
from xnn_lab.senn.model import SENN


def _check_model(model) -> SENN:
    if not isinstance(model, SENN):
        raise TypeError(f"model must be an xnn_lab.senn.SENN, got {type(model).__name__}")
    return model


def _residual(model: SENN, x: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    # By the product rule, grad_x f_c = sum_i theta_ic grad_x h_i + sum_i h_i grad_x theta_ic, so the
    # residual grad_x f - theta^T J_x h is sum_i h_i(x) grad_x theta_ic(x): the Jacobian in x of
    # theta(x)^T h with h held at h(x). That is C vector-Jacobian products per sample through the
    # parametrizer only (none through the conceptizer), batched over the samples by vmap; h keeps
    # its graph, so the loss still trains the conceptizer.
    def theta_times_h(x_one: torch.Tensor, h_one: torch.Tensor) -> torch.Tensor:
        return model.relevances(x_one[None])[0].T @ h_one

    return vmap(jacrev(theta_times_h))(x, concepts)


def _robustness(model: SENN, x: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """The batch mean of the residual's Frobenius norm, from concepts h(x) already computed."""
    return _residual(model, x, concepts).flatten(1).norm(dim=1).mean()


def robustness_residual(model: SENN, x: torch.Tensor) -> torch.Tensor:
    r"""The residual :math:`\nabla_x f(x) - \theta(x)^\top J_x h(x)` of a SENN at each input.

    Zero where f is locally linear in the concepts with constant relevances; its norm is the
    robustness loss :math:`\mathcal{L}_\theta`. Computed batched with ``torch.func`` (vmap of
    jacrev), differentiable in the model's parameters.

    Args:
        model: the SENN; its modes and flags are left as they are.
        x: inputs, shape (B, F).

    Returns:
        the residual, shape (B, C, F), on x's device.
    """
    model = _check_model(model)
    model._check_input("x", x)
    return _residual(model, x, model.concepts(x))


def robustness_loss(model: SENN, x: torch.Tensor) -> torch.Tensor:
    r"""The robustness loss :math:`\mathcal{L}_\theta = \lVert \nabla_x f(x) - \theta(x)^\top J_x h(x) \rVert`.

    The Frobenius norm of each input's (C, F) residual, averaged over the batch.

    Args:
        model: the SENN; its modes and flags are left as they are.
        x: inputs, shape (B, F).

    Returns:
        a scalar tensor, differentiable in the model's parameters.
    """
    return robustness_residual(model, x).flatten(1).norm(dim=1).mean()


class SENNLoss(NamedTuple):
    r"""The terms of the SENN loss on one batch, each a scalar tensor.

    Attributes:
        total: :math:`\mathcal{L}_y + \lambda \mathcal{L}_\theta + \xi \mathcal{L}_h + s \cdot \text{sparsity}`.
        classification: :math:`\mathcal{L}_y`, the mean cross-entropy of f(x) and y.
        robustness: :math:`\mathcal{L}_\theta` (see :func:`robustness_loss`), or ``None`` when
            ``lam`` is 0: it is the costly term, and a plain step does not compute it.
        reconstruction: :math:`\mathcal{L}_h`, the mean squared error of x_hat and x (0 when the
            concepts are the input features: nothing to reconstruct).
        sparsity: the mean absolute concept activation, mean of :math:`|h_i(x)|` (0 when the
            concepts are the input features: nothing to make sparse).
    """

    total: torch.Tensor
    classification: torch.Tensor
    robustness: torch.Tensor | None
    reconstruction: torch.Tensor
    sparsity: torch.Tensor


def _check_weights(lam, xi, sparsity) -> tuple[float, float, float]:
    return (check_float("lam", lam, minimum=0.0), check_float("xi", xi, minimum=0.0),
            check_float("sparsity", sparsity, minimum=0.0))


def _loss(model: SENN, x: torch.Tensor, y: torch.Tensor, lam: float, xi: float, sparsity: float,
          *, measure_robustness: bool = False) -> tuple[SENNLoss, torch.Tensor]:
    """The loss terms and the logits (B, C) they were computed from.

    With ``measure_robustness`` the robustness term is computed even where ``lam`` is 0 (where
    it then does not enter the total).
    """
    # The loss needs the whole explanation, not just the logits: the concepts for the sparsity
    # and the robustness terms, the reconstruction for L_h. One pass of explain gives them all.
    out = model.explain(x)
    classification = F.cross_entropy(out.logits, y)
    if model.learns_concepts:
        reconstruction = F.mse_loss(out.reconstruction, x)
        concept_l1 = out.concepts.abs().mean()
    else:
        reconstruction = concept_l1 = torch.zeros((), device=x.device, dtype=out.logits.dtype)
    total = classification + xi * reconstruction + sparsity * concept_l1
    robustness = None
    if lam > 0 or measure_robustness:
        robustness = _robustness(model, x, out.concepts)
        total = total + lam * robustness
    return SENNLoss(total, classification, robustness, reconstruction, concept_l1), out.logits


def senn_loss(model: SENN, x: torch.Tensor, y: torch.Tensor, lam: float, xi: float,
              sparsity: float) -> SENNLoss:
    r"""The SENN loss :math:`\mathcal{L}_y(f(x), y) + \lambda \mathcal{L}_\theta(f) + \xi \mathcal{L}_h(x, \hat{x})`
    plus a sparsity penalty on the concepts, term by term.

    Args:
        model: the SENN (in train or eval mode; its modes and flags are left as they are).
        x: inputs, shape (B, F).
        y: class labels, shape (B,), int64.
        lam: the robustness weight :math:`\lambda \ge 0`; 0 skips computing the robustness term.
        xi: the reconstruction weight :math:`\xi \ge 0`.
        sparsity: the weight :math:`s \ge 0` of the concepts' mean absolute activation.

    Returns:
        a ``SENNLoss`` of scalar tensors; ``total`` is the one to minimise.
    """
    model = _check_model(model)
    model._check_input("x", x)
    check_tensor("y", y, ndim=1, integral=True)
    if len(y) != len(x):
        raise ValueError(f"y must hold one label per row of x ({len(x)}), got shape {tuple(y.shape)}")
    check_labels("y", y, model.num_classes)
    return _loss(model, x, y, *_check_weights(lam, xi, sparsity))[0]
