"""The one training loop (``fit``) every method trains with, and ``evaluate`` and ``predict`` in batches.

A method's training is an *objective* handed to ``fit``: ``objective(X, y)`` returns the batch's
loss, the logits it came from (for accuracy) and any named terms worth a curve. The loop owns
the rest, the same for every method: the seed, the optimiser, train/eval modes, the progress
bar, the history, validation, the best epoch and early stopping.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from xnn_lab._core.checks import (check_choice, check_device, check_finite, check_float, check_int, check_labels,
                                  check_parameters_finite, check_tensor, input_errors)
from xnn_lab._core.runtime import device as default_device
from xnn_lab._core.state import model_device, model_state

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Step(NamedTuple):
    """What an objective returns for one batch.

    Attributes:
        loss: the scalar to minimise.
        logits: (B, C) class scores for the accuracy, or ``None`` where accuracy means nothing.
        terms: named scalar parts of the loss (or anything else per batch) to record per epoch.
    """

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    terms: Mapping[str, torch.Tensor | None] = {}


Objective = Callable[[torch.Tensor, torch.Tensor], Step]


@dataclass
class History:
    """Per-epoch curves of a ``fit`` run; also readable as ``history["train_loss"]``.

    ``terms`` and ``val_terms`` hold the means of an objective's named terms (``history["cluster"]``
    reads ``terms["cluster"]``); a term an objective leaves out (``None``) in an epoch is NaN there.
    ``train_acc`` and ``val_acc`` are NaN where the objective gives no logits to score.
    """

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)
    val_terms: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False

    _CURVES = ("train_loss", "train_acc", "val_loss", "val_acc")

    def __getitem__(self, key: str) -> list[float]:
        if key in self._CURVES:
            return getattr(self, key)
        if key in self.terms:
            return self.terms[key]
        raise KeyError(f"history has no curve {key!r}; it has {', '.join(self.keys())}")

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        """The names of the curves that hold values."""
        return [key for key in self._CURVES if getattr(self, key)] + list(self.terms)


def tensor_pair(name: str, data, *, collate: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(X, y)`` of a tensor pair or of a dataset that holds its tensors (``.tensors``).

    Any other map-style Dataset is collated once into tensors when ``collate`` is true; otherwise
    None is returned for it, and callers iterate it with a DataLoader.

    Raises:
        TypeError, ValueError: naming ``name``, for data that is none of these, X and y of
            different lengths, no examples, or NaN or Inf in X or y.
    """
    pair = data if isinstance(data, (tuple, list)) else getattr(data, "tensors", None)
    if pair is None:
        if not isinstance(data, Dataset):
            raise TypeError(f"{name} must be an (X, y) pair of tensors or a torch Dataset, got {type(data).__name__}")
        if not collate:
            return None
        if len(data) == 0:
            raise ValueError(f"{name} is empty")
        pair = default_collate([data[i] for i in range(len(data))])
    if len(pair) != 2 or not all(isinstance(t, torch.Tensor) for t in pair):
        raise TypeError(f"{name} must be an (X, y) pair of tensors, got {type(data).__name__} of length {len(pair)}")
    X, y = pair
    if X.ndim == 0 or y.ndim == 0 or len(X) != len(y):
        raise ValueError(f"{name}: X and y must have the same length, got X of shape {tuple(X.shape)} "
                         f"and y of shape {tuple(y.shape)}")
    if len(X) == 0:
        raise ValueError(f"{name} is empty")
    check_finite(f"{name}'s X", X)
    check_finite(f"{name}'s y", y)
    return X, y


