r"""Training a SENN: the robustness loss, the slide's loss
:math:`\mathcal{L}_y(f(x), y) + \lambda \mathcal{L}_\theta(f) + \xi \mathcal{L}_h(x, \hat{x})`, and a
training loop on ``xnn_lab.train``'s batching."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap
from tqdm.auto import tqdm

from xnn_lab._checks import check_float, check_int, check_tensor
from xnn_lab._runtime import device as default_device
from xnn_lab.models.senn import SENN
from xnn_lab.train import History, iterate_batches, tensor_pair


def _check_model(model) -> SENN:
    if not isinstance(model, SENN):
        raise TypeError(f"model must be an xnn_lab.models.SENN, got {type(model).__name__}")
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


def robustness_residual(model: SENN, x: torch.Tensor) -> torch.Tensor:
    r"""The residual :math:`\nabla_x f(x) - \theta(x)^\top J_x h(x)` of a SENN at each input.

    Zero where f is locally linear in the concepts with constant relevances; its norm is the
    robustness loss :math:`\mathcal{L}_\theta`. Computed batched with ``torch.func`` (vmap of
    jacrev), differentiable in the model's parameters.

    Args:
        model: the SENN.
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
        model: the SENN.
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


def _loss(model: SENN, x: torch.Tensor, y: torch.Tensor, lam: float, xi: float,
          sparsity: float) -> tuple[SENNLoss, torch.Tensor]:
    """The loss terms and the logits (B, C) they were computed from."""
    out = model.explain(x)
    classification = F.cross_entropy(out.logits, y)
    if model.learns_concepts:
        reconstruction = F.mse_loss(out.reconstruction, x)
        concept_l1 = out.concepts.abs().mean()
    else:
        reconstruction = concept_l1 = torch.zeros((), device=x.device, dtype=out.logits.dtype)
    total = classification + xi * reconstruction + sparsity * concept_l1
    robustness = None
    if lam > 0:
        robustness = _residual(model, x, out.concepts).flatten(1).norm(dim=1).mean()
        total = total + lam * robustness
    return SENNLoss(total, classification, robustness, reconstruction, concept_l1), out.logits


