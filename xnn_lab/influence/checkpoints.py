"""TracIn (Pruthi et al., 2020): the influence of a training point as the sum, over checkpoints
saved during training, of learning rate times gradient dot products; no Hessian.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from xnn_lab._core.checks import _describe, check_float
from xnn_lab._core.state import model_state
from xnn_lab.influence._objective import LossFn, _Objective, _prepare


def _checkpoint_objectives(objective: _Objective, checkpoints, lrs) -> list[tuple[_Objective, float]]:
    """One objective per checkpoint, with its learning rate; checks names and shapes."""
    if isinstance(checkpoints, Mapping) or not isinstance(checkpoints, Sequence) or not checkpoints:
        raise TypeError(f"checkpoints must be a non-empty sequence of state dicts, got {_describe(checkpoints)}")
    rates = [lrs] * len(checkpoints) if not isinstance(lrs, Sequence) else list(lrs)
    if len(rates) != len(checkpoints):
        raise ValueError(f"lrs must be one number or one per checkpoint ({len(checkpoints)}), got {len(rates)}")
    rates = [check_float(f"lrs[{k}]", rate) for k, rate in enumerate(rates)]
    result = []
    for k, (state, rate) in enumerate(zip(checkpoints, rates)):
        if not isinstance(state, Mapping):
            raise TypeError(f"checkpoints[{k}] must be a state dict, got {_describe(state)}")
        for name, shape in zip(objective.names, objective.shapes):
            if name not in state or tuple(state[name].shape) != tuple(shape):
                got = tuple(state[name].shape) if name in state else "missing"
                raise ValueError(f"checkpoints[{k}] must hold {name!r} of shape {tuple(shape)}, got {got}")
        result.append((_Objective(objective.model, objective.loss_fn, objective.names, 0.0,
                                  objective.batch_size, state), rate))
    return result


def tracin(model: nn.Module, loss_fn: LossFn, checkpoints: Sequence[Mapping[str, torch.Tensor]], train, test,
           lrs, params=None, *, batch_size: int = 512) -> torch.Tensor:
    """TracInCP (Pruthi et al., 2020): gradient dot products summed over saved checkpoints.

    ``scores[t, i]`` is :math:`\\sum_k \\eta_k \\nabla L(z_t, \\theta_k)^\\top \\nabla L(z_i, \\theta_k)`,
    the first-order drop of the test loss that the SGD steps on :math:`z_i` caused, as in the paper and
    captum's ``TracInCP``. Positive marks a proponent, as in ``influence``, but the scale is different:
    no Hessian, no :math:`1/n`, and a sum over training rather than a removal at the end.

    Args:
        model: the architecture; the checkpoints give its parameter values (the model is not changed).
        loss_fn: ``loss_fn(output, y)`` -> per-example losses (B,).
        checkpoints: K state dicts (``model.state_dict()`` copies) saved during training.
        train: (X, y) with n examples, or a dataset.
        test: (X, y) with m examples, or a dataset.
        lrs: the learning rate :math:`\\eta_k` in use after each checkpoint: one number or K numbers.
        params: which parameters :math:`\\theta` holds (see the module docstring).
        batch_size: examples per vmap call.

    Returns:
        (m, n) on test X's device.
    """
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, 0.0, batch_size, {"train": train, "test": test})
        _, (X, y) = pairs["train"]
        test_original, (X_test, y_test) = pairs["test"]
        scores = 0.0
        for at_k, rate in _checkpoint_objectives(objective, checkpoints, lrs):
            G_test = at_k.gradients(X_test, y_test)
            scores = scores + rate * torch.cat([G_test @ G.T for G in at_k.gradient_chunks(X, y)], dim=1)
    return scores.to(test_original.device)


def tracin_self_influence(model: nn.Module, loss_fn: LossFn, checkpoints: Sequence[Mapping[str, torch.Tensor]],
                          train, lrs, params=None, *, batch_size: int = 512) -> torch.Tensor:
    """TracIn's self-influence :math:`\\sum_k \\eta_k \\lVert\\nabla L(z_i, \\theta_k)\\rVert^2` of every
    training point: the diagonal of ``tracin(..., train, train, ...)`` without the n x n matrix.

    Args:
        model, loss_fn, checkpoints, lrs, params, batch_size: as for ``tracin``.
        train: (X, y) with n examples, or a dataset.

    Returns:
        (n,) on train X's device.
    """
    with model_state(model):
        objective, pairs = _prepare(model, loss_fn, params, 0.0, batch_size, {"train": train})
        original, (X, y) = pairs["train"]
        scores = 0.0
        for at_k, rate in _checkpoint_objectives(objective, checkpoints, lrs):
            scores = scores + rate * torch.cat([(G * G).sum(1) for G in at_k.gradient_chunks(X, y)])
    return scores.to(original.device)