def iterate_batches(name: str, data, batch_size: int, *, device: torch.device, shuffle: bool = False,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (X, y) batches on ``device``: tensor pairs are sliced in place, other datasets go
    through a DataLoader."""
    pair = tensor_pair(name, data)
    if pair is None:
        loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
        for X, y in loader:
            check_finite(f"{name}'s X", X)
            check_finite(f"{name}'s y", y)
            yield X.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    X, y = pair
    order = torch.randperm(len(X), generator=generator) if shuffle else torch.arange(len(X))
    for start in range(0, len(X), batch_size):
        idx = order[start:start + batch_size]
        yield X[idx.to(X.device)].to(device, non_blocking=True), y[idx.to(y.device)].to(device, non_blocking=True)


def _scorable(logits: torch.Tensor | None, y: torch.Tensor) -> bool:
    """Whether the batch has an accuracy: (B, C) logits and (B,) integer labels."""
    return (logits is not None and logits.ndim == 2 and y.ndim == 1
            and not y.is_floating_point() and y.dtype != torch.bool)


def _loss_objective(model: nn.Module, loss_fn: LossFn | None) -> Objective:
    """The objective of a plain classifier: ``loss_fn(model(X), y)``, cross-entropy by default."""

    def objective(X: torch.Tensor, y: torch.Tensor) -> Step:
        logits = model(X)
        if default and _scorable(logits, y):
            check_labels("y", y, logits.shape[1])
        return Step(loss_fn(logits, y), logits)

    default = loss_fn is None
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    return objective


def _run(objective: Objective, name: str, X: torch.Tensor, y: torch.Tensor) -> Step:
    """``objective(X, y)`` on a batch of ``name``; a batch that does not fit the model (a wrong
    width, a label out of range) raises a ``ValueError`` naming ``name``."""
    try:
        return objective(X, y)
    except (ValueError, IndexError, RuntimeError) as error:
        if isinstance(error, (torch.OutOfMemoryError, NotImplementedError)):
            raise
        raise ValueError(f"{name} does not fit the model (a batch of X of shape {tuple(X.shape)} and y of "
                         f"shape {tuple(y.shape)}): {error}") from error


def _pick_objective(model: nn.Module, loss_fn: LossFn | None, objective: Objective | None) -> Objective:
    if objective is None:
        return _loss_objective(model, loss_fn)
    if loss_fn is not None:
        raise ValueError("pass either loss_fn or objective, not both")
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(X, y) -> Step, got {type(objective).__name__}")
    return objective


class _EpochMeans:
    """Running sums of one epoch's loss, correct predictions and terms, kept on the device (no
    host synchronisation per step), weighted by batch size."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.named: dict[str, None] = {}  # every term named so far, in order, None-valued ones included
        self.count = 0
        self.scored = 0

    def add(self, step: Step, y: torch.Tensor) -> None:
        if not isinstance(step, Step):
            raise TypeError(f"objective must return an xnn_lab Step(loss, logits, terms), got {type(step).__name__}")
        self.named.update(dict.fromkeys(step.terms))
        values = {"loss": step.loss, **{k: v for k, v in step.terms.items() if v is not None}}
        if _scorable(step.logits, y):
            values["correct"] = (step.logits.detach().argmax(1) == y).sum()
            self.scored += len(y)
        for key, value in values.items():
            # In float64, as Python floats: the same sums as adding float(loss) * len(y) batch by batch.
            value = value.detach().double() * (1 if key == "correct" else len(y))
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += len(y)

    def means(self) -> dict[str, float]:
        means = {"loss": float(self.sums["loss"]) / self.count}
        means.update({key: float(self.sums[key]) / self.count if key in self.sums else math.nan
                      for key in self.named})
        means["accuracy"] = float(self.sums["correct"]) / self.scored if self.scored else math.nan
        return means


