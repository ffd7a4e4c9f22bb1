"""Training and scoring the graph networks: one loop for node and for graph classification.

A node task is one ``Data`` with ``train_mask`` (and ``test_mask``); a graph task is a list of
``Data`` (or a ``Batch``), one label each. The model stays on its device; the data go there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data

from xnn_lab._core.checks import check_finite, check_float, check_int, check_labels
from xnn_lab._core.state import model_device, model_state
from xnn_lab.graphs.data import batch_of


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _is_node_task(data) -> bool:
    return isinstance(data, Data) and not isinstance(data, Batch) and "train_mask" in data


def fit_gnn(model: nn.Module, data, *, epochs: int = 200, lr: float = 0.01, weight_decay: float = 0.0,
            batch_size: int = 64, seed: int = 0) -> list[float]:
    """Train ``model`` with Adam on cross-entropy; return the loss of every epoch.

    Node task (``data`` a ``Data`` with ``train_mask``): full-batch, the loss over the training
    nodes. Graph task (``data`` a list of ``Data``): minibatches of ``batch_size`` graphs,
    shuffled per epoch. Randomness comes from ``seed`` alone (the global generators are forked).
    Trains every parameter that requires grad; the model is left in eval mode, on its device,
    with its ``requires_grad`` flags and no gradients.

    Args:
        model: ``model(x, edge_index, batch) -> logits``.
        data: the training data, as above.
        epochs: passes over the data.
        lr, weight_decay: Adam's settings.
        batch_size: graphs per step (graph task).
        seed: a non-negative integer.
    """
    _check_model(model)
    epochs = check_int("epochs", epochs, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, open_min=True)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    device = model_device(model)
    node_task = _is_node_task(data)
    if node_task:
        data = data.to(device)
    else:
        graphs = list(data.to_data_list()) if isinstance(data, Batch) else list(data)
        if not graphs or not all(isinstance(g, Data) for g in graphs):
            raise TypeError("data must be a Data with train_mask (node task) or a non-empty list "
                            f"of Data (graph task), got {type(data).__name__}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("model: nothing to train (no parameter requires grad)")
    # Features and labels checked once, here: a NaN or a class the model lacks would otherwise
    # surface as a NaN loss or an index error deep inside cross-entropy.
    whole = data if node_task else batch_of(graphs)
    classes = predict_gnn(model, whole).shape[1]
    check_labels("data.y", whole.y, classes)
    losses = []
    with torch.random.fork_rng(devices=[]), model_state(model, mode="train"):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
        with torch.enable_grad():
            for _ in range(epochs):
                if node_task:
                    optimizer.zero_grad()
                    logits = model(data.x, data.edge_index)
                    loss = F.cross_entropy(logits[data.train_mask], data.y[data.train_mask])
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                    continue
                order = torch.randperm(len(graphs), generator=g).tolist()
                total = 0.0
                for start in range(0, len(order), batch_size):
                    batch = Batch.from_data_list([graphs[i] for i in order[start:start + batch_size]])
                    batch = batch.to(device)
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(batch.x, batch.edge_index, batch.batch), batch.y)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * batch.num_graphs
                losses.append(total / len(graphs))
    model.eval()
    return losses


def predict_gnn(model: nn.Module, data) -> torch.Tensor:
    """Logits of a node task's every node (N, C), or of every graph of a list (graphs, C)."""
    _check_model(model)
    device = model_device(model)
    batch = data if isinstance(data, Data) and not isinstance(data, Batch) else batch_of(data)
    batch = batch.to(device)
    check_finite("data.x", batch.x)
    with model_state(model), torch.no_grad():
        if _is_node_task(data) or not isinstance(batch, Batch):
            return model(batch.x, batch.edge_index)
        return model(batch.x, batch.edge_index, batch.batch)


def accuracy(model: nn.Module, data, *, split: str = "test") -> float:
    """Share of correct predictions: on ``data``'s ``{split}_mask`` nodes (node task), or over
    every graph of a list (graph task; ``split`` is ignored)."""
    logits = predict_gnn(model, data)
    if _is_node_task(data):
        key = f"{split}_mask"
        if key not in data:
            raise ValueError(f"split must name a mask of data ('train' or 'test'), got {split!r}")
        mask = data[key].to(logits.device)
        labels = check_labels("data.y", data.y, logits.shape[1])
        return (logits[mask].argmax(1) == labels.to(logits.device)[mask]).float().mean().item()
    labels = torch.cat([g.y for g in data]) if not isinstance(data, Batch) else data.y
    check_labels("data.y", labels, logits.shape[1])
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()
