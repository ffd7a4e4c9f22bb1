"""Training loops: ``fit`` with a progress bar, a history, early stopping and a seed; ``evaluate``
and ``predict`` in batches."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from xnn_lab._checks import check_choice, check_float, check_int
from xnn_lab._runtime import device as default_device

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class History:
    """Per-epoch curves of a ``fit`` run; also readable as ``history["train_loss"]``."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __getitem__(self, key: str) -> list[float]:
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in ("train_loss", "train_acc") or (key in ("val_loss", "val_acc") and bool(self.val_loss))


def tensor_pair(name: str, data, *, collate: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(X, y)`` of a tensor pair or of a dataset that holds its tensors (``.tensors``).

    Any other map-style Dataset is collated once into tensors when ``collate`` is true; otherwise
    None is returned for it, and callers iterate it with a DataLoader.

    Raises:
        TypeError, ValueError: naming ``name``, for data that is none of these, or X and y of
            different lengths, or no examples.
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
    return X, y


def iterate_batches(name: str, data, batch_size: int, *, device: torch.device, shuffle: bool = False,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (X, y) batches on ``device``: tensor pairs are sliced in place, other datasets go
    through a DataLoader."""
    pair = tensor_pair(name, data)
    if pair is None:
        loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
        for X, y in loader:
            yield X.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    X, y = pair
    order = torch.randperm(len(X), generator=generator) if shuffle else torch.arange(len(X))
    for start in range(0, len(X), batch_size):
        idx = order[start:start + batch_size]
        yield X[idx.to(X.device)].to(device, non_blocking=True), y[idx.to(y.device)].to(device, non_blocking=True)


def _accuracy_count(logits: torch.Tensor, y: torch.Tensor) -> int:
    if logits.ndim != 2 or y.ndim != 1:
        return 0
    return int((logits.argmax(1) == y).sum())


@torch.no_grad()
def evaluate(model: nn.Module, data, *, loss_fn: LossFn | None = None, batch_size: int = 512,
             device: torch.device | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``data`` (an (X, y) pair or a Dataset), in eval mode.

    Args:
        loss_fn: mean loss of (logits, y), as ``fit`` takes it; cross-entropy by default.

    Returns:
        ``{"loss": float, "accuracy": float}``: the loss averaged over examples; accuracy is the
        share of argmax(logits) == y.
    """
    check_int("batch_size", batch_size, minimum=1)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for X, y in iterate_batches("data", data, batch_size, device=device):
            logits = model(X)
            total_loss += float(loss_fn(logits, y)) * len(y)
            correct += _accuracy_count(logits, y)
            count += len(y)
    finally:
        model.train(was_training)
    return {"loss": total_loss / count, "accuracy": correct / count}


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Model outputs for X in eval mode, batched, on X's device."""
    check_int("batch_size", batch_size, minimum=1)
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
    was_training = model.training
    model.eval()
    try:
        model_device = next(model.parameters()).device
        out = [model(X[i:i + batch_size].to(model_device)) for i in range(0, len(X), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).to(X.device)


def fit(model: nn.Module, train, val=None, *, epochs: int = 20, lr: float = 1e-3, batch_size: int = 128,
        weight_decay: float = 0.0, optimizer: str = "adam", loss_fn: LossFn | None = None,
        patience: int | None = None, seed: int = 0, device: torch.device | None = None,
        progress: bool = True) -> History:
    """Train ``model`` by minibatch gradient descent; keep the best weights when validating.

    Args:
        model: the network; moved to ``device`` and left there, in eval mode.
        train: (X, y) tensors or a Dataset of (x, y).
        val: optional validation data in the same form; with it, the weights of the epoch with the
            lowest validation loss are restored at the end.
        epochs: the most epochs to run.
        lr, weight_decay: optimiser settings.
        optimizer: "adam", "adamw" or "sgd" (momentum 0.9).
        loss_fn: mean loss of (logits, y); cross-entropy by default.
        patience: stop when the validation loss has not improved for this many epochs (needs val).
        seed: seeds the shuffling order (and torch's global generator, for dropout).
        device: where to train; ``xnn_lab.device()`` by default.
        progress: show a tqdm bar over epochs.

    Returns:
        the ``History`` of train (and val) loss and accuracy per epoch.
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

    device = device or default_device()
    model.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(params, lr=lr,
                                                                               weight_decay=weight_decay)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    history = History()
    best_loss, best_state, waited = float("inf"), None, 0

    bar = tqdm(range(epochs), desc="fit", disable=not progress, leave=True)
    for epoch in bar:
        model.train()
        total, correct, count = 0.0, 0, 0
        for X, y in iterate_batches("train", train, batch_size, device=device, shuffle=True, generator=generator):
            logits = model(X)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            correct += _accuracy_count(logits.detach(), y)
            count += len(y)
        history.train_loss.append(total / count)
        history.train_acc.append(correct / count)
        postfix = {"loss": f"{history.train_loss[-1]:.3f}", "acc": f"{history.train_acc[-1]:.3f}"}
        if val is not None:
            scores = evaluate(model, val, batch_size=max(batch_size, 256), device=device, loss_fn=loss_fn)
            history.val_loss.append(scores["loss"])
            history.val_acc.append(scores["accuracy"])
            postfix.update(val_loss=f"{scores['loss']:.3f}", val_acc=f"{scores['accuracy']:.3f}")
            if scores["loss"] < best_loss:
                best_loss, waited, history.best_epoch = scores["loss"], 0, epoch
                best_state = copy.deepcopy(model.state_dict())
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
