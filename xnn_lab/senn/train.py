"""Training and evaluating a SENN: the SENN loss as an objective of the package's one training loop."""

from __future__ import annotations

import math

import torch

from xnn_lab._core.checks import check_int
from xnn_lab._core.training import History, Objective, Step, evaluate, fit
from xnn_lab.senn.losses import _check_model, _check_weights, _loss
from xnn_lab.senn.model import SENN

TERMS = ("classification", "robustness", "reconstruction", "sparsity")


def _objective(model: SENN, lam: float, xi: float, sparsity: float, *,
               measure_robustness: bool = False) -> Objective:
    """``objective(X, y) -> Step``: the total SENN loss, the logits and each term by name."""

    def objective(X: torch.Tensor, y: torch.Tensor) -> Step:
        terms, logits = _loss(model, X, y, lam, xi, sparsity, measure_robustness=measure_robustness)
        values = {name: getattr(terms, name) for name in TERMS}
        if values["robustness"] is None:
            # Not computed (lam = 0): NaN rather than None, so that the history still has the curve.
            values["robustness"] = torch.full((), math.nan, device=logits.device)
        return Step(terms.total, logits, values)

    return objective


def evaluate_senn(model: SENN, data, *, lam: float = 0.0, xi: float = 0.0, sparsity: float = 0.0,
                  batch_size: int = 512) -> dict[str, float]:
    """Accuracy and every loss term of a SENN on ``data``, in eval mode, in batches.

    The robustness term is always measured here, whatever ``lam``. The model is not moved: the
    batches go to its device.

    Args:
        model: the SENN; each module's train/eval flag is restored afterwards.
        data: (X, y) tensors or a Dataset of (x, y), X of shape (N, F).
        lam, xi, sparsity: the weights with which ``loss`` sums the terms, as in ``senn_loss``.
        batch_size: samples per batch.

    Returns:
        ``{"loss", "accuracy", "classification", "robustness", "reconstruction", "sparsity"}``,
        each a float averaged over the samples.
    """
    model = _check_model(model)
    lam, xi, sparsity = _check_weights(lam, xi, sparsity)
    check_int("batch_size", batch_size, minimum=1)
    return evaluate(model, data, objective=_objective(model, lam, xi, sparsity, measure_robustness=True),
                    batch_size=batch_size)


def fit_senn(model: SENN, train, val=None, *, lam: float = 0.0, xi: float = 1.0, sparsity: float = 1e-3,
             epochs: int = 30, lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0,
             patience: int | None = None, restore_best: bool = True, seed: int = 0,
             device: torch.device | None = None, progress: bool = False) -> History:
    """Train a SENN with Adam on the SENN loss (see ``senn_loss``), with ``xnn_lab.fit``.

    With ``val``, the same loss (robustness included only where ``lam`` > 0) is measured on it in
    eval mode after every epoch, and, as in ``fit``, the weights of the epoch with the lowest
    validation loss are kept (``restore_best``), and ``patience`` may stop the run early.

    Args:
        model: the SENN; moved to ``device`` and left there, in eval mode (its parameters'
            ``requires_grad`` flags as they were: only those that require grad are trained).
        train: (X, y) tensors or a Dataset of (x, y), X of shape (N, F).
        val: optional validation data in the same form.
        lam, xi, sparsity: the loss weights, as in ``senn_loss``.
        epochs: the most epochs to run.
        lr, weight_decay: Adam's settings.
        batch_size: samples per step.
        patience: stop when the validation loss has not improved for this many epochs (needs val).
        restore_best: with ``val``, load the weights of the best epoch at the end.
        seed: seeds the shuffling order and every random draw of the run (torch's global
            generator is forked: the caller's random stream is left as it was).
        device: where to train; ``xnn_lab.device()`` by default.
        progress: show a tqdm bar over epochs.

    Returns:
        the ``History``: total loss and accuracy per epoch, and each term's mean over the
        training batches, ``history["classification"]``, ``["robustness"]`` (NaN where ``lam``
        is 0: not computed), ``["reconstruction"]`` and ``["sparsity"]``; with ``val``, the
        same on it (``val_loss``, ``val_acc``, ``val_terms``).
    """
    model = _check_model(model)
    lam, xi, sparsity = _check_weights(lam, xi, sparsity)
    return fit(model, train, val, objective=_objective(model, lam, xi, sparsity), epochs=epochs, lr=lr,
               batch_size=batch_size, weight_decay=weight_decay, optimizer="adam", patience=patience,
               restore_best=restore_best, seed=seed, device=device, progress=progress, desc="fit_senn")