def senn_loss(model: SENN, x: torch.Tensor, y: torch.Tensor, lam: float, xi: float,
              sparsity: float) -> SENNLoss:
    r"""The SENN loss :math:`\mathcal{L}_y(f(x), y) + \lambda \mathcal{L}_\theta(f) + \xi \mathcal{L}_h(x, \hat{x})`
    plus a sparsity penalty on the concepts, term by term.

    Args:
        model: the SENN (in train or eval mode; the mode is left unchanged).
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
    return _loss(model, x, y, *_check_weights(lam, xi, sparsity))[0]


@dataclass
class SENNHistory(History):
    """Per-epoch curves of a ``fit_senn`` run: ``History``'s (train_loss is the total loss) plus each
    term's mean over the training batches; ``robustness`` is NaN where ``lam`` is 0 (not computed)."""

    classification: list[float] = field(default_factory=list)
    robustness: list[float] = field(default_factory=list)
    reconstruction: list[float] = field(default_factory=list)
    sparsity: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate_senn(model: SENN, data, *, lam: float = 0.0, xi: float = 0.0, sparsity: float = 0.0,
                  batch_size: int = 512) -> dict[str, float]:
    """Accuracy and every loss term of a SENN on ``data``, in eval mode, in batches.

    The robustness term is always measured here, whatever ``lam``.

    Args:
        model: the SENN; its mode is restored afterwards.
        data: (X, y) tensors or a Dataset of (x, y), X of shape (N, F).
        lam, xi, sparsity: the weights with which ``loss`` sums the terms, as in ``senn_loss``.
        batch_size: samples per batch.

    Returns:
        ``{"accuracy", "loss", "classification", "robustness", "reconstruction", "sparsity"}``,
        each a float averaged over the samples.
    """
    model = _check_model(model)
    lam, xi, sparsity = _check_weights(lam, xi, sparsity)
    check_int("batch_size", batch_size, minimum=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(("accuracy", "loss", "classification", "robustness", "reconstruction", "sparsity"), 0.0)
    count = 0
    try:
        for X, y in iterate_batches("data", data, batch_size, device=device):
            terms, logits = _loss(model, X, y, 0.0, xi, sparsity)  # robustness measured below, whatever lam
            robustness = robustness_loss(model, X)
            values = {"accuracy": (logits.argmax(1) == y).float().mean(), "loss": terms.total + lam * robustness,
                      "classification": terms.classification, "robustness": robustness,
                      "reconstruction": terms.reconstruction, "sparsity": terms.sparsity}
            for key, value in values.items():
                sums[key] += float(value) * len(y)
            count += len(y)
    finally:
        model.train(was_training)
    return {key: value / count for key, value in sums.items()}


def fit_senn(model: SENN, train, val=None, *, lam: float = 0.0, xi: float = 1.0, sparsity: float = 1e-3,
             epochs: int = 30, lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0,
             seed: int = 0, device: torch.device | None = None, progress: bool = True) -> SENNHistory:
    """Train a SENN with Adam on the SENN loss (see ``senn_loss``) for a fixed number of epochs.

    Args:
        model: the SENN; moved to ``device`` and left there, in eval mode.
        train: (X, y) tensors or a Dataset of (x, y), X of shape (N, F).
        val: optional validation data in the same form, measured after every epoch.
        lam, xi, sparsity: the loss weights, as in ``senn_loss``.
        epochs: the number of epochs.
        lr, weight_decay: Adam's settings.
        batch_size: samples per step.
        seed: seeds the shuffling order and torch's global generator.
        device: where to train; ``xnn_lab.device()`` by default.
        progress: show a tqdm bar over epochs.

    Returns:
        the ``SENNHistory``: total loss, accuracy and each term per epoch (val loss and accuracy
        with ``val``).
    """
    model = _check_model(model)
    lam, xi, sparsity = _check_weights(lam, xi, sparsity)
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    check_float("lr", lr, minimum=0.0, open_min=True)
    check_float("weight_decay", weight_decay, minimum=0.0)
    tensor_pair("train", train)
    if val is not None:
        tensor_pair("val", val)

    device = device or default_device()
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    history = SENNHistory()
    keys = ("total", "classification", "robustness", "reconstruction", "sparsity")
    bar = tqdm(range(epochs), desc="fit_senn", disable=not progress, leave=True)
    for _ in bar:
        model.train()
        # Running sums stay on the device: no host synchronisation per step.
        sums = {key: torch.zeros((), device=device) for key in keys + ("correct",)}
        count = 0
        for X, y in iterate_batches("train", train, batch_size, device=device, shuffle=True, generator=generator):
            terms, logits = _loss(model, X, y, lam, xi, sparsity)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            opt.step()
            for key in keys:
                value = getattr(terms, key)
                if value is not None:
                    sums[key] += value.detach() * len(y)
            sums["correct"] += (logits.detach().argmax(1) == y).sum()
            count += len(y)
        means = {key: float(value) / count for key, value in sums.items()}
        if lam == 0:
            means["robustness"] = math.nan
        history.train_loss.append(means["total"])
        history.train_acc.append(means["correct"])
        for key in keys[1:]:
            getattr(history, key).append(means[key])
        postfix = {"loss": f"{history.train_loss[-1]:.3f}"}
        if val is not None:
            scores = evaluate_senn(model, val, lam=lam, xi=xi, sparsity=sparsity, batch_size=max(batch_size, 256))
            history.val_loss.append(scores["loss"])
            history.val_acc.append(scores["accuracy"])
            postfix.update(val_acc=f"{scores['accuracy']:.3f}")
        bar.set_postfix(postfix)
    bar.close()
    model.eval()
    return history
