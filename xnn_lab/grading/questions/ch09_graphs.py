"""Graded questions of ``solutions/09_graphs.ipynb``: one message-passing step, k-hop neighbourhoods,
edge-mask AUROC and precision at k, by hand.

References: PyTorch Geometric's ``GCNConv`` with the trial's weights (the GCN layer) and its
``k_hop_subgraph`` (the neighbourhood); ``torch_geometric.explain.metric.groundtruth_metrics``
(torchmetrics' binary AUROC) for the AUROC; :func:`xnn_lab.graphs.precision_at_k` for precision
at k. Trials are random graphs and masks of random sizes, float64, with ties in the scores.
"""

from __future__ import annotations

import torch

from xnn_lab.grading.question import Question
from xnn_lab.grading.questions._random import generator, randint


def _random_graph(g: torch.Generator, n: int, edges: int) -> torch.Tensor:
    """A random undirected graph without self-loops or repeated edges, both directions stored."""
    pairs = torch.randint(0, n, (2, edges), generator=g)
    pairs = pairs[:, pairs[0] != pairs[1]]
    both = torch.cat([pairs, pairs.flip(0)], 1)
    return torch.unique(both, dim=1)


def gcn_layer_reference(x, edge_index, weight, bias):
    """``GCNConv(F, F')`` (self-loops, symmetric normalisation) with ``lin.weight = weight``, ``bias``."""
    from torch_geometric.nn import GCNConv

    conv = GCNConv(weight.shape[1], weight.shape[0]).to(x.dtype)
    with torch.no_grad():
        conv.lin.weight.copy_(weight)
        conv.bias.copy_(bias)
        return conv(x, edge_index)


def gcn_layer_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for n, edges, features, out in [(5, 6, 3, 2), (9, 14, 4, 5), (12, 10, 2, 3)]:
        n, edges = n + randint(g, 0, 4), edges + randint(g, 0, 6)
        trials.append((torch.randn(n, features, generator=g, dtype=torch.float64), _random_graph(g, n, edges),
                       torch.randn(out, features, generator=g, dtype=torch.float64),
                       torch.randn(out, generator=g, dtype=torch.float64)))
    return trials


def k_hop_nodes_reference(edge_index, node, num_hops, num_nodes):
    """The nodes ``k_hop_subgraph`` returns, as a bool mask."""
    from torch_geometric.utils import k_hop_subgraph

    subset, _, _, _ = k_hop_subgraph(node, num_hops, edge_index, num_nodes=num_nodes)
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[subset] = True
    return mask


def k_hop_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for n, edges, hops in [(8, 8, 1), (15, 14, 2), (25, 24, 3)]:
        n = n + randint(g, 0, 5)
        trials.append((_random_graph(g, n, edges + randint(g, 0, 8)), randint(g, 0, n), hops, n))
    return trials


def edge_auroc_reference(scores, labels):
    """PyG's ``groundtruth_metrics(scores, labels, "auroc")`` (torchmetrics), as a float."""
    from torch_geometric.explain.metric import groundtruth_metrics

    return float(groundtruth_metrics(scores.float(), labels.float(), "auroc"))


def _masks(g: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Scores on a coarse grid, so that ties occur; at least one true and one false element.
    scores = torch.randint(0, 6, (size,), generator=g).double() / 5
    labels = torch.rand(size, generator=g) < 0.3
    labels[0], labels[1] = True, False
    return scores, labels


def edge_auroc_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    return [_masks(g, size + randint(g, 0, 10)) for size in (8, 20, 40)]


def precision_at_k_reference(scores, labels, k):
    """:func:`xnn_lab.graphs.precision_at_k` (ties broken by position), as a float."""
    from xnn_lab.graphs import precision_at_k

    return float(precision_at_k(scores, labels, k))


def precision_at_k_inputs(seed: int) -> list[tuple]:
    g = generator(seed)
    trials = []
    for size, k in [(10, 3), (25, 6), (40, 12)]:
        scores, labels = _masks(g, size + randint(g, 0, 10))
        scores = scores + torch.rand(len(scores), generator=g, dtype=torch.float64) / 100  # no ties
        trials.append((scores, labels, k + randint(g, 0, 3)))
    return trials


QUESTIONS = (
    Question("gcn_layer", 2, "gcn_layer", gcn_layer_reference, gcn_layer_inputs,
             forbidden=("xnn_lab.graphs.gcn_layer",)),
    Question("k_hop_nodes", 1, "k_hop_nodes", k_hop_nodes_reference, k_hop_inputs,
             forbidden=("xnn_lab.graphs.computation_subgraphs",)),
    Question("edge_auroc", 2, "edge_auroc", edge_auroc_reference, edge_auroc_inputs,
             forbidden=("xnn_lab.graphs.auroc",)),
    Question("precision_at_k", 1, "precision_at_k", precision_at_k_reference, precision_at_k_inputs,
             forbidden=("xnn_lab.graphs.precision_at_k",)),
)