def evaluate(model: nn.Module, data, *, loss_fn: LossFn | None = None, objective: Objective | None = None,
             batch_size: int = 512, device: torch.device | None = None) -> dict[str, float]:
    """Mean loss, accuracy and terms of ``model`` on ``data`` (an (X, y) pair or a Dataset), in eval mode.

    Each module's own train/eval flag is restored afterwards; the model is not moved.

    Args:
        loss_fn: mean loss of (logits, y), as ``fit`` takes it; cross-entropy by default.
        objective: instead of ``loss_fn``, ``objective(X, y) -> Step``, as ``fit`` takes it.
        device: where the batches go; the model's device by default.

    Returns:
        ``{"loss": float, "accuracy": float, **terms}``: each averaged over examples; accuracy is
        the share of argmax(logits) == y, NaN where the labels are not class indices.

    Raises:
        ValueError: for NaN or Inf in the data or the model's weights, or a loss that is not finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    device = check_device("device", device)
    check_parameters_finite("model", model)
    tensor_pair("data", data)
    return _evaluate(model, data, _pick_objective(model, loss_fn, objective), batch_size,
                     device or model_device(model), "data")


def _evaluate(model: nn.Module, data, objective: Objective, batch_size: int, device: torch.device,
              name: str) -> dict[str, float]:
    means = _EpochMeans()
    with model_state(model), torch.no_grad():
        for X, y in iterate_batches(name, data, batch_size, device=device):
            means.add(_run(objective, name, X, y), y)
    scores = means.means()
    if not math.isfinite(scores["loss"]):
        raise ValueError(f"the loss of model on {name} is {scores['loss']}: its outputs overflow")
    return scores


def predict(model: nn.Module, X: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Model outputs for X (N, ...) in eval mode, batched, on X's device; the model's modes are restored.

    X always has a batch dimension: one example is ``X[None]``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    check_tensor("X", X)
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"X must be a non-empty batch (N, ...) of examples (one example is X[None]), "
                         f"got shape {tuple(X.shape)}")
    check_finite("X", X)
    device = model_device(model, X.device)
    with model_state(model), torch.no_grad(), input_errors("X", X):
        out = [model(X[i:i + batch_size].to(device)) for i in range(0, len(X), batch_size)]
    return torch.cat(out).to(X.device)


def _optimizer(name: str, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(parameters, lr=lr, weight_decay=weight_decay)


def _rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generators a seeded run forks (restores afterwards)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def fit(model: nn.Module, train, val=None, *, loss_fn: LossFn | None = None, objective: Objective | None = None,
        parameters: Iterable | None = None, epochs: int = 20, lr: float = 1e-3, batch_size: int = 128,
        weight_decay: float = 0.0, optimizer: str = "adam", patience: int | None = None,
        restore_best: bool = True, train_mode: bool = True, seed: int = 0, device: torch.device | None = None,
        progress: bool = False, desc: str = "fit") -> History:
    """Train ``model`` by minibatch gradient descent: the one training loop of the package.

    Each epoch shuffles ``train`` (seeded), runs the objective on every batch with the model in
    train mode, steps the optimiser, and records the epoch's means; with ``val`` it then measures
    the same objective in eval mode and keeps the weights of the epoch with the lowest validation
    loss. Randomness inside the run (the shuffles, dropout) comes from ``seed`` alone; PyTorch's
    global generators are forked, so the caller's random stream is left as it was.

    Args:
        model: the network; moved to ``device`` and left there, in eval mode. Every parameter's
            ``requires_grad`` flag is as it was afterwards.
        train: (X, y) tensors or a Dataset of (x, y).
        val: optional validation data in the same form.
        loss_fn: mean loss of (logits, y) of ``model(X)``; cross-entropy by default.
        objective: instead of ``loss_fn``, ``objective(X, y) -> Step(loss, logits, terms)``: how a
            method trains (ProtoPNet's costs, SENN's robustness loss, a joint bottleneck).
        parameters: the parameters (or optimiser parameter groups) to train; by default every
            parameter of ``model`` that requires grad. Only these require grad during the run.
        epochs: the most epochs to run.
        lr, weight_decay: optimiser settings (a group's own ``lr`` wins).
        optimizer: "adam", "adamw" or "sgd" (momentum 0.9).
        patience: stop when the validation loss has not improved for this many epochs (needs val).
        restore_best: with ``val``, load the weights of the best epoch at the end.
        train_mode: run the training epochs in train mode; ``False`` keeps the model in eval mode
            (a frozen backbone whose batch-norm statistics must not move).
        seed: seeds the shuffling order and every random draw of the run.
        device: where to train; ``xnn_lab.device()`` by default.
        progress: show a tqdm bar over epochs.
        desc: the progress bar's label.

    Returns:
        the ``History`` of train (and val) loss, accuracy and terms per epoch.

    Raises:
        ValueError: for NaN or Inf in the data or the model's weights, a batch the model cannot
            take or a label outside its classes (naming ``train`` or ``val``), or a run that
            diverges (its mean training loss becomes NaN or Inf).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    check_float("lr", lr, minimum=0.0, open_min=True)
    check_float("weight_decay", weight_decay, minimum=0.0)
    check_choice("optimizer", optimizer, ("adam", "adamw", "sgd"))
    if patience is not None:
        check_int("patience", patience, minimum=1)
        if val is None:
            raise ValueError("patience needs validation data: pass val=(X, y)")
    tensor_pair("train", train)
    if val is not None:
        tensor_pair("val", val)
    objective = _pick_objective(model, loss_fn, objective)
    device = check_device("device", device) or default_device()
    check_parameters_finite("model", model)
    model.to(device)
    groups = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    if not groups:
        raise ValueError("parameters: nothing to train (no parameter of model requires grad)")
    trained = {id(p) for group in groups for p in (group["params"] if isinstance(group, dict) else [group])}
    history = History()
    best_loss, best_state, waited = math.inf, None, 0
    # Gradients on even when the caller wraps the call in no_grad() (a trainer inside an evaluation block).
    with (model_state(model, mode=None, requires_grad=False), torch.random.fork_rng(devices=_rng_devices(device)),
          torch.inference_mode(False), torch.enable_grad()):
        for param in model.parameters():
            param.requires_grad_(id(param) in trained)
        opt = _optimizer(optimizer, groups, lr, weight_decay)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=True)
        for epoch in bar:
            model.train(train_mode)
            means = _EpochMeans()
            for X, y in iterate_batches("train", train, batch_size, device=device, shuffle=True,
                                        generator=generator):
                step = _run(objective, "train", X, y)
                opt.zero_grad(set_to_none=True)
                step.loss.backward()
                opt.step()
                means.add(step, y)
            epoch_means = means.means()
            if not math.isfinite(epoch_means["loss"]):
                raise ValueError(f"training diverged: the mean loss of epoch {epoch} is {epoch_means['loss']}; "
                                 f"lower lr (now {lr}) or check the objective")
            _record(history.train_loss, history.train_acc, history.terms, epoch_means, epoch)
            postfix = {"loss": f"{history.train_loss[-1]:.3f}", "acc": f"{history.train_acc[-1]:.3f}"}
            if val is not None:
                scores = _evaluate(model, val, objective, max(batch_size, 256), device, "val")
                _record(history.val_loss, history.val_acc, history.val_terms, scores, epoch)
                postfix.update(val_loss=f"{scores['loss']:.3f}", val_acc=f"{scores['accuracy']:.3f}")
                if scores["loss"] < best_loss:
                    best_loss, waited, history.best_epoch = scores["loss"], 0, epoch
                    best_state = copy.deepcopy(model.state_dict()) if restore_best else None
                else:
                    waited += 1
                    if patience is not None and waited >= patience:
                        history.stopped_early = True
                        bar.set_postfix(postfix)
                        break
            bar.set_postfix(postfix)
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def _record(losses: list[float], accuracies: list[float], terms: dict[str, list[float]],
            means: dict[str, float], epoch: int) -> None:
    """Append one epoch's means; a term first seen late is NaN in the epochs before it."""
    losses.append(means["loss"])
    accuracies.append(means["accuracy"])
    means = {key: value for key, value in means.items() if key not in ("loss", "accuracy")}
    for key in terms.keys() - means.keys():
        terms[key].append(math.nan)
    for key, value in means.items():
        terms.setdefault(key, [math.nan] * epoch).append(value)
