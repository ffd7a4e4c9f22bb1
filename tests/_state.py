"""The state test's tools: a model whose modules and parameters are in mixed states, a snapshot of
that state, and the check that a call gave it all back (DESIGN: no public function moves a model,
changes its modes or flags, or leaves gradients in it, unless that is its stated purpose)."""

from __future__ import annotations

import inspect
from types import ModuleType

import torch
from torch import nn


def mix_states(model: nn.Module) -> nn.Module:
    """Put ``model`` in a state no function would choose: train mode at the top, every other
    module's flag flipped (a frozen batch norm among them), every other parameter frozen."""
    model.train()
    for i, module in enumerate(model.modules()):
        if i % 2 == 1:
            module.training = False
    for i, param in enumerate(model.parameters()):
        param.requires_grad_(i % 2 == 0)
        param.grad = None
    return model


def snapshot(model: nn.Module) -> dict:
    """Each module's train flag, each parameter's requires_grad, grad, device and value."""
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "devices": [p.device for p in model.parameters()] + [b.device for b in model.buffers()],
        "values": [t.detach().cpu().clone() for t in (*model.parameters(), *model.buffers())
                   if t.device.type != "meta"],
    }


def assert_state_kept(model: nn.Module, before: dict, *, trains: bool = False) -> None:
    """The model's state equals ``before``. A trainer (``trains``) may change the values and is left
    in eval mode, as its docstring states; its flags, gradients and device still come back."""
    after = snapshot(model)
    assert after["devices"] == before["devices"], "the model was moved"
    if trains:
        assert not any(after["modes"]), "a trainer leaves the model in eval mode"
    else:
        assert after["modes"] == before["modes"], "train/eval flags changed"
        assert all(torch.equal(a, b) for a, b in zip(after["values"], before["values"])), "weights changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["grads"] == before["grads"] and all(after["grads"]), "gradients left in the model"


def takes_a_model(obj) -> bool:
    """Whether a public function, or a class's constructor, has a parameter named ``model``."""
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return "model" in parameters


def public_api_taking_a_model(package: ModuleType) -> set[str]:
    """The names in ``package.__all__`` that take a model: what the state test must cover."""
    return {name for name in package.__all__ if takes_a_model(getattr(package, name))}
